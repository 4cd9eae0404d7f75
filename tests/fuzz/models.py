"""Mutated models: one function per mutation class, each writing ``m.onnx`` (and any side
files) into the case folder and returning a short description of what it did.

Byte-level classes (bit flips, truncation, splices) work on the serialized seed; structural
classes edit the protobuf the way broken exporters and hand edits do; ``proto_field`` sets
random protobuf fields to random values. Runtime-only and external-data classes are in
:mod:`fuzz.tricks`; the class table (weights, seeds) is :data:`fuzz.cases.MODEL_CLASSES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from fuzz.protomut import mutate_fields


@dataclass
class Ctx:
    """What a mutation needs: the case folder, its random generator and the seed."""

    folder: Path
    rng: np.random.Generator
    seed_name: str
    seed: bytes

    @property
    def model_path(self) -> Path:
        return self.folder / "m.onnx"

    def proto(self) -> onnx.ModelProto:
        m = onnx.ModelProto()
        m.ParseFromString(self.seed)
        return m

    def save(self, model: onnx.ModelProto) -> None:
        self.model_path.write_bytes(model.SerializeToString())

    def pick(self, items: list | tuple):  # type: ignore[no-untyped-def]
        return items[int(self.rng.integers(len(items)))]


Mutation = Callable[[Ctx], str]


# ---------------------------------------------------------------------- bytes


def bitflip(c: Ctx) -> str:
    data = bytearray(c.seed)
    k = int(c.rng.integers(1, 17))
    for pos in c.rng.integers(0, len(data) * 8, size=k):
        data[pos // 8] ^= 1 << (pos % 8)
    c.model_path.write_bytes(bytes(data))
    return f"{k} bits flipped"


def truncate(c: Ctx) -> str:
    cut = int(c.rng.integers(1, len(c.seed)))
    c.model_path.write_bytes(c.seed[:cut])
    return f"cut at {cut}/{len(c.seed)}"


def splice(c: Ctx) -> str:
    data = bytearray(c.seed)
    n = int(c.rng.integers(1, 64))
    at = int(c.rng.integers(0, max(1, len(data) - n)))
    if c.rng.random() < 0.5:
        data[at : at + n] = c.rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        what = "random bytes"
    else:
        src = int(c.rng.integers(0, max(1, len(data) - n)))
        data[at:at] = data[src : src + n]
        what = "duplicated chunk"
    c.model_path.write_bytes(bytes(data))
    return f"{what} ({n} bytes at {at})"


# ---------------------------------------------------------------------- structure


def _graph_nodes(m: onnx.ModelProto, c: Ctx):  # type: ignore[no-untyped-def]
    """The main graph's nodes, or a function body's (half the time, when there is one)."""
    if m.functions and c.rng.random() < 0.5:
        return m.functions[0].node
    return m.graph.node


def dangling_input(c: Ctx) -> str:
    m = c.proto()
    nodes = _graph_nodes(m, c)
    node = c.pick([n for n in nodes if n.input])
    i = int(c.rng.integers(len(node.input)))
    node.input[i] = c.pick(["ghost", "", node.input[i] + "_x", "x" * 300])
    c.save(m)
    return f"{node.name or node.op_type} input {i} -> {node.input[i][:20]!r}"


def cycle(c: Ctx) -> str:
    m = c.proto()
    nodes = _graph_nodes(m, c)
    i = int(c.rng.integers(len(nodes)))
    j = int(c.rng.integers(i, len(nodes)))
    if not nodes[i].input or not nodes[j].output:
        nodes[i].input.append(nodes[i].output[0])
        c.save(m)
        return "self loop"
    nodes[i].input[int(c.rng.integers(len(nodes[i].input)))] = nodes[j].output[0]
    c.save(m)
    return f"node {i} reads node {j}'s output"


def out_of_order(c: Ctx) -> str:
    m = c.proto()
    nodes = _graph_nodes(m, c)
    order = list(c.rng.permutation(len(nodes)))
    copy = [nodes[int(i)] for i in order]
    shuffled = [onnx.NodeProto() for _ in copy]
    for dst, src in zip(shuffled, copy, strict=True):
        dst.CopyFrom(src)
    del nodes[:]
    nodes.extend(shuffled)
    c.save(m)
    return "nodes shuffled"


def orphan_output(c: Ctx) -> str:
    m = c.proto()
    choice = c.pick(["rename", "add", "function", "duplicate"])
    if choice == "rename":
        m.graph.output[0].name = "produced_by_nobody"
    elif choice == "add":
        m.graph.output.add().CopyFrom(oh.make_tensor_value_info("nowhere", TensorProto.FLOAT, [1]))
    elif choice == "function" and m.functions:
        m.functions[0].output[0] = "nowhere"
    else:
        m.graph.output.add().CopyFrom(m.graph.output[0])
    c.save(m)
    return choice


def no_outputs(c: Ctx) -> str:
    m = c.proto()
    del m.graph.output[:]
    if c.rng.random() < 0.3:
        del m.graph.node[:]
    c.save(m)
    return "graph outputs removed"


def _initializer(m: onnx.ModelProto, c: Ctx) -> TensorProto:
    return c.pick(list(m.graph.initializer))  # type: ignore[no-any-return]


def init_inconsistent(c: Ctx) -> str:
    m = c.proto()
    t = _initializer(m, c)
    choice = c.pick(
        [
            "grow_dim",
            "drop_dim",
            "add_dim",
            "neg_dim",
            "zero_dim",
            "cut_raw",
            "extend_raw",
            "float_data",
            "huge_dim",
            "to_float_data",
        ]
    )
    if choice == "grow_dim" and t.dims:
        t.dims[int(c.rng.integers(len(t.dims)))] *= 2
    elif choice == "drop_dim" and t.dims:
        del t.dims[-1]
    elif choice == "add_dim":
        t.dims.append(int(c.rng.integers(2, 5)))
    elif choice == "neg_dim" and t.dims:
        t.dims[0] = -int(c.rng.integers(1, 4))
    elif choice == "zero_dim" and t.dims:
        t.dims[0] = 0
    elif choice == "huge_dim":
        t.dims[:] = [2**31, 2**31] if c.rng.random() < 0.5 else [2**62]
    elif choice == "cut_raw" and t.raw_data:
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    elif choice == "extend_raw":
        t.raw_data = t.raw_data + b"\x00" * int(c.rng.integers(1, 9))
    elif choice in ("float_data", "to_float_data"):
        t.ClearField("raw_data")
        t.float_data.extend([1.0] * int(c.rng.integers(0, 7)))
    c.save(m)
    return f"{t.name}: {choice}"


def dtype_unknown(c: Ctx) -> str:
    m = c.proto()
    value = int(c.pick([0, 0, 17, 24, 25, 26, 99, 2**20, 23, 16]))
    where = c.pick(["initializer", "input", "output", "cast"])
    if where == "initializer":
        _initializer(m, c).data_type = value
    elif where == "input":
        m.graph.input[0].type.tensor_type.elem_type = value
    elif where == "output":
        m.graph.output[0].type.tensor_type.elem_type = value
    else:
        src = m.graph.node[0].output[0]
        m.graph.node.add().CopyFrom(oh.make_node("Cast", [src], ["casted"], to=1, name="cast"))
        m.graph.node[-1].attribute[0].i = value
        m.graph.output.add().CopyFrom(oh.make_tensor_value_info("casted", TensorProto.FLOAT, None))
    c.save(m)
    return f"{where} data_type {value}"


_WRONG_ATTRS = [
    "strings",
    "float",
    "undefined",
    "bad_utf8",
    "unknown",
    "drop",
    "empty_ints",
    "neg_ints",
    "huge_ints",
    "graph",
    "tensor",
    "dup",
]


def attr_wrong_type(c: Ctx) -> str:
    m = c.proto()
    nodes = [n for n in _graph_nodes(m, c) if n.attribute] or list(m.graph.node)
    node = c.pick(nodes)
    choice = c.pick(_WRONG_ATTRS)
    attr = node.attribute[0] if node.attribute else node.attribute.add()
    if not attr.name:
        attr.name, attr.type, attr.i = "axis", AttributeProto.INT, 1
    if choice == "strings":
        ints = list(attr.ints) or [3]
        attr.ClearField("ints")
        attr.type = AttributeProto.STRINGS
        attr.strings.extend(str(i).encode() for i in ints)
    elif choice == "float":
        attr.type, attr.f = AttributeProto.FLOAT, 2.5
    elif choice == "undefined":
        attr.type = AttributeProto.UNDEFINED
    elif choice == "bad_utf8":
        attr.type, attr.s = AttributeProto.STRING, b"\xff\xfe\x80bad"
    elif choice == "unknown":
        node.attribute.add().CopyFrom(oh.make_attribute("no_such_attribute", 3))
    elif choice == "drop":
        del node.attribute[:]
    elif choice == "empty_ints":
        attr.ClearField("ints")
        attr.type = AttributeProto.INTS
    elif choice in ("neg_ints", "huge_ints"):
        value = -int(c.rng.integers(1, 5)) if choice == "neg_ints" else 2**40
        attr.ClearField("i")
        attr.type = AttributeProto.INTS
        attr.ints[:] = [value] * max(1, len(attr.ints))
    elif choice == "graph":
        attr.type = AttributeProto.GRAPH
        attr.g.CopyFrom(oh.make_graph([], "empty", [], []))
    elif choice == "tensor":
        attr.type = AttributeProto.TENSOR
        attr.t.CopyFrom(nh.from_array(np.zeros(3, np.float32)))
    else:
        node.attribute.add().CopyFrom(attr)
    c.save(m)
    return f"{node.name or node.op_type}.{attr.name}: {choice}"


def recursive_function(c: Ctx) -> str:
    m = c.proto()
    if not m.functions:
        m.functions.add().CopyFrom(
            oh.make_function(
                "local",
                "Act",
                ["a"],
                ["b"],
                [oh.make_node("Relu", ["a"], ["b"])],
                [oh.make_opsetid("", 17)],
            )
        )
        m.opset_import.add().CopyFrom(oh.make_opsetid("local", 1))
    fn = m.functions[0]
    choice = c.pick(["self", "mutual", "missing", "twice", "wrong_arity"])
    if choice == "self":
        fn.node.add().CopyFrom(oh.make_node(fn.name, [fn.output[0]], ["again"], domain=fn.domain))
        fn.node[-1].CopyFrom(oh.make_node(fn.name, [fn.input[0]], ["again"], domain=fn.domain))
    elif choice == "mutual":
        other = m.functions.add()
        other.CopyFrom(fn)
        other.name = fn.name + "2"
        other.node.add().CopyFrom(oh.make_node(fn.name, [fn.input[0]], ["z"], domain=fn.domain))
        fn.node.add().CopyFrom(oh.make_node(other.name, [fn.input[0]], ["w"], domain=fn.domain))
    elif choice == "missing":
        m.graph.node[0].op_type, m.graph.node[0].domain = "Nope", fn.domain
    elif choice == "twice":
        m.functions.add().CopyFrom(fn)
    else:
        fn.input.append("extra_input")
    c.save(m)
    return choice


def proto_field(c: Ctx) -> str:
    m = c.proto()
    done = mutate_fields(m, c.rng, int(c.rng.integers(1, 4)))
    c.save(m)
    return "; ".join(done)
