"""Mutated models: one function per mutation class, each writing ``m.onnx`` (and any side
files) into the case folder and returning a short description of what it did.

Byte-level classes (bit flips, truncation, splices) work on the serialized seed; structural
classes edit the protobuf the way broken exporters and hand edits do; external-data classes
move weights out of the file and then break the reference or the file; runtime classes build
graphs that only ONNX Runtime can refuse (group 0, huge Expand / ConstantOfShape...);
``proto_field`` sets random protobuf fields to random values.
"""

from __future__ import annotations

import os
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
    for dst, src in zip(shuffled, copy):
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
    choice = c.pick(["grow_dim", "drop_dim", "add_dim", "neg_dim", "zero_dim", "cut_raw",
                     "extend_raw", "float_data", "huge_dim", "to_float_data"])  # fmt: skip
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


_WRONG_ATTRS = ["strings", "float", "undefined", "bad_utf8", "unknown", "drop", "empty_ints",
                "neg_ints", "huge_ints", "graph", "tensor", "dup"]  # fmt: skip


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
            oh.make_function("local", "Act", ["a"], ["b"], [oh.make_node("Relu", ["a"], ["b"])],
                             [oh.make_opsetid("", 17)])  # fmt: skip
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


# ---------------------------------------------------------------------- runtime-only failures


def _io(m: onnx.ModelProto) -> tuple[str, str]:
    return m.graph.input[0].name, m.graph.output[0].name


def runtime_graph(c: Ctx) -> str:
    """A graph that validation lets through and ONNX Runtime (or the arithmetic) refuses."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    choice = c.pick(["group0", "group_mismatch", "expand", "constant_of_shape", "reshape",
                     "kernel_too_big", "matmul", "gather", "tile", "resize"])  # fmt: skip
    big = int(c.pick([2**16, 2**20, 2**31, 10**12]))
    inits: list[TensorProto] = []
    w = nh.from_array(np.ones((4, 4, 3, 3), np.float32), "w")
    if choice == "group0":
        nodes = [oh.make_node("Conv", ["x", "w"], ["y"], group=0, kernel_shape=[3, 3])]
        inits = [w]
    elif choice == "group_mismatch":
        nodes = [oh.make_node("Conv", ["x", "w"], ["y"], group=3)]
        inits = [w]
    elif choice == "kernel_too_big":
        inits = [nh.from_array(np.ones((4, 4, 20, 20), np.float32), "w")]
        nodes = [oh.make_node("Conv", ["x", "w"], ["y"])]
    elif choice == "expand":
        inits = [nh.from_array(np.array([big, 4, 8, 8], np.int64), "s")]
        nodes = [oh.make_node("Expand", ["x", "s"], ["y"])]
    elif choice == "constant_of_shape":
        inits = [nh.from_array(np.array([big, 64], np.int64), "s")]
        nodes = [oh.make_node("ConstantOfShape", ["s"], ["c"]),
                 oh.make_node("ReduceSum", ["c"], ["y"], keepdims=0)]  # fmt: skip
    elif choice == "reshape":
        inits = [nh.from_array(np.array([7, -1, 5], np.int64), "s")]
        nodes = [oh.make_node("Reshape", ["x", "s"], ["y"])]
    elif choice == "matmul":
        inits = [nh.from_array(np.ones((5, 3), np.float32), "w")]
        nodes = [oh.make_node("MatMul", ["x", "w"], ["y"])]
    elif choice == "gather":
        inits = [nh.from_array(np.array([big % 2**31], np.int64), "i")]
        nodes = [oh.make_node("Gather", ["x", "i"], ["y"], axis=1)]
    elif choice == "tile":
        inits = [nh.from_array(np.array([1, 1, big % 2**40, big % 2**40], np.int64), "r")]
        nodes = [oh.make_node("Tile", ["x", "r"], ["y"])]
    else:
        inits = [nh.from_array(np.array([1.0, 1.0, 1e6, 1e6], np.float32), "sc")]
        nodes = [oh.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest")]
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = oh.make_model(oh.make_graph(nodes, "rt", [x], [y], inits),
                          opset_imports=[oh.make_opsetid("", 17)])  # fmt: skip
    model.ir_version = 8
    c.save(model)
    return f"{choice} ({big})"


def proto_field(c: Ctx) -> str:
    m = c.proto()
    done = mutate_fields(m, c.rng, int(c.rng.integers(1, 4)))
    c.save(m)
    return "; ".join(done)


# ---------------------------------------------------------------------- external data


def _externalize(c: Ctx, location: str = "w.data") -> tuple[onnx.ModelProto, TensorProto, bytes]:
    """The seed with its largest initializer moved to ``location`` (written); returns the
    model, that tensor and its bytes."""
    m = c.proto()
    t = max(m.graph.initializer, key=lambda t: len(t.raw_data))
    data = t.raw_data
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        e = t.external_data.add()
        e.key, e.value = key, value
    return m, t, data


def _set_ext(t: TensorProto, key: str, value: str) -> None:
    for e in t.external_data:
        if e.key == key:
            e.value = value
            return
    e = t.external_data.add()
    e.key, e.value = key, value


def external(c: Ctx) -> str:
    choice = c.pick(["valid", "symlink_loop", "long_location", "long_component", "past_eof",
                     "bad_length", "neg_offset", "text_offset", "empty", "fifo", "escape_dotdot",
                     "escape_abs", "escape_symlink", "folder", "missing", "dangling_link",
                     "nul", "self"])  # fmt: skip
    m, t, data = _externalize(c)
    f = c.folder
    (f / "w.data").write_bytes(data)
    if choice == "symlink_loop":
        _set_ext(t, "location", "loop_a")
        os.symlink("loop_b", f / "loop_a")
        os.symlink("loop_a", f / "loop_b")
    elif choice == "long_location":
        _set_ext(t, "location", "a/" * 2500)
    elif choice == "long_component":
        _set_ext(t, "location", "b" * 5000)
    elif choice == "past_eof":
        _set_ext(t, "offset", str(len(data) + int(c.rng.integers(1, 10**6))))
    elif choice == "bad_length":
        _set_ext(t, "length", str(int(c.pick([0, 1, len(data) * 2, 2**63]))))
    elif choice == "neg_offset":
        _set_ext(t, "offset", "-8")
    elif choice == "text_offset":
        _set_ext(t, c.pick(["offset", "length"]), c.pick(["1e3", "0x10", " 5", "∞"]))
    elif choice == "empty":
        (f / "w.data").write_bytes(b"")
    elif choice == "fifo":
        (f / "w.data").unlink()
        os.mkfifo(f / "w.data")
    elif choice == "escape_dotdot":
        _set_ext(t, "location", c.pick(["../w.data", "sub/../../w.data", "./../w.data"]))
    elif choice == "escape_abs":
        _set_ext(t, "location", c.pick([str(f / "w.data"), "/etc/passwd", "/dev/zero"]))
    elif choice == "escape_symlink":
        _set_ext(t, "location", "link.data")
        os.symlink(c.pick(["/dev/zero", "/etc/hostname", str(f.parent)]), f / "link.data")
    elif choice == "folder":
        _set_ext(t, "location", "sub")
        (f / "sub").mkdir()
    elif choice == "missing":
        _set_ext(t, "location", "nothing.data")
    elif choice == "dangling_link":
        _set_ext(t, "location", "dangling.data")
        os.symlink("nothing-here", f / "dangling.data")
    elif choice == "nul":
        _set_ext(t, "location", "w.data\x00.txt")
    elif choice == "self":
        _set_ext(t, "location", "m.onnx")
    c.save(m)
    return choice


def sparse_external(c: Ctx) -> str:
    """A sparse initializer whose values live in external data (valid or broken)."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])
    values = nh.from_array(np.array([1.0, 2.0, 3.0], np.float32), "sp")
    indices = nh.from_array(np.array([1, 5, 14], np.int64), "sp_idx")
    choice = c.pick(["valid", "escape", "past_eof", "bad_index", "fifo", "loop"])
    data = values.raw_data
    values.ClearField("raw_data")
    values.data_location = TensorProto.EXTERNAL
    location = {"escape": "../sp.data", "loop": "loop_a"}.get(choice, "sp.data")
    offset = "4096" if choice == "past_eof" else "0"
    for key, value in (("location", location), ("offset", offset), ("length", "12")):
        e = values.external_data.add()
        e.key, e.value = key, value
    if choice == "fifo":
        os.mkfifo(c.folder / "sp.data")
    elif choice == "loop":
        os.symlink("loop_b", c.folder / "loop_a")
        os.symlink("loop_a", c.folder / "loop_b")
    else:
        (c.folder / "sp.data").write_bytes(data)
    if choice == "bad_index":
        indices = nh.from_array(np.array([1, 5, 99], np.int64), "sp_idx")
    sparse = oh.make_sparse_tensor(values, indices, [2, 8])
    graph = oh.make_graph([oh.make_node("Add", ["x", "sp"], ["y"])], "sparse", [x], [y])
    graph.sparse_initializer.add().CopyFrom(sparse)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    c.save(model)
    return choice


