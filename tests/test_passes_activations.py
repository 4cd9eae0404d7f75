"""Activation statistics and the fp16 risk ranking behind the automatic block list."""

from __future__ import annotations

import numpy as np
from onnx import helper as oh

from onnxfit.passes.activations import (
    ActivationStats,
    activation_stats,
    collect_activations,
    fp16_risk_nodes,
)
from onnxfit.passes.fp16 import Fp16Pass
from passes_util import copy, model, run, tensor, vinfo


def _overflowing():  # type: ignore[no-untyped-def]
    """y = (x * 1e5) * 1e-5 + tiny: the Mul output leaves float16's range; z underflows."""
    nodes = [
        oh.make_node("Relu", ["x"], ["r"], name="relu"),
        oh.make_node("Mul", ["r", "big"], ["m"], name="scale_up"),
        oh.make_node("Mul", ["m", "small"], ["y"], name="scale_down"),
        oh.make_node("Mul", ["x", "tiny"], ["z"], name="tiny"),
    ]
    inits = [
        tensor("big", np.array(1e5, np.float32)),
        tensor("small", np.array(1e-5, np.float32)),
        tensor("tiny", np.array(1e-10, np.float32)),
    ]
    return model(nodes, [vinfo("x", [1, 8])], [vinfo("y", [1, 8]), vinfo("z", [1, 8])], inits)


def test_collect_and_stats_agree() -> None:
    m = _overflowing()
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 8)).astype(np.float32) + 1.0} for _ in range(3)]
    acts = collect_activations(m, feeds[0])
    assert set(acts) == {"r", "m", "y", "z"}
    stats = activation_stats(m, feeds)
    assert set(stats) == set(acts)
    expected = max(float(np.abs(f["x"]).max()) for f in feeds) * 1e5
    assert abs(stats["m"].max_abs - expected) / expected < 1e-6
    assert stats["m"].node == "scale_up" and stats["m"].op_type == "Mul"
    assert stats["z"].underflow_fraction == 1.0
    assert stats["r"].to_dict()["underflow_fraction"] == 0.0


def test_risk_ranking_overflow_then_underflow() -> None:
    m = _overflowing()
    x = np.full((1, 8), 2.0, np.float32)
    risks = fp16_risk_nodes(m, collect_activations(m, {"x": x}))
    assert [(r.node, r.reason) for r in risks] == [
        ("scale_up", "overflow"),
        ("scale_down", "reads-overflow"),
        ("tiny", "underflow"),
    ]
    assert risks[0].max_abs == 2e5 and risks[0].to_dict()["value"] == "m"
    # the same ranking from streamed statistics
    st = activation_stats(m, [{"x": x}])
    assert [r.node for r in fp16_risk_nodes(m, st)] == [r.node for r in risks]
    assert isinstance(next(iter(st.values())), ActivationStats)


def test_blocking_the_risky_nodes_fixes_fp16() -> None:
    m = _overflowing()
    x = np.full((1, 8), 2.0, np.float32)
    ref = run(m, {"x": x})[0]
    naive = copy(m)
    Fp16Pass()(naive)
    # 1e5 is clamped to 65504 and 2e5 overflows in float16 (ORT's CPU may compute the Mul in
    # float32 after its own Casts, giving 1.31 instead of inf): wrong either way
    bad = run(naive, {"x": x})[0]
    assert not np.allclose(bad, ref, rtol=0.1)
    blocked = copy(m)
    risky = [r.node for r in fp16_risk_nodes(m, collect_activations(m, {"x": x}))]
    Fp16Pass(block_list=risky)(blocked)
    got = run(blocked, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3)
