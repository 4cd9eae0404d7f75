"""Mutated models that only a runtime or a file system can refuse: graphs ONNX Runtime rejects
(Conv ``group`` 0, huge Expand / ConstantOfShape / Tile / Resize, shape mismatches), and
external data moved out of the model and then broken (symlink loops, 5,000-character
locations, ranges past the end, empty files, FIFOs, locations leaving the folder, sparse
initializers with external values).
"""

from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from fuzz.models import Ctx

# ---------------------------------------------------------------------- runtime-only failures


def _io(m: onnx.ModelProto) -> tuple[str, str]:
    return m.graph.input[0].name, m.graph.output[0].name


def runtime_graph(c: Ctx) -> str:
    """A graph that validation lets through and ONNX Runtime (or the arithmetic) refuses."""
    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    choice = c.pick(
        [
            "group0",
            "group_mismatch",
            "expand",
            "constant_of_shape",
            "reshape",
            "kernel_too_big",
            "matmul",
            "gather",
            "tile",
            "resize",
        ]
    )
    # 64 MiB tensors (must verify within 1 GiB) or impossible ones (must be refused); a real
    # 1 GiB tensor legitimately needs more than 1 GiB to verify, so it is not generated
    big = int(c.pick([2**16, 2**31, 10**12, 2**40]))
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
        nodes = [
            oh.make_node("ConstantOfShape", ["s"], ["c"]),
            oh.make_node("ReduceSum", ["c"], ["y"], keepdims=0),
        ]
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
    model = oh.make_model(
        oh.make_graph(nodes, "rt", [x], [y], inits), opset_imports=[oh.make_opsetid("", 17)]
    )
    model.ir_version = 8
    c.save(model)
    return f"{choice} ({big})"


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
    choice = c.pick(
        [
            "valid",
            "symlink_loop",
            "long_location",
            "long_component",
            "past_eof",
            "bad_length",
            "neg_offset",
            "text_offset",
            "empty",
            "fifo",
            "escape_dotdot",
            "escape_abs",
            "escape_symlink",
            "folder",
            "missing",
            "dangling_link",
            "nul",
            "self",
        ]
    )
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
