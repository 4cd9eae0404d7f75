"""Pruning in ``onnxfit optimize``: plan steps, the budget (requested ratios or per-layer), CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxfit import io
from onnxfit.errors import InputError, VerificationError
from onnxfit.optimizer import optimize, plan
from test_prune import _net as prune_net
from test_prune_channels import _resnet_like


def _save(m, path):
    io.save(m, path)
    return path


def test_plan_places_pruning_before_precision_and_storage_last(rng, tmp_path):
    p = _save(prune_net(rng), tmp_path / "m.onnx")
    names = plan(p, "cpu", precision="fp16", prune=0.7, prune_channels=0.3).pass_names
    assert names.index("prune-channels") < names.index("prune") < names.index("fp16")
    assert names[-1] == "sparse-storage"
    assert "prune" not in plan(p, "cpu", precision="fp32").pass_names
    for bad in ({"prune": 1.5}, {"prune_channels": 0.0}, {"prune_scope": "everywhere"}):
        with pytest.raises(InputError):
            plan(p, "cpu", precision="fp32", **bad)


def test_requested_ratio_kept_when_within_budget(rng, tmp_path):
    p = _save(prune_net(rng), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    res = optimize(
        p, out, target="cpu", precision="fp32", prune=0.5, max_accuracy_drop=100, measure_runs=0
    )
    prune = next(r for r in res.passes if r.name == "prune")
    assert prune.stats["mode"] == "exact" and prune.stats["requested"] == "0.5"
    assert prune.stats["weights_pruned"] == round(0.5 * (1152 + 256))
    assert prune.stats["achieved"] == pytest.approx(0.5, abs=1e-3)
    written = io.load(out)
    w1 = written.graph.initializers["w1"].const_value.numpy()
    assert 0.3 < np.mean(w1 == 0) < 0.9


def test_exact_request_that_breaks_the_budget_is_refused_with_its_cost(rng, tmp_path):
    p = _save(_resnet_like(rng, 32), tmp_path / "r.onnx")
    out = tmp_path / "o.onnx"
    with pytest.raises(VerificationError, match=r"--prune-channels 0\.5 costs [0-9.]+ pt") as e:
        optimize(
            p, out, target="cpu", precision="fp32", prune_channels=0.5,
            max_accuracy_drop=0.5, measure_runs=0,
        )  # fmt: skip
    assert "auto:0.5" in (e.value.hint or "")
    assert not out.exists()


def test_auto_mode_chooses_per_layer_ratios_within_the_budget(rng, tmp_path):
    p = _save(_resnet_like(rng, 32), tmp_path / "r.onnx")
    out = tmp_path / "o.onnx"
    res = optimize(
        p,
        out,
        target="cpu",
        precision="fp32",
        prune_channels="auto:0.5",
        max_accuracy_drop=0.5,
        measure_runs=0,
    )
    step = next(r for r in res.passes if r.name == "prune-channels")
    assert step.stats["mode"] == "auto" and step.stats["requested"] == "auto (max 0.5)"
    assert isinstance(step.stats["scan"], list) and len(step.stats["scan"]) == 3
    assert float(step.stats["loss_pts"]) <= 0.5 + 1e-9
    assert 0.0 <= float(step.stats["achieved"]) < 0.5
    assert res.gate.passed
    report = json.loads(Path(res.report_path).read_text())
    assert any(p["name"] == "prune-channels" for p in report["passes"])


def test_passes_path_takes_the_prune_ratio(rng, tmp_path):
    p = _save(prune_net(rng), tmp_path / "m.onnx")
    res = optimize(
        p, tmp_path / "o.onnx", target="cpu", passes="cleanup,prune", prune=0.7,
        max_accuracy_drop=100, measure_runs=0,
    )  # fmt: skip
    prune = next(r for r in res.passes if r.name == "prune")
    assert prune.stats["requested"] == "0.7"
    assert prune.stats["achieved"] == pytest.approx(0.7, abs=1e-3)
    with pytest.raises(InputError, match="--prune gives no ratio"):
        plan(p, "cpu", passes="cleanup,prune")


def test_cli_flags_reach_the_plan(rng, tmp_path):
    from onnxfit.cli import main

    p = _save(prune_net(rng), tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    args = [
        "optimize",
        str(p),
        "-o",
        str(out),
        "--target",
        "cpu",
        "--precision",
        "fp32",
        "--prune",
        "0.5",
        "--prune-scope",
        "layer",
        "--max-accuracy-drop",
        "100",
        "--measure-runs",
        "0",
        "--json",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    step = next(s for s in data["plan"]["steps"] if s["name"] == "prune")
    assert step["options"]["scope"] == "layer" and step["options"]["sparsity"] == 0.5
    bad = CliRunner().invoke(main, [*args[:8], "--prune", "2", "--force"])
    assert bad.exit_code == 2 and "--prune" in bad.output
    bad = CliRunner().invoke(main, [*args[:8], "--prune", "most", "--force"])
    assert bad.exit_code == 2 and "auto:MAX" in bad.output


def test_prune_method_reconstruct_with_calibration_arrays(rng, tmp_path):
    p = _save(prune_net(rng), tmp_path / "m.onnx")
    data = tmp_path / "arrays"
    data.mkdir()
    np.save(data / "a.npy", rng.standard_normal((12, 3, 8, 8)).astype(np.float32))
    common = {"target": "cpu", "precision": "fp32", "max_accuracy_drop": 100, "measure_runs": 0}
    res = optimize(p, tmp_path / "o.onnx", prune=0.5, calibrate=data, **common)
    step = next(r for r in res.passes if r.name == "prune")
    assert step.stats["method"] == "reconstruct"  # auto: real calibration inputs
    assert step.stats["calibration_samples"] == 12
    assert step.stats["achieved"] == pytest.approx(0.5, abs=1e-3)
    assert "file size only" in str(step.stats["saves"])
    # without data: auto falls back to magnitude, an explicit reconstruct is refused
    res = optimize(p, tmp_path / "o2.onnx", prune=0.5, **common)
    assert next(r for r in res.passes if r.name == "prune").stats["method"] == "magnitude"
    with pytest.raises(InputError, match="--prune-method reconstruct needs real calibration"):
        optimize(p, tmp_path / "o3.onnx", prune=0.5, prune_method="reconstruct", **common)
    with pytest.raises(InputError, match="--channel-multiple"):
        optimize(p, tmp_path / "o4.onnx", prune_channels=0.3, channel_multiple=0, **common)
