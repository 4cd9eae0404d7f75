"""Measured per-layer allocation: curves of model-output error, convex hulls, exact counts."""

from __future__ import annotations

import numpy as np
import pytest

from onnxfit.pruning import allocation as al
from onnxfit.pruning import measured
from onnxfit.pruning.reconstruct import ReconstructPrunePass
from onnxfit.verify.runner import run_all
from passes_util import copy
from test_prune_reconstruct import _net


def test_lower_hull_drops_points_above_the_chord() -> None:
    pts = [(0, 0.0), (10, 5.0), (20, 2.0), (30, 6.0), (40, 20.0)]
    assert measured.lower_hull(pts) == [(0, 0.0), (20, 2.0), (30, 6.0), (40, 20.0)]
    assert measured.lower_hull([(5, 0.0)]) == [(5, 0.0)]


def test_allocate_is_exact_and_takes_the_cheapest_error_per_weight_first() -> None:
    cheap = [(0, 0.0), (100, 1.0), (200, 10.0)]  # slopes 0.01, 0.09
    dear = [(10, 0.0), (60, 2.5), (110, 5.0)]  # slope 0.05 (10 already zero)
    caps = {"cheap": 250, "dear": 150}
    got = measured.allocate({"cheap": cheap, "dear": dear}, 150, caps)
    assert got == {"cheap": 100, "dear": 50}  # 10 zeros + 40 of the 0.05 segment
    got = measured.allocate({"cheap": cheap, "dear": dear}, 300, caps)
    assert got == {"cheap": 190, "dear": 110}  # 0.01, then 0.05, then 90 of the 0.09 one
    # past the curves: filled up to the caps, exact
    got = measured.allocate({"cheap": cheap, "dear": dear}, 380, caps)
    assert sum(got.values()) == 380 and got["cheap"] <= 250 and got["dear"] <= 150
    with pytest.raises(ValueError, match="caps"):
        measured.allocate({"cheap": cheap, "dear": dear}, 401, caps)


def test_curve_counts_start_past_the_zeros_and_respect_the_cap() -> None:
    got = measured.curve_counts(1000, 200, 950)
    assert got[0] == 200 + round(0.1 * 800) and got == sorted(set(got)) and got[-1] <= 950
    assert measured.curve_counts(100, 0, 30) == [10, 20, 30]


def test_relative_change() -> None:
    base = {"y": np.array([3.0, 4.0])}
    assert al.relative_change(base, {"y": np.array([3.0, 4.0])}) == 0.0
    assert al.relative_change(base, {"y": np.array([3.0, 9.0])}) == pytest.approx(1.0)
    assert al.relative_change(base, {"y": np.array([np.nan, 4.0])}) == float("inf")


def test_measured_allocation_is_exact_and_no_worse_than_row_shares(rng) -> None:
    """Exact counts, and on the calibration data the model's output moves no more than with the
    row-share allocation (the curves measure that very error)."""
    m = _net(rng, groups=1)
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    n = 16 * 8 * 9 + 16 * 16 * 9
    p = ReconstructPrunePass(
        sparsity=0.4, method="reconstruct", feeds=[{"x": x}], allocation="measured"
    )
    c = copy(m)
    p(c)
    assert p.stats["weights_pruned"] == round(0.4 * n)
    per = {t.name: t.pruned for t in p.tensors}
    assert sum(per.values()) == round(0.4 * n)
    out = run_all(c, x)["y"]
    assert np.all(np.isfinite(out))
    # against the row-share allocation on the same data: no worse on the calibration outputs
    o = ReconstructPrunePass(sparsity=0.4, method="reconstruct", feeds=[{"x": x}])
    c2 = copy(m)
    o(c2)
    dense = run_all(m, x)["y"]
    err = al.relative_change({"y": dense}, {"y": out})
    err2 = al.relative_change({"y": dense}, {"y": run_all(c2, x)["y"]})
    assert err <= err2 * 1.5


def test_every_curve_level_starts_from_the_dense_weights(rng) -> None:
    """``curves`` writes each level into the model before running it; the next level must not
    start from that (it did: OBS read the layer's current, already pruned weight)."""
    import onnx_ir as ir

    from onnxfit.pruning.activations import layer_hessian
    from onnxfit.pruning.reconstruct import layers_of
    from onnxfit.pruning.unstructured import find_weights

    m = _net(rng, groups=1)
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    refs, _ = find_weights(m)
    layers = layers_of(refs)
    ref = refs[0]
    h = layer_hessian(m, layers[ref.name], [{"x": x}], max_rows_per_sample=2048)
    want = measured._pruner(ref, layers[ref.name], h, 0.1, 128)(700)
    prune = measured._pruner(ref, layers[ref.name], h, 0.1, 128)
    ref.value.const_value = ir.tensor(prune(300), name=ref.name)  # as curves() does
    np.testing.assert_array_equal(prune(700), want)
