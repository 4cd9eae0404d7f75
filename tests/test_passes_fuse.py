"""fuse: Conv/Gemm + activation counted (portable) or written as com.microsoft FusedConv/Gemm."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper as oh

from onnxfit.passes.fuse import FusePass
from passes_util import check, copy, max_abs, model, ops, run, tensor, vinfo

RNG = np.random.default_rng(0)
SHAPE = [1, 3, 5, 5]
OUT = [1, 4, 5, 5]


def _conv_act(act: str, **attrs: float) -> tuple:  # type: ignore[type-arg]
    inits = [tensor("W", RNG.standard_normal((4, 3, 3, 3)).astype(np.float32))]
    act_in = ["c"]
    if act == "Clip":
        inits += [tensor("lo", np.array(-0.5, np.float32)), tensor("hi", np.array(0.7, np.float32))]
        act_in += ["lo", "hi"]
    nodes = [
        oh.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node(act, act_in, ["y"], **attrs),
    ]
    return nodes, inits


ACTS = [
    ("Relu", {}),
    ("Sigmoid", {}),
    ("Tanh", {}),
    ("LeakyRelu", {"alpha": 0.2}),
    ("Clip", {}),
    ("HardSigmoid", {"alpha": 0.3, "beta": 0.4}),
]


@pytest.mark.parametrize(("act", "attrs"), ACTS)
def test_conv_activation_fused_cpu(act: str, attrs: dict) -> None:  # type: ignore[type-arg]
    nodes, inits = _conv_act(act, **attrs)
    m = model(nodes, [vinfo("x", SHAPE)], [vinfo("y", OUT)], inits)
    ref = copy(m)
    p = FusePass(emit="fusedconv")
    assert p(m).modified
    assert ops(m) == ["FusedConv"]
    assert p.stats["fused"] == 1 and p.stats["fusable"] == {f"Conv+{act}": 1}
    assert m.graph.node(0).domain == "com.microsoft"
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    assert max_abs(run(ref, {"x": x}), run(m, {"x": x})) < 1e-5
    check(m, full=False)  # full_check has no schema for com.microsoft ops


def test_default_is_portable_count_only() -> None:
    nodes, inits = _conv_act("Relu")
    m = model(nodes, [vinfo("x", SHAPE)], [vinfo("y", OUT)], inits)
    p = FusePass()
    assert not p(m).modified
    assert ops(m) == ["Conv", "Relu"]
    assert p.stats == {"fusable": {"Conv+Relu": 1}, "emit": "none", "fused": 0}
    assert p.is_portable and not FusePass(emit="fusedconv").is_portable
    check(m)


def test_gemm_fused_cpu_and_cuda_only_conv_relu() -> None:
    nodes, inits = _conv_act("Sigmoid")
    nodes += [
        oh.make_node("Flatten", ["y"], ["f"]),
        oh.make_node("Gemm", ["f", "G", "Gb"], ["g"], transB=1),
        oh.make_node("LeakyRelu", ["g"], ["z"], alpha=0.1),
    ]
    inits += [
        tensor("G", RNG.standard_normal((10, 100)).astype(np.float32)),
        tensor("Gb", RNG.standard_normal(10).astype(np.float32)),
    ]
    m = model(nodes, [vinfo("x", SHAPE)], [vinfo("z", [1, 10])], inits)
    cuda = copy(m)
    ref = copy(m)
    p = FusePass(emit="fusedconv", provider="cpu")
    p(m)
    assert ops(m) == ["FusedConv", "Flatten", "FusedGemm"]
    x = RNG.standard_normal(SHAPE).astype(np.float32)
    assert max_abs(run(ref, {"x": x}), run(m, {"x": x})) < 1e-4
    q = FusePass(emit="fusedconv", provider="cuda")
    assert not q(cuda).modified  # the CUDA FusedConv kernel takes Relu only
    assert q.stats["fusable"] == {"Conv+Sigmoid": 1, "Gemm+LeakyRelu": 1}


def test_not_fused_when_conv_output_shared_or_clip_dynamic() -> None:
    nodes, inits = _conv_act("Relu")
    nodes.append(oh.make_node("Neg", ["c"], ["n"]))  # conv output read twice
    nodes += [
        oh.make_node("Conv", ["x", "W"], ["c2"], pads=[1, 1, 1, 1]),
        oh.make_node("Clip", ["c2", "lo_in"], ["y2"]),  # bound is a graph input
    ]
    m = model(
        nodes,
        [vinfo("x", SHAPE), vinfo("lo_in", [])],
        [vinfo("y", OUT), vinfo("n", OUT), vinfo("y2", OUT)],
        inits,
    )
    p = FusePass(emit="fusedconv")
    assert not p(m).modified
    assert p.stats["fusable"] == {}
    assert "FusedConv" not in ops(m)
    check(m)
