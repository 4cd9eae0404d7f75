"""QOperator contrib ops (com.microsoft QLinearGlobalAveragePool, QLinearAveragePool,
QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, QLinearSoftmax, QGemm): the cost model counts
them and the dequantize pass turns every one back into its float op."""

from __future__ import annotations

import numpy as np
from onnx import helper as oh

from onnxfit import io
from onnxfit.analysis.cost import analyze_cost
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.passes.dequantize import DequantizePass
from passes_util import NoiseReader, check, model, ops, run, tensor, vinfo

RNG = np.random.default_rng(0)
CONTRIB = {
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearConcat",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QLinearSoftmax",
    "QGemm",
}


def _float_model():  # type: ignore[no-untyped-def]
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Sigmoid", ["c"], ["s"]),
        oh.make_node("LeakyRelu", ["c"], ["l"], alpha=0.1),
        oh.make_node("Concat", ["s", "l"], ["cat"], axis=1),
        oh.make_node("AveragePool", ["cat"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("GlobalAveragePool", ["ap"], ["g"]),
        oh.make_node("Flatten", ["g"], ["f"]),
        oh.make_node("Gemm", ["f", "G", "Gb"], ["gm"], transB=1),
        oh.make_node("Softmax", ["gm"], ["y"], axis=-1),
    ]
    inits = [
        tensor("W", RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        tensor("B", RNG.standard_normal(8).astype(np.float32) * 0.1),
        tensor("G", RNG.standard_normal((6, 16)).astype(np.float32)),
        tensor("Gb", RNG.standard_normal(6).astype(np.float32)),
    ]
    return model(nodes, [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 6])], inits, opset=13)


def _qoperator(tmp_path):  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    fm = _float_model()
    path, qpath = tmp_path / "float.onnx", tmp_path / "q.onnx"
    io.save(fm, path)
    quantize_static(
        str(path),
        str(qpath),
        NoiseReader(),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    q = io.load(qpath)
    assert set(ops(q)) >= CONTRIB, set(ops(q))  # the quantizer wrote every contrib op
    return fm, q


def test_cost_model_knows_the_contrib_ops(tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, q = _qoperator(tmp_path)
    cost = analyze_cost(infer_shapes(q), target="cpu")
    assert list(cost.unknown_ops) == []
    by_op = {n.op_type: n for n in cost.nodes}
    assert by_op["QGemm"].macs == 16 * 6  # [1, 16] x [16, 6]
    for op in CONTRIB:
        assert by_op[op].precision == "int8", op
        assert by_op[op].flops > 0 or op == "QLinearConcat", op


def test_dequantize_turns_every_contrib_op_to_float(tmp_path) -> None:  # type: ignore[no-untyped-def]
    fm, q = _qoperator(tmp_path)
    int8 = io.clone(q)
    p = DequantizePass()
    p(q)
    assert p.stats["unsupported"] == [] and p.stats["qdq_left"] == []
    assert set(p.stats["qoperator_converted"]) >= CONTRIB  # type: ignore[arg-type]
    left = [o for o in ops(q) if o.startswith("QLinear") or o in ("QGemm", "QuantizeLinear")]
    assert left == []
    assert {"Softmax", "GlobalAveragePool", "AveragePool", "Sigmoid", "LeakyRelu"} <= set(ops(q))
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref, got, i8 = run(fm, {"x": x})[0], run(q, {"x": x})[0], run(int8, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.05  # softmax probabilities
    assert np.abs(got - i8).max() < 0.05
    check(q, full=False)
