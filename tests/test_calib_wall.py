"""The wall-time (GPU) calibration: the fit, the table it writes, and its leave-one-model-out
error on the H200 measurements saved in benchmarks/results/gpu (bounds stated per provider)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxfit.analysis.cost import analyze_cost, graph_io_bytes
from onnxfit.profiling.calib_fit import base_target, error_summary, fit, leave_one_out, predict
from onnxfit.profiling.calib_measure import CalibrationRun
from onnxfit.profiling.calib_suite import calibration_suite
from onnxfit.profiling.calib_wall import COLUMNS, fit_coefficients, table_from
from onnxfit.profiling.calibrate import calibration_toml
from onnxfit.profiling.contention import queued_between, timed_runs
from onnxfit.targets import cuda_target_for, load_target_file

SAVED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu"
#: leave-one-model-out bounds on the saved measurements: (median |error|, share within +-20 %).
#: Measured when written: CUDA 9.5 % / 86 % (14 models), WebGPU 8.9 % / 96 % (26 models); the
#: uncalibrated roofline is 51 % / 7 % and 90 % / 0 % off.
BOUNDS = {"cuda": (0.11, 0.80), "webgpu": (0.10, 0.85)}


@pytest.fixture(scope="module")
def suite() -> dict:
    return {m.name: m.model for m in calibration_suite()}


@pytest.mark.parametrize("provider", ["cuda", "webgpu"])
def test_leave_one_out_on_saved_h200_measurements(provider: str, suite: dict) -> None:
    run = CalibrationRun.load(SAVED / f"calib-{provider}.json")
    rows = leave_one_out(run, suite)
    after = error_summary([r["error_after"] for r in rows])
    before = error_summary([r["error_before"] for r in rows])
    median, within_20 = BOUNDS[provider]
    assert len(rows) >= 14
    assert after["median_abs"] <= median, after
    assert after["within_20"] >= within_20, after
    assert after["median_abs"] < 0.25 * before["median_abs"], (before, after)


def test_fit_recovers_known_figures() -> None:
    rng = np.random.default_rng(0)
    truth = dict.fromkeys(COLUMNS, 0.0)
    truth.update(run_s=700e-6, transfer_s_per_byte=1 / 3e9, overhead_compute_s=12e-6)
    truth.update(overhead_other_s=6e-6, scale_conv=20.0, scale_dwconv=1.0, scale_matmul=8.0)
    truth.update(scale_memory=3.0, weight_s_per_byte=1 / 20e9)
    coef = np.array([truth[c] for c in COLUMNS])
    rows = []
    for _ in range(40):
        f = np.array([1.0, *rng.uniform(0, 1, len(COLUMNS) - 1)])
        f[1] *= 4e6  # bytes of graph IO
        f[2:4] *= 60  # kernels
        f[4:8] *= 50e-6  # roofline seconds
        f[8] *= 40e6  # weight bytes
        rows.append((f, float(f @ coef), 1.0))
    got = fit_coefficients(rows)
    for c in COLUMNS:
        assert got[c] == pytest.approx(truth[c], rel=1e-6, abs=1e-12), c


def test_written_toml_projects_as_the_fit(tmp_path: Path, suite: dict) -> None:
    """The TOML (figures to 6 digits) pins the peaks of the GPU measured (an H200, while this
    machine's own ``cuda`` target is generic), so a projection from the file equals the fitted
    one; the host<->device copies are part of it."""
    run = CalibrationRun.load(SAVED / "calib-cuda.json")
    table = fit(run, suite)
    assert base_target(run).peak_fp32 == cuda_target_for("NVIDIA H200").peak_fp32
    path = tmp_path / "h200.toml"
    path.write_text(calibration_toml(run, name="h200", table=table))
    loaded = load_target_file(path)
    for name in ("resnet18", "yolov3-tiny", "transformer-d128"):
        fitted = predict(suite[name], base_target(run), table)
        assert analyze_cost(suite[name], target=loaded).time_s == pytest.approx(fitted, rel=1e-4)
    report = analyze_cost(suite["yolov3-tiny"], target=loaded)
    expected = graph_io_bytes(suite["yolov3-tiny"]) / table["transfer_bandwidth"]
    assert report.transfer_s == pytest.approx(expected, rel=1e-4) and report.transfer_s > 0
    assert graph_io_bytes(suite["yolov3-tiny"]) == 4 * (3 * 416**2 + 255 * (13**2 + 26**2))


def test_table_has_every_class_and_no_negative_figure() -> None:
    coef = dict.fromkeys(COLUMNS, 0.0) | {c: 1.0 for c in COLUMNS if c.startswith("scale_")}
    t = table_from(coef, "test", [])
    assert t["transfer_bandwidth"] == 0.0 and t["weight_bandwidth"] == 0.0
    assert {"conv", "dwconv", "matmul", "move", "default"} <= set(t["ops"])
    assert all(f["fp32"]["compute_efficiency"] == 1.0 for f in t["ops"].values())


def test_wait_for_a_core_is_measured_per_thread() -> None:
    assert queued_between({"1": 5, "2": 0}, {"1": 2_000_005, "2": 500, "3": 7}) == 2e-3
    assert queued_between({}, {}) == 0.0
    walls, queued = timed_runs(lambda: sum(range(1000)), 5)
    assert len(walls) == len(queued) == 5
    assert all(w > 0 for w in walls) and all(q >= 0 for q in queued)


#: the CPU runs of benchmarks/bench_latency_model.py (1 and 2 threads, interleaved, each run's
#: wait for a core taken off): leave-one-model-out bounds on the suite's models. Measured when
#: written (with the two real models too): 1 thread 4.7 % / 93 %, 2 threads 10.7 % / 86 % (the
#: 2-thread median misses the 10 % goal at batch 2: see benchmarks/results/latency_model-t2.md)
CPU_BOUNDS = {1: (0.08, 0.85), 2: (0.13, 0.78)}


@pytest.mark.slow
@pytest.mark.parametrize("threads", [1, 2])
def test_leave_one_out_on_saved_cpu_measurements(threads: int, suite: dict) -> None:
    run = CalibrationRun.load(
        SAVED.parent / f"latency_model-t{threads}.json"
    )  # fmt: skip
    rows = leave_one_out(run, suite)
    after = error_summary([r["error_after"] for r in rows])
    median, within_20 = CPU_BOUNDS[threads]
    assert len(rows) >= 26 and {r["batch"] for r in rows} == {1, 2}
    assert after["median_abs"] <= median, after
    assert after["within_20"] >= within_20, after