#: Mutation class -> (function, weight in the corpus, seeds it applies to).
ALL_SEEDS = ("conv", "function", "qdq")
CLASSES: dict[str, tuple[Mutation, int, tuple[str, ...]]] = {
    "bitflip": (bitflip, 14, ALL_SEEDS),
    "truncate": (truncate, 8, ALL_SEEDS),
    "splice": (splice, 6, ALL_SEEDS),
    "dangling_input": (dangling_input, 5, ALL_SEEDS),
    "cycle": (cycle, 5, ALL_SEEDS),
    "out_of_order": (out_of_order, 5, ALL_SEEDS),
    "orphan_output": (orphan_output, 4, ALL_SEEDS),
    "no_outputs": (no_outputs, 2, ALL_SEEDS),
    "init_inconsistent": (init_inconsistent, 6, ALL_SEEDS),
    "dtype_unknown": (dtype_unknown, 5, ALL_SEEDS),
    "attr_wrong_type": (attr_wrong_type, 8, ALL_SEEDS),
    "recursive_function": (recursive_function, 3, ("function",)),
    "runtime_graph": (runtime_graph, 6, ("conv",)),
    "proto_field": (proto_field, 12, ALL_SEEDS),
    "external": (external, 8, ("conv", "function", "qdq")),
    "sparse_external": (sparse_external, 2, ("conv",)),
    "real_bitflip": (bitflip, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
    "real_truncate": (truncate, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
    "real_proto_field": (proto_field, 1, ("real:shufflenet-v2-12-qdq", "real:yolox_nano")),
}
