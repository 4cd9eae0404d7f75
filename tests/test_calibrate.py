"""The calibrated latency model: op classes, fitting, the TOML round trip, and the command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

from onnxfit.analysis.calibrated import from_table, is_fused, op_class
from onnxfit.analysis.cost import analyze_cost, node_cost
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.cli import main
from onnxfit.profiling.calib_fit import (
    error_summary,
    fit_class,
    fused_pairs,
    profiler_correction,
)
from onnxfit.profiling.calib_measure import CalibrationRun, KernelSample, ModelRun, measure_model
from onnxfit.profiling.calib_suite import calibration_suite, cnn, probes
from onnxfit.targets import get_target, load_target_file

TABLE = {
    "source": "test",
    "per_kernel_s": 1e-6,
    "run_s": 2e-5,
    "fused": ["Relu<-Conv"],
    "ops": {
        "conv": {"fp32": {"compute_efficiency": 0.5, "bandwidth_efficiency": 0.25}},
        "default": {"fp32": {"compute_efficiency": 0.1, "bandwidth_efficiency": 0.5}},
    },
}


def _conv_relu() -> ir.Model:
    w = onnx.numpy_helper.from_array(np.ones((16, 8, 3, 3), np.float32), "W")
    g = h.make_graph(
        [
            h.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            h.make_node("Relu", ["c"], ["r"], name="relu"),
            h.make_node("Sigmoid", ["r"], ["y"], name="sig"),
        ],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 8, 32, 32])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        [w],
    )
    return infer_shapes(ir.from_proto(h.make_model(g, opset_imports=[h.make_opsetid("", 17)])))


def test_op_classes() -> None:
    suite = {m.name: m.model for m in probes()}
    first = {name: op_class(m.graph.node(0)) for name, m in suite.items()}
    assert first["conv3x3-c16-112"] == "conv"
    assert first["conv1x1-c16-112"] == "conv1x1"
    assert first["dw3x3-c16-112"] == "dwconv"
    assert first["matmul-128x256x256"] == "matmul"
    assert first["transpose-c32-112"] == "move" and first["resize-c32-112"] == "resize"
    assert first["softmax-128x256"] == "norm" and first["maxpool-c32-112"] == "pool"


def test_calibrated_node_time_and_fusion() -> None:
    model = _conv_relu()
    cpu = get_target("cpu")
    tgt = dataclasses.replace(cpu, calibration=TABLE)
    conv, relu, sig = list(model.graph)
    assert is_fused(relu, from_table(TABLE).fused) and not is_fused(sig, from_table(TABLE).fused)
    c = node_cost(conv, tgt)
    plain = node_cost(conv, cpu)
    expected = max(c.flops / (0.5 * cpu.peak_fp32), c.bytes / (0.25 * cpu.memory_bandwidth))
    assert c.time_s == pytest.approx(expected + 1e-6)
    assert c.time_s > plain.time_s - cpu.dispatch_overhead_s
    assert node_cost(relu, tgt).time_s == 0.0  # runs inside the Conv's kernel
    s = node_cost(sig, tgt)  # no "eltwise" entry: the default one
    assert s.time_s == pytest.approx(
        max(s.flops / (0.1 * cpu.peak_fp32), s.bytes / (0.5 * 20e9)) + 1e-6
    )
    report = analyze_cost(model, target=tgt)
    assert report.run_s == 2e-5
    assert report.time_s == pytest.approx(c.time_s + s.time_s + 2e-5)


def test_toml_round_trip_and_labels(tmp_path: Path) -> None:
    p = tmp_path / "dev.toml"
    p.write_text(
        'base = "xbox-series-s"\nname = "devkit"\n\n[calibration]\nrun_s = 1e-5\n'
        'fused = ["Relu<-Conv"]\n\n[calibration.ops.conv.fp16]\n'
        "compute_efficiency = 0.4\nbandwidth_efficiency = 0.7\noverhead_s = 2e-6\n"
    )
    t = load_target_file(p)
    assert t.calibrated and t.peak_fp16 == get_target("xbox-series-s").peak_fp16
    assert t.projection_label == "projected, calibrated on the device"
    assert from_table(t.calibration or {}).figures("conv", "fp16") is not None
    for name in ("xbox-series-s", "xbox-series-x"):
        assert get_target(name).projection_label == "projected, uncalibrated: a floor"
    assert json.loads(json.dumps(t.to_dict()))["calibration"]["run_s"] == 1e-5
    bad = tmp_path / "bad.toml"
    bad.write_text('base = "cpu"\ncalibration = 3\n')
    with pytest.raises(Exception, match="must be a table"):
        load_target_file(bad)


def test_fit_class_recovers_known_figures() -> None:
    rng = np.random.default_rng(0)
    peak, bw = 1e11, 1e10
    samples = []
    for i in range(60):
        f = float(10 ** rng.uniform(5, 9))
        b = float(10 ** rng.uniform(4, 7))
        t = max(f / (0.4 * peak), b / (0.6 * bw)) + 5e-6
        samples.append(KernelSample(f"k{i}", "conv", "fp32", int(f), int(b), t))
    got = fit_class(samples, peak=peak, bandwidth=bw)
    assert got["compute_efficiency"] == pytest.approx(0.4, rel=0.1)
    assert got["bandwidth_efficiency"] == pytest.approx(0.6, rel=0.1)
    assert got["overhead_s"] == pytest.approx(5e-6, rel=0.25)


def _run(name: str, kernels: int, kernel_s: float, wall: float, fusion: list) -> ModelRun:
    samples = [KernelSample(f"n{i}", "conv", "fp32", 1, 1, kernel_s) for i in range(kernels)]
    return ModelRun(name, "model", 1, wall, [wall], kernels, samples, 0.0, fusion)


def test_profiler_correction_and_fused_pairs() -> None:
    # profiled kernels carry 3 us each; a run costs 10 us outside the kernels
    runs = [_run(f"m{n}", n, 50e-6, n * 47e-6 + 10e-6, []) for n in (1, 5, 20, 40)]
    per_kernel, per_run = profiler_correction(runs)
    assert per_kernel == pytest.approx(3e-6, rel=1e-6) and per_run == pytest.approx(10e-6)
    fusion = [("Relu", "Conv", True)] * 3 + [("Add", "Conv", True), ("Add", "Conv", False)] * 2
    fusion += [("Sigmoid", "Conv", False)] * 4 + [("Relu", "MatMul", True)]
    assert fused_pairs([_run("a", 1, 1e-6, 1e-6, fusion)]) == ["Add<-Conv", "Relu<-Conv"]
    s = error_summary([0.05, -0.15, 0.3, -0.01])
    assert s["median_abs"] == pytest.approx(0.1) and s["within_10"] == 0.5
    assert s["within_20"] == 0.75


def test_suite_is_fixed_and_measurable(tmp_path: Path) -> None:
    suite = calibration_suite(quick=True)
    names = [m.name for m in suite]
    assert names[:2] == ["resnet18", "yolov3-tiny"] and "transformer-d128" in names
    assert any(n.startswith("dw3x3") for n in names) and names == sorted(
        set(names), key=names.index
    )
    run = measure_model("cnn-w16", cnn(16), runs=3, warmup=1)
    assert run.wall_s > 0 and run.samples and run.kernels >= len(run.samples)
    assert {s.op_class for s in run.samples} >= {"conv"}
    assert ("Relu", "Conv", True) in run.fusion  # ORT's CPU provider fuses Conv+Relu


def test_calibrate_command_from_measurements(tmp_path: Path) -> None:
    """The command end to end on a few measured graphs (fit, write, read back, inspect)."""
    items = [m for m in calibration_suite(quick=True) if m.kind == "probe"][:9]
    items += [m for m in calibration_suite(quick=True) if m.name in ("cnn-w16", "mobilenet-w16")]
    run = CalibrationRun("CPUExecutionProvider", "cpu", 1, "test", "test host")
    for m in items:
        run.models.append(measure_model(m.name, m.model, kind=m.kind, runs=3, warmup=1))
    saved = tmp_path / "m.json"
    run.save(saved)
    out = tmp_path / "this-cpu.toml"
    args = ["calibrate", "--from-measurements", str(saved), "-o", str(out), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["calibration"]["ops"]["conv"]["fp32"]["samples"] >= 3
    assert {r["model"] for r in d["fitted"]} == {"cnn-w16", "mobilenet-w16"}
    assert load_target_file(out).calibrated
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2 and "file exists" in res.stderr
    model = tmp_path / "cnn.onnx"
    from onnxfit import io

    io.save(cnn(16), model)
    res = CliRunner().invoke(main, ["inspect", str(model), "--target", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["target"]["projection"] == "projected, calibrated on the device"


def test_wall_time_only_providers_use_probes_and_published_fusions() -> None:
    """GPU providers: ORT's profile times the enqueue, so probes' wall times are the samples."""
    from onnxfit.profiling.calib_fit import DML_FUSED, fit
    from onnxfit.profiling.calib_measure import _wall_only

    items = [m for m in probes() if m.name == "null" or m.name.startswith("conv3x3")]
    run = CalibrationRun("DmlExecutionProvider", "cpu", 1, "test", "test host")
    for m in items:
        measured = measure_model(m.name, m.model, kind="probe", runs=3, warmup=1)
        run.models.append(
            _wall_only(
                m.name, m.model, kind="probe", batch=1, wall=measured.wall_runs, target="cpu"
            )
        )
    null = next(m for m in run.models if m.name == "null")
    assert all(len(m.samples) == 1 for m in run.models) and null.samples[0].op_class == "eltwise"
    table = fit(run, {})
    assert (
        table["fused"] == DML_FUSED
        and "Relu<-Conv" in DML_FUSED
        and "Sigmoid<-Gemm" not in DML_FUSED
    )
    assert table["run_s"] == pytest.approx(null.wall_s)
    assert table["ops"]["conv"]["fp32"]["samples"] == 5
