"""dequantize: QDQ / QOperator / dynamic INT8 back to float; hidden ReLUs kept (FINDINGS.md)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto
from onnx import helper as oh

from conftest import shufflenet_qdq_top1
from onnxfit import io
from onnxfit.passes._quant import dequantize_array, quantize_array
from onnxfit.passes.dequantize import DequantizePass
from passes_util import (
    NoiseReader,
    check,
    copy,
    imagenet_sample,
    max_abs,
    model,
    ops,
    run,
    run_batches,
    tensor,
    vinfo,
)

RNG = np.random.default_rng(0)
UINT8, INT8 = TensorProto.UINT8, TensorProto.INT8


def _qdq_conv(opset: int = 17):  # type: ignore[no-untyped-def]
    """x -Q(zp 128)-DQ- Conv(DQ per-channel W, DQ int32 B) -Q(uint8 zp 0)-DQ- MaxPool -Q-DQ- y.

    Returns the model and the float weights / bias the DQ nodes produce.
    """
    wq = RNG.integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    ws = (RNG.random(4) * 0.01 + 0.005).astype(np.float32)
    x_scale = np.float32(0.02)
    bq = RNG.integers(-500, 500, 4).astype(np.int32)
    inits = [
        tensor("xs", np.array(x_scale)),
        tensor("xz", np.array(128, np.uint8)),
        tensor("wq", wq),
        tensor("ws", ws),
        tensor("wz", np.zeros(4, np.int8)),
        tensor("bq", bq),
        tensor("bs", (x_scale * ws).astype(np.float32)),
        tensor("bz", np.zeros(4, np.int32)),
        tensor("ys", np.array(0.03, np.float32)),
        tensor("yz", np.array(0, np.uint8)),
    ]
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        oh.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
        oh.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["b"], axis=0),
        oh.make_node("Conv", ["xd", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("QuantizeLinear", ["c", "ys", "yz"], ["cq"]),
        oh.make_node("DequantizeLinear", ["cq", "ys", "yz"], ["cd"]),
        oh.make_node("MaxPool", ["cd"], ["p"], kernel_shape=[2, 2]),
        oh.make_node("QuantizeLinear", ["p", "ys", "yz"], ["pq"]),
        oh.make_node("DequantizeLinear", ["pq", "ys", "yz"], ["y"]),
    ]
    m = model(nodes, [vinfo("x", [1, 3, 6, 6])], [vinfo("y", [1, 4, 5, 5])], inits, opset=opset)
    w = dequantize_array(wq, ws, np.zeros(4, np.int8), axis=0)
    b = dequantize_array(bq, x_scale * ws, None, axis=0)
    return m, w, b


def _float_conv_relu_pool(w: np.ndarray, b: np.ndarray):  # type: ignore[no-untyped-def]
    nodes = [
        oh.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2]),
    ]
    return model(
        nodes,
        [vinfo("x", [1, 3, 6, 6])],
        [vinfo("y", [1, 4, 3, 3])],
        [tensor("w", w), tensor("b", b)],
    )


def test_qdq_pairs_removed_and_hidden_relu_kept() -> None:
    m, w, b = _qdq_conv()
    int8 = copy(m)
    p = DequantizePass()
    assert p(m).modified
    # the Q after Conv (uint8, zp 0) clipped negatives: a Relu stands there; MaxPool of a
    # non-negative value needs none, and the input Q (zp 128) clipped nothing.
    assert ops(m) == ["Conv", "Relu", "MaxPool"]
    s = p.stats
    assert s["weights_folded"] == 2 and s["pairs_removed"] == 3 and s["relu_inserted"] == 1
    assert s["qdq_left"] == [] and s["scale_mismatch"] == 0
    x = (RNG.standard_normal((1, 3, 6, 6)) * 0.5).astype(np.float32)  # inside the input range
    # exact against the same network written in float by hand
    assert max_abs(run(_float_conv_relu_pool(w, b), {"x": x}), run(m, {"x": x})) < 1e-5
    # close to the INT8 model: within a few quantization steps (scale 0.03)
    assert max_abs(run(int8, {"x": x}), run(m, {"x": x})) < 0.2
    check(m)


def test_clip_none_is_the_naive_wrong_conversion() -> None:
    m, _, _ = _qdq_conv()
    int8 = copy(m)
    DequantizePass(clip="none")(m)
    assert "Relu" not in ops(m)
    x = RNG.standard_normal((1, 3, 6, 6)).astype(np.float32)
    y = run(m, {"x": x})[0]
    assert (y < 0).any() and (run(int8, {"x": x})[0] >= 0).all()


def test_clip_range_reproduces_saturation() -> None:
    m, _, _ = _qdq_conv()
    int8 = copy(m)
    p = DequantizePass(clip="range")
    p(m)
    # input Q saturates at both ends; conv Q at 0 and at 255 * 0.03; MaxPool keeps that range
    assert ops(m) == ["Clip", "Conv", "Clip", "MaxPool"]
    assert p.stats["clip_inserted"] == 2
    x = (RNG.standard_normal((1, 3, 6, 6)) * 10).astype(np.float32)
    y, ref = run(m, {"x": x})[0], run(int8, {"x": x})[0]
    assert y.max() <= 255 * 0.03 + 1e-6
    assert np.abs(y - ref).max() < 0.2
    check(m)


def test_opset12_model_converted_to_13() -> None:
    m, _, _ = _qdq_conv(opset=12)
    p = DequantizePass()
    p(m)
    assert m.opset_imports[""] == 13 and p.stats["opset"] == "12 -> 13"
    check(m)
    keep, _, _ = _qdq_conv(opset=12)
    DequantizePass(min_opset=0)(keep)
    assert keep.opset_imports[""] == 12


def test_quantized_graph_output_and_constant_q_weights() -> None:
    w = RNG.standard_normal((2, 2)).astype(np.float32)
    nodes = [
        oh.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"]),  # weight stored in float
        oh.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"]),
        oh.make_node("MatMul", ["x", "wd"], ["m"]),
        oh.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
        oh.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"]),  # graph output
    ]
    inits = [
        tensor("w", w),
        tensor("s", np.array(0.05, np.float32)),
        tensor("z", np.array(0, np.int8)),
    ]
    m = model(nodes, [vinfo("x", [1, 2])], [vinfo("y", [1, 2])], inits)
    p = DequantizePass()
    p(m)
    assert ops(m) == ["MatMul"]
    assert [v.name for v in m.graph.outputs] == ["y"]
    expected = dequantize_array(
        quantize_array(w, np.float32(0.05), np.int8(0), qtype=io.ir.DataType.INT8),
        np.float32(0.05),
        None,
    )
    x = np.array([[1.0, -2.0]], np.float32)
    np.testing.assert_allclose(run(m, {"x": x})[0], x @ expected, rtol=1e-6)
    check(m)


def test_dequantize_array_per_tensor_axis_block() -> None:
    q = np.array([[0, 10], [20, 30]], np.uint8)
    np.testing.assert_allclose(
        dequantize_array(q, np.float32(0.5), np.uint8(10)), [[-5, 0], [5, 10]]
    )
    got = dequantize_array(q, np.array([1.0, 2.0], np.float32), np.array([0, 10], np.uint8), axis=0)
    np.testing.assert_allclose(got, [[0, 10], [20, 40]])
    blocked = dequantize_array(
        np.arange(6, dtype=np.int8).reshape(1, 6),
        np.array([[1.0, 10.0]], np.float32),
        None,
        axis=1,
        block_size=3,
    )
    np.testing.assert_allclose(blocked, [[0, 1, 2, 30, 40, 50]])
    q8 = quantize_array(
        np.array([-1.0, 0.25, 100.0]), np.float32(0.5), np.int8(0), qtype=io.ir.DataType.INT8
    )
    assert q8.tolist() == [-2, 0, 127]  # round half to even, saturate


def _float_model(tmp_path):  # type: ignore[no-untyped-def]
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("Add", ["r", "r"], ["a"]),
        oh.make_node("GlobalAveragePool", ["a"], ["g"]),
        oh.make_node("Flatten", ["g"], ["f"]),
        oh.make_node("Gemm", ["f", "G", "Gb"], ["gm"], transB=1),
        oh.make_node("MatMul", ["gm", "M"], ["y"]),
    ]
    inits = [
        tensor("W", RNG.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3),
        tensor("B", RNG.standard_normal(8).astype(np.float32) * 0.1),
        tensor("G", RNG.standard_normal((6, 8)).astype(np.float32)),
        tensor("Gb", RNG.standard_normal(6).astype(np.float32)),
        tensor("M", RNG.standard_normal((6, 5)).astype(np.float32)),
    ]
    m = model(nodes, [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 5])], inits)
    path = tmp_path / "float.onnx"
    io.save(m, path)
    return m, path


@pytest.mark.parametrize("fmt", ["QOperator", "QDQ"])
def test_ort_static_int8_back_to_float(tmp_path, fmt: str) -> None:  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import QuantFormat, quantize_static

    fm, path = _float_model(tmp_path)
    qpath = tmp_path / "q.onnx"
    quantize_static(
        str(path), str(qpath), NoiseReader(), quant_format=QuantFormat[fmt], per_channel=True
    )
    q = io.load(qpath)
    if fmt == "QOperator":
        assert {"QLinearConv", "QLinearAdd", "QGemm", "QLinearMatMul"} <= set(ops(q))
    else:
        assert {"QuantizeLinear", "DequantizeLinear", "Conv", "Gemm"} <= set(ops(q))
    int8 = copy(q)
    p = DequantizePass()
    p(q)
    assert not [
        o
        for o in ops(q)
        if o.startswith("QLinear") or o in ("QGemm", "QuantizeLinear", "DequantizeLinear")
    ]
    assert p.stats["unsupported"] == [] and p.stats["qdq_left"] == []
    if fmt == "QOperator":
        converted = set(p.stats["qoperator_converted"])  # type: ignore[arg-type]
        assert converted >= {"QLinearConv", "QLinearAdd", "QGemm", "QLinearMatMul"}
        # the float op takes the QOperator node's name and says where it came from
        qnames = {n.name for n in int8.graph if n.op_type in ("QLinearConv", "QGemm")}
        float_ops = {n.name: n for n in q.graph if n.op_type in ("Conv", "Gemm")}
        assert qnames <= set(float_ops)
        assert all(float_ops[n].metadata_props["onnxfit:from"] == n for n in qnames)
    x = np.random.default_rng(2).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref, got, i8 = run(fm, {"x": x})[0], run(q, {"x": x})[0], run(int8, {"x": x})[0]
    scale = float(np.abs(ref).max())
    assert np.abs(got - ref).max() < 0.1 * scale  # the float net, up to weight rounding
    assert np.abs(got - i8).max() < 0.1 * scale  # and the INT8 model, up to activation rounding
    check(q, full=False)


def test_dynamic_integer_ops_back_to_float(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from onnxruntime.quantization import quantize_dynamic

    fm, path = _float_model(tmp_path)
    dpath = tmp_path / "dyn.onnx"
    quantize_dynamic(str(path), str(dpath), op_types_to_quantize=["Conv", "MatMul"])
    d = io.load(dpath)
    assert {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"} <= set(ops(d))
    p = DequantizePass()
    p(d)
    assert not {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "Cast"} & set(ops(d))
    # Conv -> ConvInteger; MatMul and the Gemm (written as MatMul + Add) -> MatMulInteger
    assert p.stats["qoperator_converted"] == {"ConvInteger": 1, "MatMulInteger": 2}
    x = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    ref, got = run(fm, {"x": x})[0], run(d, {"x": x})[0]
    assert np.abs(got - ref).max() < 0.05 * float(np.abs(ref).max())
    check(d)


@pytest.mark.needs_data
@pytest.mark.slow
def test_shufflenet_qdq_dequantized_accuracy(shared_data) -> None:  # type: ignore[no-untyped-def]
    """FP32 from the zoo INT8 ShuffleNetV2 against it on the 500-image sample (top-1)."""
    path = shared_data / "models" / "shufflenet-v2-12-qdq.onnx"
    int8 = io.load(path)
    m = io.load(path)
    p = DequantizePass()
    p(m)
    assert p.stats["relu_inserted"] == 37 and p.stats["qdq_left"] == []
    assert not {"QuantizeLinear", "DequantizeLinear"} & set(ops(m))
    check(m)
    ranged = io.load(path)
    DequantizePass(clip="range")(ranged)
    x, y = imagenet_sample(str(shared_data))
    top_int8 = run_batches(int8, x).argmax(1)
    top_fp32 = run_batches(m, x).argmax(1)
    top_range = run_batches(ranged, x).argmax(1)
    acc_int8, acc_fp32 = (top_int8 == y).mean() * 100, (top_fp32 == y).mean() * 100
    assert abs(acc_int8 - shufflenet_qdq_top1()) < 0.01  # SOURCES.md's figure on a VNNI CPU
    # measured 78.6 % (+0.8 over the INT8 model's 77.8 % where ORT's int8 kernels do not
    # saturate): the float model drops the activation rounding, so it is not worse
    assert -0.5 <= acc_fp32 - 77.8 <= 1.5
    assert acc_fp32 >= acc_int8 - 0.5
    # keeping the saturation too (clip="range"): measured 78.4 %
    assert -0.5 <= (top_range == y).mean() * 100 - 77.8 <= 1.5
    if acc_int8 > 77:  # the INT8 kernels agree with the float math (VNNI): measured 94.6 %
        assert (top_int8 == top_fp32).mean() > 0.9
        assert (top_int8 == top_range).mean() > 0.9
    assert (top_fp32 == top_range).mean() > 0.9  # the two float forms agree (saturation aside)
    # and a naive removal of the Q/DQ pairs (no Relu) would be useless
    naive = io.load(path)
    DequantizePass(clip="none")(naive)
    assert (run_batches(naive, x[:20]).argmax(1) == y[:20]).mean() < 0.2
