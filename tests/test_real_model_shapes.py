"""Shapes seen in real models (speech / VAD exports): a recurrent state ``[2, batch, H]``, a
scalar sample-rate input, dynamic dims pinned with ``--input-shape``, and If branches that
return an outer value through an Identity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.optimizer import optimize
from onnxfit.passes.cleanup import CleanupPass
from onnxfit.verify.runner import merge_feeds, run_all


def _recurrent(path: Path) -> Path:
    """out = x @ W + sum(state) + sr; new_state = state * 0.5 (x [batch, seq], state
    [2, batch, 4], sr a scalar)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("ReduceSum", ["state", "axes0"], ["s"], keepdims=0),
        helper.make_node("Add", ["m", "s"], ["a"]),
        helper.make_node("Cast", ["sr"], ["srf"], to=T.FLOAT),
        helper.make_node("Add", ["a", "srf"], ["out"]),
        helper.make_node("Mul", ["state", "half"], ["new_state"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", T.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("state", T.FLOAT, [2, "batch", 4]),
            helper.make_tensor_value_info("sr", T.INT64, []),
        ],
        [
            helper.make_tensor_value_info("out", T.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("new_state", T.FLOAT, [2, "batch", 4]),
        ],
        [
            numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
            numpy_helper.from_array(np.array([0], np.int64), "axes0"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_state_and_scalar_inputs_optimize_with_input_shape(tmp_path: Path, precision: str) -> None:
    src = _recurrent(tmp_path / "vad.onnx")
    out = tmp_path / f"vad-{precision}.onnx"
    with pytest.raises(InputError, match="unknown dimension") as err:  # 'batch' inside state
        optimize(src, out, target="cpu", precision=precision, measure_runs=0)
    assert "--input-shape" in str(err.value.hint)
    shapes = {"x": [1, 8], "state": [2, 1, 4]}
    result = optimize(
        src, out, target="cpu", precision=precision, measure_runs=1, input_shapes=shapes
    )
    assert out.exists() and result.after.measured_latency_s is not None
    written = io.load(out)  # the written model keeps its dynamic dims
    assert not isinstance(written.graph.inputs[0].shape.dims[0], int)


def test_runner_passes_states_and_scalars_whole(tmp_path: Path) -> None:
    src = _recurrent(tmp_path / "vad.onnx")
    feeds = [
        {
            "x": np.ones((1, 8), np.float32) * i,
            "state": np.ones((2, 1, 4), np.float32),
            "sr": np.array(0, np.int64),
        }
        for i in range(3)
    ]
    merged = merge_feeds(feeds)
    assert merged["x"].shape == (1, 8)  # not concatenable: the first feed alone
    outs = run_all(io.load(src), feeds)
    assert outs["out"].shape == (3, 4)


def test_cleanup_keeps_identities_that_return_an_outer_value() -> None:
    """Both If branches return the outer value ``a`` through an Identity: removing them would
    make ``a`` an output of two subgraphs (onnx-ir raised ValueError)."""
    branch = [
        helper.make_graph(
            [helper.make_node("Identity", ["a"], [f"o{i}"])],
            f"b{i}",
            [],
            [helper.make_tensor_value_info(f"o{i}", T.FLOAT, [1, 3])],
        )
        for i in range(2)
    ]
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch[0], else_branch=branch[1]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", T.FLOAT, [1, 3]),
            helper.make_tensor_value_info("c", T.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", T.FLOAT, [1, 3])],
    )
    model = io.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    CleanupPass()(model)
    x = np.array([[-1.0, 2.0, -3.0]], np.float32)
    got = run_all(model, [{"x": x, "c": np.array(True)}])["y"]
    assert np.array_equal(got, np.maximum(x, 0))
    assert isinstance(model, ir.Model)


def test_quantizer_failure_in_a_bias_names_the_bias_consumer() -> None:
    """ORT's bias quantizer fails knowing only ``bias_name``; an outer frame still holds the
    last node of an earlier loop in ``node``: the consumer of the bias is the one to exclude."""
    from types import SimpleNamespace

    from onnxfit.passes.quantizer_guard import failing_node

    NodeProto = type("NodeProto", (), {})  # duck-typed like onnx's
    stale = NodeProto()
    stale.name = "last_node_of_the_loop"  # type: ignore[attr-defined]
    conv = SimpleNamespace(name="conv_7", input=["x", "w7", "b7"])
    other = SimpleNamespace(name="conv_1", input=["x", "w1", "b1"])
    quantizer = SimpleNamespace(model=SimpleNamespace(nodes=lambda: [other, conv]))

    def quantize_bias(self: object, bias_name: str) -> None:
        raise ValueError("operands could not be broadcast together with shapes (16,) (8,)")

    def quantize_model(node: object) -> None:
        quantize_bias(quantizer, "b7")

    with pytest.raises(ValueError) as err:
        quantize_model(stale)
    assert failing_node(err.value) == "conv_7"
