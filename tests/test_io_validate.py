"""Model validation at the io edge: every structural defect is one ModelLoadError naming the
node or tensor and the reason, before any analysis runs; external data is checked against the
model's own folder (ranges, irregular files, sparse initializers)."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import AttributeProto, TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from onnxfit import io
from onnxfit.analysis.inspect import inspect
from onnxfit.errors import ModelLoadError, UnsafeModelError

F = TensorProto.FLOAT


def _model(
    nodes: list[onnx.NodeProto],
    inits: list[TensorProto] | None = None,
    outputs: list[str] | None = None,
    opset: int = 13,
    **kw: object,
) -> onnx.ModelProto:
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", F, [1, 2, 4, 4])],
        [oh.make_tensor_value_info(o, F, None) for o in (outputs or ["y"])],
        inits or [],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)], **kw)
    model.ir_version = 8
    return model


def _chain() -> onnx.ModelProto:
    """x -> Relu(a) -> Sigmoid(b) -> Neg(c) -> y."""
    return _model(
        [
            oh.make_node("Relu", ["x"], ["r"], name="a"),
            oh.make_node("Sigmoid", ["r"], ["s"], name="b"),
            oh.make_node("Neg", ["s"], ["y"], name="c"),
        ]
    )


def _conv(weight: TensorProto | None = None, **attrs: object) -> onnx.ModelProto:
    w = weight if weight is not None else nh.from_array(np.ones((3, 2, 3, 3), np.float32), "w")
    attrs = {"kernel_shape": [3, 3], **attrs}
    return _model([oh.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)], [w])


def _write(tmp_path: Path, model: onnx.ModelProto, name: str = "m.onnx") -> Path:
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _refused(tmp_path: Path, model: onnx.ModelProto, pattern: str) -> None:
    path = _write(tmp_path, model)
    with pytest.raises(ModelLoadError, match=pattern) as info:
        io.load(path)
    assert "\n" not in info.value.message
    assert str(path) in info.value.message
    with pytest.raises(ModelLoadError, match=pattern):
        io.load_proto(path)


def test_valid_models_load_unchanged(tmp_path: Path) -> None:
    model = io.load(_write(tmp_path, _conv()))
    assert [n.op_type for n in model.graph] == ["Conv"]


def test_out_of_order_nodes_are_sorted_not_refused(tmp_path: Path) -> None:
    proto = _chain()
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend([nodes[2], nodes[0], nodes[1]])
    path = _write(tmp_path, proto)
    model = io.load(path)
    assert [n.name for n in model.graph] == ["a", "b", "c"]
    # ORT runs the unsorted file; onnxfit inspects it
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert inspect(path).num_nodes == 3


def test_cycle_refused(tmp_path: Path) -> None:
    proto = _chain()
    proto.graph.node[0].input[0] = "s"  # a reads b's output, b reads a's
    _refused(tmp_path, proto, r"cycle through node 'a' \(Relu\)")


def test_undefined_value_refused(tmp_path: Path) -> None:
    proto = _chain()
    proto.graph.node[1].input[0] = "ghost"
    _refused(tmp_path, proto, r"node 'b' \(Sigmoid\) reads 'ghost', which no node")


def test_output_produced_by_no_node(tmp_path: Path) -> None:
    proto = _chain()
    proto.graph.output[0].name = "nobody"
    _refused(tmp_path, proto, r"graph output 'nobody' is produced by no node")


def test_no_outputs(tmp_path: Path) -> None:
    proto = _chain()
    del proto.graph.output[:]
    _refused(tmp_path, proto, r"no outputs")


def test_value_produced_twice(tmp_path: Path) -> None:
    proto = _chain()
    proto.graph.node[1].output[0] = "r"
    _refused(tmp_path, proto, r"value 'r' is produced twice, by node 'a' \(Relu\) and node 'b'")


@pytest.mark.parametrize(
    ("dtype", "shown"), [(0, "UNDEFINED"), (99, r"99 \(unknown\)"), (-3, r"-3 \(unknown\)")]
)
def test_unknown_initializer_dtype(tmp_path: Path, dtype: int, shown: str) -> None:
    proto = _conv()
    proto.graph.initializer[0].data_type = dtype
    _refused(tmp_path, proto, rf"initializer 'w': data type {shown} is not one ONNX defines")


def test_unknown_input_dtype(tmp_path: Path) -> None:
    proto = _conv()
    proto.graph.input[0].type.tensor_type.elem_type = 77
    _refused(tmp_path, proto, r"graph input 'x' has data type 77 \(unknown\)")


def test_attribute_of_wrong_type(tmp_path: Path) -> None:
    proto = _model([oh.make_node("MaxPool", ["x"], ["y"], name="pool", kernel_shape=[b"2", b"2"])])
    _refused(tmp_path, proto, r"node 'pool' \(MaxPool\): attribute 'kernel_shape' is STRINGS; "
             r"MaxPool expects INTS")  # fmt: skip


def test_attribute_undefined_type(tmp_path: Path) -> None:
    proto = _conv()
    proto.graph.node[0].attribute[0].type = AttributeProto.UNDEFINED
    _refused(tmp_path, proto, r"node 'conv' \(Conv\): attribute 'kernel_shape' has type UNDEFINED")


def test_unknown_attribute_and_missing_required(tmp_path: Path) -> None:
    _refused(tmp_path, _conv(colour=3), r"Conv has no attribute 'colour'")
    proto = _model([oh.make_node("Cast", ["x"], ["y"], name="cast")])
    _refused(tmp_path, proto, r"node 'cast' \(Cast\): required attribute 'to' is missing")


@pytest.mark.parametrize("attrs", [{"group": 0}, {"strides": [1, 0]}, {"kernel_shape": [3, -3]}])
def test_nonpositive_window_attributes(tmp_path: Path, attrs: dict[str, object]) -> None:
    name = next(iter(attrs))
    _refused(tmp_path, _conv(**attrs), rf"node 'conv' \(Conv\): attribute {name} = .*>= 1")


def test_unknown_op_in_opset(tmp_path: Path) -> None:
    proto = _model([oh.make_node("Gelu", ["x"], ["y"], name="g")], opset=13)  # Gelu is opset 20
    _refused(tmp_path, proto, r"node 'g' \(Gelu\): there is no op 'Gelu' in opset 13")


def _poke_invalid_utf8(proto: onnx.ModelProto, marker: str) -> bytes:
    data = proto.SerializeToString()
    assert marker.encode() in data
    return data.replace(marker.encode(), b"\xff\xfe" + marker.encode()[2:])


def test_invalid_utf8_in_string_fields(tmp_path: Path) -> None:
    proto = _chain()
    proto.graph.node[1].name = "MARKERNAME"
    path = tmp_path / "m.onnx"
    path.write_bytes(_poke_invalid_utf8(proto, "MARKERNAME"))
    with pytest.raises(ModelLoadError, match=r"Node.name .* is not valid UTF-8"):
        io.load(path)
    proto = _model([oh.make_node("Relu", ["x"], ["y"], name="r")])
    proto.graph.node[0].attribute.append(oh.make_attribute("note", b"\xff\xfe"))
    _refused(tmp_path, proto, r"node 'r' \(Relu\): string attribute 'note' is not valid UTF-8")


@pytest.mark.parametrize("mutual", [False, True])
def test_recursive_local_functions(tmp_path: Path, mutual: bool) -> None:
    opsets = [oh.make_opsetid("", 18), oh.make_opsetid("rec", 1)]
    call = "G" if mutual else "F"
    f = oh.make_function(
        "rec", "F", ["a"], ["b"], [oh.make_node(call, ["a"], ["b"], domain="rec")], opsets
    )
    functions = [f]
    if mutual:
        body = [oh.make_node("F", ["a"], ["b"], domain="rec")]
        functions.append(oh.make_function("rec", "G", ["a"], ["b"], body, opsets))
    proto = _model([oh.make_node("F", ["x"], ["y"], name="call", domain="rec")], opset=18,
                   functions=functions)  # fmt: skip
    proto.opset_import.append(oh.make_opsetid("rec", 1))
    cycle = "rec::F -> rec::G -> rec::F" if mutual else "rec::F -> rec::F"
    _refused(tmp_path, proto, rf"model-local functions call themselves \({cycle}\)")


def test_function_body_checked(tmp_path: Path) -> None:
    f = oh.make_function("pkg", "Body", ["a"], ["b"], [oh.make_node("Relu", ["a"], ["c"])],
                         [oh.make_opsetid("", 18)])  # fmt: skip
    proto = _model([oh.make_node("Body", ["x"], ["y"], name="call", domain="pkg")], opset=18,
                   functions=[f])  # fmt: skip
    proto.opset_import.append(oh.make_opsetid("pkg", 1))
    _refused(tmp_path, proto, r"function pkg::Body: output 'b' is produced by no node")


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda t: setattr(t, "raw_data", t.raw_data[:-4]),
         r"212 bytes of data for dims \[3, 2, 3, 3\] of FLOAT \(216 expected\)"),
        (lambda t: t.dims.__setitem__(0, 4), r"216 bytes of data for dims \[4, 2, 3, 3\]"),
        (lambda t: t.dims.__setitem__(1, -2), r"negative dimension in dims \[3, -2, 3, 3\]"),
        (lambda t: t.dims.extend([2**40, 2**40]), r"dims .* more than any model can hold"),
    ],
)  # fmt: skip
def test_initializer_data_must_match_dims(
    tmp_path: Path, edit: Callable[[TensorProto], None], pattern: str
) -> None:
    proto = _conv()
    edit(proto.graph.initializer[0])
    _refused(tmp_path, proto, rf"initializer 'w': {pattern}")


def test_typed_data_count_checked(tmp_path: Path) -> None:
    w = TensorProto(name="w", data_type=F, dims=[3, 2, 3, 3], float_data=[1.0] * 50)
    _refused(tmp_path, _conv(w), r"initializer 'w': 50 values in float_data .* \(54 expected\)")


def test_header_checks(tmp_path: Path) -> None:
    proto = _chain()
    proto.ir_version = 99
    _refused(tmp_path, proto, r"IR version 99")
    proto = _chain()
    proto.opset_import[0].version = 10**6
    _refused(tmp_path, proto, r"imports ONNX opset 1000000")
    proto = _chain()
    proto.opset_import.append(oh.make_opsetid("ai.onnx", 12))
    _refused(tmp_path, proto, r"imports domain 'ai.onnx' twice")


# ---------------------------------------------------------------------- files and external data


def _external(tmp_path: Path, *, location: str = "w.data", write: bool = True,
              **entries: str) -> Path:  # fmt: skip
    proto = _conv()
    t = proto.graph.initializer[0]
    data = t.raw_data
    if write:
        (tmp_path / location).write_bytes(data)
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    for k, v in {"location": location, "offset": "0", "length": str(len(data)), **entries}.items():
        e = t.external_data.add()
        e.key, e.value = k, v
    return _write(tmp_path, proto)


def _load_fails(path: Path, pattern: str, error: type[Exception] = ModelLoadError) -> None:
    with pytest.raises(error, match=pattern) as info:
        io.load(path)
    assert "\n" not in str(info.value)
    with pytest.raises(error, match=pattern):
        io.load_proto(path)


def test_external_data_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    path = _external(folder)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    model = io.load(path)
    proto = io.to_proto(model)  # self-contained: no reference left to resolve against the cwd
    assert all(t.data_location != TensorProto.EXTERNAL for t in proto.graph.initializer)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ones((1, 2, 4, 4), np.float32)})[0]
    assert y.shape == (1, 3, 2, 2) and np.allclose(y, 18.0)
    assert io.from_proto(proto).graph.initializers["w"].const_value.numpy().sum() == 54


@pytest.mark.parametrize(
    ("entries", "pattern"),
    [
        ({"offset": "500"}, r"bytes 500..716 are past the end of w.data \(216 bytes\)"),
        ({"length": "4000"}, r"length 4,000 bytes, but dims \[3, 2, 3, 3\] need 216"),
        ({"offset": "-4"}, r"negative external-data offset -4"),
        ({"offset": "twelve"}, r"offset 'twelve' is not an integer"),
    ],
)
def test_external_ranges(tmp_path: Path, entries: dict[str, str], pattern: str) -> None:
    _load_fails(_external(tmp_path, **entries), pattern)


def test_external_empty_file(tmp_path: Path) -> None:
    path = _external(tmp_path)
    (tmp_path / "w.data").write_bytes(b"")
    _load_fails(path, r"past the end of w.data \(0 bytes\) \(the file is empty\)")


def test_external_symlink_loop(tmp_path: Path) -> None:
    path = _external(tmp_path, location="loop_a", write=False)
    os.symlink("loop_b", tmp_path / "loop_a")
    os.symlink("loop_a", tmp_path / "loop_b")
    _load_fails(path, r"loop_a is a symlink loop")


def test_external_fifo_is_not_a_regular_file(tmp_path: Path) -> None:
    path = _external(tmp_path, location="pipe.data", write=False)
    os.mkfifo(tmp_path / "pipe.data")
    _load_fails(path, r"pipe.data is not a regular file \(it is a FIFO")  # and it does not block


def test_external_folder_and_missing(tmp_path: Path) -> None:
    path = _external(tmp_path, location="dir.data", write=False)
    (tmp_path / "dir.data").mkdir()
    _load_fails(path, r"dir.data is not a regular file \(it is a folder\)")
    (tmp_path / "dir.data").rmdir()
    _load_fails(path, r"dir.data does not exist")


def test_external_overlong_location(tmp_path: Path) -> None:
    path = _external(tmp_path, location="a" * 5000, write=False)
    _load_fails(path, r"the location is 5,000 characters long")


def _sparse_model(values: TensorProto, indices: TensorProto, dims: list[int]) -> onnx.ModelProto:
    sparse = oh.make_sparse_tensor(values, indices, dims)
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [oh.make_tensor_value_info("x", F, [2, 4])],
        [oh.make_tensor_value_info("y", F, [2, 3])],
        sparse_initializer=[sparse],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_sparse_initializers_become_dense(tmp_path: Path) -> None:
    values = nh.from_array(np.array([1.0, 2.0, 3.0], np.float32), "w")
    indices = nh.from_array(np.array([0, 5, 11], np.int64), "w_idx")
    path = _write(tmp_path, _sparse_model(values, indices, [4, 3]))
    dense = io.load(path).graph.initializers["w"].const_value.numpy()
    expected = np.zeros(12, np.float32)
    expected[[0, 5, 11]] = [1, 2, 3]
    np.testing.assert_array_equal(dense, expected.reshape(4, 3))
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"x": x})[0], x @ dense)
    assert inspect(path).flops > 0


def test_sparse_initializer_bad_index_and_escaping_location(tmp_path: Path) -> None:
    values = nh.from_array(np.array([1.0, 2.0], np.float32), "w")
    indices = nh.from_array(np.array([0, 99], np.int64), "w_idx")
    _refused(tmp_path, _sparse_model(values, indices, [4, 3]), r"an index is outside dims")
    model = _sparse_model(values, nh.from_array(np.array([0, 1], np.int64), "w_idx"), [4, 3])
    v = model.graph.sparse_initializer[0].values
    v.ClearField("float_data")
    v.data_location = TensorProto.EXTERNAL
    for k, val in {"location": "../secret.data", "offset": "0", "length": "8"}.items():
        e = v.external_data.add()
        e.key, e.value = k, val
    path = _write(tmp_path, model)
    _load_fails(path, r"sparse initializer 'w' \(values\) .* '..' leaves", UnsafeModelError)


def test_model_file_checks_before_reading(tmp_path: Path) -> None:
    big = tmp_path / "big.onnx"
    with open(big, "wb") as fh:
        fh.truncate(5 * 2**30)  # sparse: no disk used, and it must not be read
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    _load_fails(big, r"5.0 GiB; a single .onnx file cannot exceed 2 GiB")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 512 * 1024  # KiB
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    _load_fails(fifo, r"not a regular file")
    os.symlink("loop2.onnx", tmp_path / "loop1.onnx")
    os.symlink("loop1.onnx", tmp_path / "loop2.onnx")
    _load_fails(tmp_path / "loop1.onnx", r"cannot open it \(a symlink loop\)")
