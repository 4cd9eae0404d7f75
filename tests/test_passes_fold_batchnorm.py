"""fold-batchnorm: BN into Conv / Gemm (transB 0 and 1) / ConvTranspose, refused when shared."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as oh

from onnxfit.passes.fold_batchnorm import FoldBatchNormPass
from passes_util import check, copy, max_abs, model, ops, run, tensor, vinfo

RNG = np.random.default_rng(0)


def _bn(prefix: str, c: int) -> list:  # type: ignore[type-arg]
    return [
        tensor(prefix + "g", (RNG.random(c) + 0.5).astype(np.float32)),
        tensor(prefix + "b", RNG.standard_normal(c).astype(np.float32)),
        tensor(prefix + "m", RNG.standard_normal(c).astype(np.float32)),
        tensor(prefix + "v", (RNG.random(c) + 0.1).astype(np.float32)),
    ]


def _bn_node(x: str, prefix: str, y: str):  # type: ignore[no-untyped-def]
    return oh.make_node(
        "BatchNormalization",
        [x, prefix + "g", prefix + "b", prefix + "m", prefix + "v"],
        [y],
        epsilon=1e-3,
    )


@pytest.mark.parametrize("bias", [True, False])
def test_conv_bn_folded(bias: bool) -> None:
    inits = [tensor("W", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)), *_bn("a", 4)]
    conv_in = ["x", "W"]
    if bias:
        inits.append(tensor("B", RNG.standard_normal(4).astype(np.float32)))
        conv_in.append("B")
    m = model(
        [oh.make_node("Conv", conv_in, ["c"], pads=[1, 1, 1, 1]), _bn_node("c", "a", "y")],
        [vinfo("x", [2, 3, 6, 6])],
        [vinfo("y", [2, 4, 6, 6])],
        inits,
    )
    ref = copy(m)
    p = FoldBatchNormPass()
    assert p(m).modified
    assert ops(m) == ["Conv"]
    assert p.stats["folded"] == {"Conv": 1} and p.stats["batchnorm_left"] == []
    x = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
    a, b = run(ref, {"x": x}), run(m, {"x": x})
    assert max_abs(a, b) < 1e-4 * max(1.0, float(np.abs(a[0]).max()))
    check(m)
    assert all(
        v.dtype is not None and v.dtype.name == "FLOAT" for v in m.graph.initializers.values()
    )


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_bn_folded(trans_b: int) -> None:
    w = RNG.standard_normal((5, 8) if trans_b else (8, 5)).astype(np.float32)
    nodes = [
        oh.make_node("Gemm", ["x", "W", "C"], ["g"], transB=trans_b, beta=0.5, alpha=2.0),
        _bn_node("g", "a", "y"),
    ]
    inits = [tensor("W", w), tensor("C", RNG.standard_normal(5).astype(np.float32)), *_bn("a", 5)]
    m = model(nodes, [vinfo("x", [3, 8])], [vinfo("y", [3, 5])], inits)
    ref = copy(m)
    FoldBatchNormPass()(m)
    assert ops(m) == ["Gemm"]
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    a, b = run(ref, {"x": x}), run(m, {"x": x})
    assert max_abs(a, b) < 1e-4 * max(1.0, float(np.abs(a[0]).max()))
    check(m)


def test_conv_transpose_bn_folded() -> None:
    nodes = [
        oh.make_node("ConvTranspose", ["x", "W"], ["c"], group=2, strides=[2, 2]),
        _bn_node("c", "a", "y"),
    ]
    inits = [tensor("W", RNG.standard_normal((4, 3, 2, 2)).astype(np.float32)), *_bn("a", 6)]
    m = model(nodes, [vinfo("x", [1, 4, 3, 3])], [vinfo("y", [1, 6, 6, 6])], inits)
    ref = copy(m)
    FoldBatchNormPass()(m)
    assert ops(m) == ["ConvTranspose"]
    x = RNG.standard_normal((1, 4, 3, 3)).astype(np.float32)
    assert max_abs(run(ref, {"x": x}), run(m, {"x": x})) < 1e-4
    check(m)


def test_bn_kept_when_conv_output_shared_or_no_producer() -> None:
    nodes = [
        oh.make_node("Conv", ["x", "W"], ["c"]),
        _bn_node("c", "a", "y"),
        oh.make_node("Relu", ["c"], ["r"]),  # second consumer of the conv output
        _bn_node("x", "b", "z"),  # BN on a graph input: nothing to fold into
    ]
    inits = [tensor("W", RNG.standard_normal((3, 3, 1, 1)).astype(np.float32))]
    inits += _bn("a", 3) + _bn("b", 3)
    shape = [1, 3, 4, 4]
    m = model(nodes, [vinfo("x", shape)], [vinfo(n, shape) for n in "yrz"], inits)
    ref = copy(m)
    p = FoldBatchNormPass()
    assert not p(m).modified
    assert ops(m) == ops(ref)
    assert len(p.stats["batchnorm_left"]) == 2  # type: ignore[arg-type]
    x = RNG.standard_normal(shape).astype(np.float32)
    assert max_abs(run(ref, {"x": x}), run(m, {"x": x})) == 0.0
    check(m)


def test_folded_conv_keeps_its_name_and_says_what_it_came_from() -> None:
    inits = [tensor("W", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)), *_bn("a", 4)]
    conv = oh.make_node("Conv", ["x", "W"], ["c"], name="layer4.0.conv1", pads=[1, 1, 1, 1])
    bn = _bn_node("c", "a", "y")
    bn.name = "layer4.0.bn1"
    m = model([conv, bn], [vinfo("x", [1, 3, 6, 6])], [vinfo("y", [1, 4, 6, 6])], inits)
    assert FoldBatchNormPass()(m).modified
    [node] = list(m.graph)
    assert node.op_type == "Conv" and node.name == "layer4.0.conv1"
    assert node.metadata_props["onnxfit:from"] == "layer4.0.conv1 + layer4.0.bn1"
