"""Shape resolution: batch / symbolic dims, overrides, refusals with named tensors."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io, zoo
from onnxfit.analysis.shapes import fmt_shape, has_static_shapes, infer_shapes
from onnxfit.errors import InputError

F = TensorProto.FLOAT


def _model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    inits: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    domains: Sequence[tuple[str, int]] = (),
) -> ir.Model:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in domains)]
    proto = helper.make_model(graph, opset_imports=opsets)
    return io.from_proto(proto)


def _w(name: str, shape: Sequence[int], seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _conv_model(batch_dim: int | str = "N", hw: int | str = 8) -> ir.Model:
    """x [batch, 3, hw, hw] -> Conv(4, 3x3, pad 1) -> Relu -> y."""
    return _model(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", F, [batch_dim, 3, hw, hw])],
        [helper.make_tensor_value_info("y", F, None)],
        [_w("w", [4, 3, 3, 3])],
    )


def _shape(model: ir.Model, name: str) -> str:
    for node in model.graph:
        for v in node.outputs:
            if v.name == name:
                return fmt_shape(v.shape)
    raise KeyError(name)


def test_symbolic_batch_is_fixed_and_input_untouched() -> None:
    m = _conv_model()
    out = infer_shapes(m, batch=3)
    assert _shape(out, "c") == "[3, 4, 8, 8]"
    assert fmt_shape(out.graph.outputs[0].shape) == "[3, 4, 8, 8]"
    assert out.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert has_static_shapes(out)
    # the original keeps its symbolic input and unknown intermediate shapes
    assert fmt_shape(m.graph.inputs[0].shape) == "[N, 3, 8, 8]"
    assert m.graph.outputs[0].shape is None
    assert not has_static_shapes(m)


def test_batch_symbol_is_replaced_everywhere() -> None:
    m = _model(
        [helper.make_node("Add", ["a", "b"], ["y"], name="add")],
        [
            helper.make_tensor_value_info("a", F, ["B", 5]),
            helper.make_tensor_value_info("b", F, [1, "B", 5]),
        ],
        [helper.make_tensor_value_info("y", F, None)],
    )
    out = infer_shapes(m, batch=4)
    assert fmt_shape(out.graph.outputs[0].shape) == "[1, 4, 5]"


def test_input_shapes_override_and_errors() -> None:
    m = _conv_model(hw="H")
    out = infer_shapes(m, input_shapes={"x": [2, 3, 16, 16]})
    assert _shape(out, "y") == "[2, 4, 16, 16]"
    with pytest.raises(InputError) as err:
        infer_shapes(m, input_shapes={"nope": [1, 3, 8, 8]})
    assert "nope" in str(err.value) and "x" in (err.value.hint or "")
    with pytest.raises(InputError, match="3 dims given"):
        infer_shapes(m, input_shapes={"x": [1, 3, 8]})
    with pytest.raises(InputError, match="positive"):
        infer_shapes(m, input_shapes={"x": [1, 3, 0, 8]})


@pytest.mark.parametrize("batch", [0, -1, True, 1.5])
def test_bad_batch(batch: object) -> None:
    with pytest.raises(InputError, match="batch"):
        infer_shapes(_conv_model(), batch=batch)  # type: ignore[arg-type]


def test_unresolved_symbolic_dims_are_named_with_hint() -> None:
    m = _conv_model(hw="H")
    with pytest.raises(InputError) as err:
        infer_shapes(m)
    msg = str(err.value)
    assert "unresolved" in msg and "'x' [1, 3, H, H]" in msg and "'c'" in msg
    assert "--input-shape x=1x3xHxH" in (err.value.hint or "")


def test_unresolved_after_unknown_custom_op_names_the_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # onnxruntime's symbolic inference may drop a temp file here
    m = _model(
        [
            helper.make_node("Mystery", ["x"], ["m"], name="mystery", domain="my.ops"),
            helper.make_node("Relu", ["m"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", F, [1, 8])],
        [helper.make_tensor_value_info("y", F, None)],
        domains=[("my.ops", 1)],
    )
    with pytest.raises(InputError) as err:
        infer_shapes(m)
    assert "my.ops::Mystery node 'mystery'" in str(err.value)
    assert "'m'" in str(err.value) and "2 tensors" in str(err.value)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_fixed_batch_moves_when_the_graph_allows_it() -> None:
    out = infer_shapes(_conv_model(batch_dim=1), batch=2)
    assert fmt_shape(out.graph.outputs[0].shape) == "[2, 4, 8, 8]"


def _reshape_model(shape: list[int]) -> ir.Model:
    return _model(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="flat")],
        [helper.make_tensor_value_info("x", F, [1, 4, 3])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.array(shape, dtype=np.int64), "s")],
    )


def test_hard_coded_reshape_refuses_batch_with_reason() -> None:
    assert fmt_shape(infer_shapes(_reshape_model([1, 12])).graph.outputs[0].shape) == "[1, 12]"
    with pytest.raises(InputError) as err:
        infer_shapes(_reshape_model([1, 12]), batch=2)
    assert "Reshape 'flat'" in str(err.value) and "[1, 12]" in str(err.value)
    # [1, -1] would take batch 2 silently as [1, 24]: refused as folding the batch
    with pytest.raises(InputError, match="folds the batch"):
        infer_shapes(_reshape_model([1, -1]), batch=2)
    # a dynamic-batch Reshape is fine
    out = infer_shapes(_reshape_model([-1, 12]), batch=2)
    assert fmt_shape(out.graph.outputs[0].shape) == "[2, 12]"


def test_data_dependent_shapes_are_allowed_or_refused() -> None:
    m = _model(
        [
            helper.make_node("NonZero", ["x"], ["nz"], name="nz"),
            helper.make_node("Transpose", ["nz"], ["y"], name="t"),
        ],
        [helper.make_tensor_value_info("x", F, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, None)],
    )
    out = infer_shapes(m)  # logged, not raised
    assert not has_static_shapes(out)
    with pytest.raises(InputError, match="'nz'"):
        infer_shapes(m, allow_data_dependent=False)


def test_big_initializers_survive(caplog: pytest.LogCaptureFixture) -> None:
    m = zoo.resnet18()
    before = {k: v.const_value for k, v in m.graph.initializers.items()}
    with caplog.at_level(logging.WARNING):
        out = infer_shapes(m, batch=2)
    assert fmt_shape(out.graph.outputs[0].shape) == "[2, 1000]"
    assert set(out.graph.initializers) == set(before)
    for k, v in out.graph.initializers.items():
        assert v.const_value is before[k]  # shared tensors, not copies or dropped
    assert m.graph.initializers.keys() == before.keys()
    assert all(v.const_value is before[k] for k, v in m.graph.initializers.items())
    assert fmt_shape(m.graph.inputs[0].shape) == "[batch, 3, 224, 224]"


def test_zoo_yolo_both_heads() -> None:
    out = infer_shapes(zoo.yolov3_tiny(), batch=2)
    assert [fmt_shape(v.shape) for v in out.graph.outputs] == [
        "[2, 255, 13, 13]",
        "[2, 255, 26, 26]",
    ]


@pytest.mark.needs_data
def test_shared_models_batch_1_and_clear_refusal_at_batch_2(shared_data: Path) -> None:
    expected = {"shufflenet-v2-12-qdq.onnx": "[1, 1000]", "yolox_nano.onnx": "[1, 3549, 85]"}
    for name, shape in expected.items():
        m = io.load(shared_data / "models" / name)
        out = infer_shapes(m)
        assert fmt_shape(out.graph.outputs[0].shape) == shape
        assert has_static_shapes(out)
        with pytest.raises(InputError) as err:
            infer_shapes(m, batch=2)
        assert "at batch 2" in str(err.value) and "Reshape" in str(err.value)
        assert "--batch 1" in (err.value.hint or "")


def test_contrib_ops_resolved_by_onnxruntime_symbolic_inference() -> None:
    m = _model(
        [
            helper.make_node("Gelu", ["x"], ["g"], name="gelu", domain="com.microsoft"),
            helper.make_node("Relu", ["g"], ["y"], name="relu"),
        ],
        [helper.make_tensor_value_info("x", F, ["batch", 16])],
        [helper.make_tensor_value_info("y", F, None)],
        domains=[("com.microsoft", 1)],
    )
    out = infer_shapes(m, batch=3)
    assert _shape(out, "g") == "[3, 16]" and fmt_shape(out.graph.outputs[0].shape) == "[3, 16]"
