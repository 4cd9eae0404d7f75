"""fp16: weights and activations to float16, float32 kept where it must, no redundant Casts."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh

from onnxfit import io
from onnxfit.passes.dequantize import DequantizePass
from onnxfit.passes.fp16 import F16, F32, Fp16Pass, remove_redundant_casts, to_fp16_array
from passes_util import (
    check,
    copy,
    imagenet_sample,
    model,
    ops,
    run,
    run_batches,
    tensor,
    vinfo,
)

RNG = np.random.default_rng(0)
SHAPE = [1, 3, 4, 4]


def _conv_resize():  # type: ignore[no-untyped-def]
    """Conv -> Relu -> Resize(x2, scales from an initializer) -> Add(bias) -> y."""
    nodes = [
        oh.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("Relu", ["c"], ["r"], name="relu"),
        oh.make_node("Resize", ["r", "", "scales"], ["u"], mode="linear", name="resize"),
        oh.make_node("Add", ["u", "bias"], ["y"], name="add"),
    ]
    inits = [
        tensor("W", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        tensor("B", RNG.standard_normal(4).astype(np.float32)),
        tensor("scales", np.array([1, 1, 2, 2], np.float32)),
        tensor("bias", np.array(0.5, np.float32)),
    ]
    return model(nodes, [vinfo("x", SHAPE)], [vinfo("y", [1, 4, 8, 8])], inits)


def _dtype(m: ir.Model, name: str) -> ir.DataType | None:
    for v in [*m.graph.inputs, *m.graph.outputs, *m.graph.initializers.values()]:
        if v.name == name:
            return v.dtype
    for n in m.graph:
        for v in n.outputs:
            if v.name == name:
                return v.dtype
    raise KeyError(name)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    scale = max(1.0, float(np.abs(a).max()))
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).max()) < 1e-2 * scale


def test_fp16_keep_io_types() -> None:
    m = _conv_resize()
    ref = copy(m)
    p = Fp16Pass()
    assert p(m).modified
    assert ops(m) == ["Cast", "Conv", "Relu", "Resize", "Add", "Cast"]  # one Cast each side
    assert _dtype(m, "x") == F32 and _dtype(m, "y") == F32
    assert _dtype(m, "W") == F16 and _dtype(m, "B") == F16 and _dtype(m, "bias") == F16
    assert _dtype(m, "scales") == F32  # Resize scales: float32 only
    assert p.stats["casts_inserted"] == 2 and p.stats["nodes_fp16"] == 4
    assert p.stats["weights_converted"] == 3
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    (a,), (b,) = run(ref, {"x": x}), run(m, {"x": x})
    assert b.dtype == np.float32 and _close(a, b)
    check(m)


def test_fp16_io_float16() -> None:
    m = _conv_resize()
    ref = copy(m)
    Fp16Pass(keep_io_types=False)(m)
    assert "Cast" not in ops(m)
    assert _dtype(m, "x") == F16 and _dtype(m, "y") == F16
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    (a,), (b,) = run(ref, {"x": x}), run(m, {"x": x.astype(np.float16)})
    assert b.dtype == np.float16 and _close(a, b)
    check(m)


def test_block_list_keeps_node_float32_with_boundary_casts() -> None:
    m = _conv_resize()
    ref = copy(m)
    p = Fp16Pass(block_list={"relu"})
    p(m)
    assert ops(m) == ["Cast", "Conv", "Cast", "Relu", "Cast", "Resize", "Add", "Cast"]
    assert _dtype(m, "r") == F32 and _dtype(m, "c") == F16
    assert p.stats["nodes_fp32"] == ["relu"] and p.stats["kept_reasons"] == {"block_list": 1}
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    assert _close(run(ref, {"x": x})[0], run(m, {"x": x})[0])
    check(m)


def test_shape_subgraph_and_fp32_only_ops_stay_float32() -> None:
    """scales = Concat([1, 1], Cast(Shape(x)[2:]) / 2): a float subgraph feeding Resize scales."""
    nodes = [
        oh.make_node("Shape", ["x"], ["sh"], name="shape"),
        oh.make_node("Slice", ["sh", "s2", "s4"], ["hw"], name="slice"),
        oh.make_node("Cast", ["hw"], ["hwf"], to=TensorProto.FLOAT, name="cast"),
        oh.make_node("Div", ["hwf", "two"], ["half"], name="div"),
        oh.make_node("Concat", ["ones", "half"], ["scales"], axis=0, name="concat"),
        oh.make_node("Resize", ["x", "", "scales"], ["u"], mode="nearest", name="resize"),
        oh.make_node("Range", ["r0", "r1", "r2"], ["rg"], name="range"),  # no float16 Range
        oh.make_node("Mul", ["u", "rg"], ["y"], name="mul"),
    ]
    inits = [
        tensor("s2", np.array([2], np.int64)),
        tensor("s4", np.array([4], np.int64)),
        tensor("two", np.array(2.0, np.float32)),
        tensor("ones", np.ones(2, np.float32)),
        tensor("r0", np.array(0.0, np.float32)),
        tensor("r1", np.array(8.0, np.float32)),
        tensor("r2", np.array(1.0, np.float32)),
    ]
    m = model(nodes, [vinfo("x", [1, 1, 4, 4])], [vinfo("y", [1, 1, 8, 8])], inits)
    ref = copy(m)
    p = Fp16Pass()
    p(m)
    kept = p.stats["nodes_fp32"]
    assert {"cast", "div", "concat", "range"} <= set(kept)  # type: ignore[arg-type]
    assert _dtype(m, "scales") == F32 and _dtype(m, "rg") == F32 and _dtype(m, "u") == F16
    x = RNG.standard_normal((1, 1, 4, 4)).astype(np.float32)
    assert _close(run(ref, {"x": x})[0], run(m, {"x": x})[0])
    check(m)


def test_initializer_shared_by_fp16_and_fp32_users_is_copied() -> None:
    nodes = [
        oh.make_node("Mul", ["x", "c"], ["m"], name="mul"),
        oh.make_node("Add", ["m", "c"], ["y"], name="add"),
    ]
    m = model(nodes, [vinfo("x", [2])], [vinfo("y", [2])], [tensor("c", np.array([3.0, 1e5]))])
    m.graph.initializers["c"].const_value = ir.tensor(np.array([3.0, 1e5], np.float32), name="c")
    m.graph.initializers["c"].dtype = F32
    p = Fp16Pass(block_list={"add"})
    p(m)
    assert _dtype(m, "c") == F32 and _dtype(m, "c_fp16") == F16
    assert p.stats["weights_clamped"] == 1  # 1e5 > 65504
    check(m)


def test_no_redundant_casts() -> None:
    nodes = [
        oh.make_node("Cast", ["x"], ["x32"], to=TensorProto.FLOAT, name="noop"),  # float -> float
        oh.make_node("Relu", ["x32"], ["y"], name="relu"),
    ]
    m = model(nodes, [vinfo("x", [3])], [vinfo("y", [3])])
    Fp16Pass()(m)
    assert ops(m) == ["Cast", "Relu", "Cast"]
    check(m)
    # the lossless round trip fp16 -> fp32 -> fp16 goes, fp32 -> fp16 -> fp32 stays
    nodes = [
        oh.make_node("Cast", ["h"], ["up"], to=TensorProto.FLOAT, name="up"),
        oh.make_node("Cast", ["up"], ["down"], to=TensorProto.FLOAT16, name="down"),
        oh.make_node("Neg", ["down"], ["y"], name="neg"),
        oh.make_node("Cast", ["f"], ["f16"], to=TensorProto.FLOAT16, name="f16"),
        oh.make_node("Cast", ["f16"], ["f32"], to=TensorProto.FLOAT, name="f32"),
        oh.make_node("Neg", ["f32"], ["z"], name="neg2"),
    ]
    h = TensorProto.FLOAT16
    m = model(nodes, [vinfo("h", [3], h), vinfo("f", [3])], [vinfo("y", [3], h), vinfo("z", [3])])
    assert remove_redundant_casts(m) == 1
    ir.passes.common.RemoveUnusedNodesPass()(m)
    assert ops(m) == ["Neg", "Cast", "Cast", "Neg"]
    check(m)


def test_to_fp16_array_counts() -> None:
    out, clamped, under = to_fp16_array(np.array([1e6, -1e6, 1e-9, 0.0, np.inf, 1.0], np.float32))
    assert out.dtype == np.float16 and clamped == 2 and under == 1
    assert out[0] == 65504 and out[1] == -65504 and np.isinf(out[4])


@pytest.mark.needs_data
@pytest.mark.slow
def test_shufflenet_fp16_matches_fp32(shared_data) -> None:  # type: ignore[no-untyped-def]
    """FP16 of the dequantized ShuffleNetV2: top-1 within 0.2 pt, >= 99 % agreement (500 images)."""
    fp32 = io.load(shared_data / "models" / "shufflenet-v2-12-qdq.onnx")
    DequantizePass()(fp32)
    fp16 = copy(fp32)
    Fp16Pass()(fp16)
    check(fp16)
    assert sum(v.dtype == F16 for v in fp16.graph.initializers.values()) > 100
    x, y = imagenet_sample(str(shared_data))
    top32, top16 = run_batches(fp32, x).argmax(1), run_batches(fp16, x).argmax(1)
    acc32, acc16 = (top32 == y).mean() * 100, (top16 == y).mean() * 100
    assert abs(acc16 - acc32) <= 0.2  # measured: 78.6 % and 78.6 %
    assert (top16 == top32).mean() >= 0.99  # measured: 100 %


@pytest.mark.needs_data
@pytest.mark.slow
def test_yolox_fp16_outputs_agree(shared_data) -> None:  # type: ignore[no-untyped-def]
    """YOLOX-Nano FP16 vs FP32 on 16 COCO images: scores close, same top box per image."""
    from onnxfit.data.images import list_images, preprocess

    fp32 = io.load(shared_data / "models" / "yolox_nano.onnx")
    fp16 = copy(fp32)
    p = Fp16Pass()
    p(fp16)
    assert p.stats["nodes_fp32"] == []
    check(fp16)
    paths = list_images(shared_data / "coco-sample" / "images" / "val2017")[:16]
    x = np.stack([preprocess(path, "yolox") for path in paths])
    a, b = run_batches(fp32, x), run_batches(fp16, x)
    scores_a, scores_b = a[..., 4:5] * a[..., 5:], b[..., 4:5] * b[..., 5:]
    assert float(np.abs(scores_a - scores_b).max()) < 0.1  # measured 0.074 on these images
    best_a = scores_a.reshape(len(x), -1).argmax(1)
    best_b = scores_b.reshape(len(x), -1).argmax(1)
    assert (best_a == best_b).all()  # same anchor and class for the top box of every image
    anchor = best_a // 80
    boxes_a = a[np.arange(len(x)), anchor, :4]
    boxes_b = b[np.arange(len(x)), anchor, :4]
    assert float(np.abs(boxes_a - boxes_b).max()) < 0.05  # grid units (dx, dy, log w, log h)


def test_contrib_op_stays_float32_and_the_rest_converts() -> None:
    from onnxfit.passes.fuse import FusePass

    nodes = [
        oh.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        oh.make_node("Sigmoid", ["c"], ["s"], name="sig"),
        oh.make_node("Mul", ["s", "k"], ["y"], name="mul"),
    ]
    inits = [
        tensor("W", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)),
        tensor("k", np.array(3.0, np.float32)),
    ]
    m = model(nodes, [vinfo("x", SHAPE)], [vinfo("y", [1, 4, 4, 4])], inits)
    ref = copy(m)
    FusePass(emit="fusedconv")(m)
    p = Fp16Pass()
    p(m)
    assert ops(m) == ["FusedConv", "Cast", "Mul", "Cast"]
    assert p.stats["kept_reasons"] == {"not ONNX domain": 1}
    assert _dtype(m, "W") == F32 and _dtype(m, "k") == F16
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    assert _close(run(ref, {"x": x})[0], run(m, {"x": x})[0])
    check(m, full=False)
