"""Accuracy budget for pruning: the sensitivity scan and the per-layer ratios it leads to."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from onnxfit.errors import InputError
from onnxfit.pruning import budget as pruning
from onnxfit.verify.runner import run_all
from test_prune import _net as prune_net
from test_prune_channels import _resnet_like


def _sparsity(m: ir.Model, name: str) -> float:
    a = m.graph.initializers[name].const_value.numpy()
    return float(np.mean(a == 0))


def _fake_metric() -> pruning.Metric:
    """100 points minus 2 per unit sparsity of w1 and 20 per unit sparsity of w2 (additive)."""
    return pruning.Metric(
        "fake", lambda m: 100.0 - 2.0 * _sparsity(m, "w1") - 20.0 * _sparsity(m, "w2")
    )


def test_scan_table_and_budget_choice(rng):
    m = prune_net(rng)
    scan = pruning.sensitivity_scan(m, _fake_metric(), kind="unstructured")
    assert [r.layer for r in scan.rows] == ["w1", "w2"] and scan.baseline == 100.0
    drops = {r.layer: r.drops(scan.baseline) for r in scan.rows}
    np.testing.assert_allclose(drops["w1"], [0.6, 1.0, 1.4, 1.8], atol=0.01)
    np.testing.assert_allclose(drops["w2"], [6, 10, 14, 18], atol=0.1)
    result = pruning.fit_budget(m, _fake_metric(), kind="unstructured", max_drop=1.5, scan=scan)
    # tolerance 3.0 gives w1 0.9 (combined 1.8 > 1.5), tolerance 1.5 gives w1 0.7 (1.4): kept
    assert result.ratios == {"w1": 0.7}
    assert result.drop <= 1.5 and [a.accepted for a in result.attempts] == [False, True]
    assert 0 < result.pruned_share < 0.7
    assert result.removed == pytest.approx(round(0.7 * 1152) / (1152 + 256))
    d = result.to_dict()
    assert d["scan"]["rows"][0]["drops"][0] == pytest.approx(0.6, abs=0.01)
    pruned = pruning.prune_copy(m, "unstructured", ratios=result.ratios)
    assert _sparsity(pruned, "w1") == pytest.approx(0.7, abs=1e-3) and _sparsity(pruned, "w2") == 0


def test_nothing_fits_means_nothing_pruned(rng):
    m = prune_net(rng)
    result = pruning.fit_budget(m, _fake_metric(), kind="unstructured", max_drop=0.1)
    assert result.ratios == {} and result.drop == 0


def test_ratios_for_stops_at_the_first_ratio_over_tolerance():
    scan = pruning.SensitivityScan(
        "unstructured", "m", 50.0, (0.3, 0.5, 0.7), [pruning.ScanRow("a", 10, [49.9, 48.0, 49.8])]
    )
    assert pruning.ratios_for(scan, 0.5) == {"a": 0.3}  # noise at 0.7 does not skip 0.5
    assert pruning.ratios_for(scan, 2.5) == {"a": 0.7}


def test_channels_budget_with_an_agreement_metric(rng):
    m = _resnet_like(rng)
    x = rng.standard_normal((24, 3, 6, 6)).astype(np.float32)
    metric = pruning.agreement_metric(m, x)
    assert metric.evaluate(m) == 100.0
    assert [n for n, _ in pruning.layers(m, "channels")] == ["c0 (+2)", "b1.c1", "b2.c1"]
    result = pruning.fit_budget(
        m, metric, kind="channels", max_drop=10.0, ratios=(0.25, 0.5), multiple_of=1
    )
    assert result.drop <= 10.0
    assert len(result.scan.rows) == 3 and result.scan.evaluations == 7


def test_top1_metric_and_bad_grid(rng):
    m = prune_net(rng)
    x = rng.standard_normal((10, 3, 8, 8)).astype(np.float32)
    labels = next(iter(run_all(m, x, batch=4).values())).argmax(axis=1)
    assert pruning.top1_metric(x, labels, batch=4).evaluate(m) == 100.0
    with pytest.raises(InputError):
        pruning.sensitivity_scan(m, _fake_metric(), kind="unstructured", ratios=(0.5, 1.0))
    with pytest.raises(InputError):
        pruning.layers(m, "bogus")  # type: ignore[arg-type]


def test_compounding_errors_fall_back_to_the_least_sensitive_prefix(rng):
    """Each layer alone costs 0.5 pt, both together 5: the tolerance rounds all fail, the
    binary search keeps one layer, at the smallest scanned ratio."""

    def score(m: ir.Model) -> float:
        n = sum(_sparsity(m, k) > 0 for k in ("w1", "w2"))
        return 100.0 - {0: 0.0, 1: 0.5, 2: 5.0}[n]

    m = prune_net(rng)
    result = pruning.fit_budget(m, pruning.Metric("fake", score), kind="unstructured", max_drop=1.0)
    assert len(result.ratios) == 1 and next(iter(result.ratios.values())) == 0.3
    assert result.drop == pytest.approx(0.5)
    assert result.attempts[-1].prefix is not None
    assert not any(a.accepted for a in result.attempts if a.tolerance is not None)
