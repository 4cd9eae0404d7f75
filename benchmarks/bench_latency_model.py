"""Leave-one-model-out validation of the calibrated latency model on this machine.

1. Measures the calibration suite (:mod:`onnxfit.profiling.calib_suite`: zoo ResNet-18 at
   batch 1 and 2, YOLOv3-tiny, generated cnn / mobilenet / bottleneck / transformer variants
   at several widths, and single-op probes), plus the real models of ``../shared/data`` when
   present (YOLOX-Nano, the INT8 QDQ ShuffleNetV2), with ONNX Runtime's CPU provider, exactly
   as ``onnxfit calibrate`` does, at every thread count of ``--threads`` (default ``1,2``)
   *interleaved*: each of ``--rounds`` rounds takes every graph in turn at every thread count,
   and the rounds are merged (medians), so a change in the shared host's load falls on both.
2. For every model (not the probes): fits the calibration on all the *other* graphs, projects
   the held-out model, and compares with its measured median latency; the uncalibrated
   roofline of the built-in ``cpu`` target is listed beside it.
3. Reports the error distribution before and after calibration: median |error| and the share
   of models within +-10 % and +-20 % (goal: median <= 10 %, >= 80 % within +-20 %).

The host's load average is recorded before and after (the CPU is shared with other work).

Run:  nice -n 10 .venv/bin/python benchmarks/bench_latency_model.py [--threads 1,2] [--rounds 3]
      .venv/bin/python benchmarks/bench_latency_model.py --from FILE.json [--from FILE2.json]
Writes benchmarks/results/latency_model-t<threads>.md and the raw measurements
benchmarks/results/latency_model-t<threads>.json (refit with ``--from``); with ``--from`` a GPU
run saved by ``onnxfit calibrate --save-measurements`` (``benchmarks/results/gpu/calib-*.json``)
is reported as ``latency_model-<provider>.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from onnxfit import io
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.profiling.calib_fit import base_target, error_summary, fit, leave_one_out, predict
from onnxfit.profiling.calib_measure import CalibrationRun, run_suites
from onnxfit.profiling.calib_suite import calibration_suite

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ("yolox_nano.onnx", "shufflenet-v2-12-qdq.onnx")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def report(run: CalibrationRun, models: dict, *, how: str, command: str) -> str:
    """The markdown report of ``run``'s leave-one-model-out validation."""
    rows = leave_one_out(run, models)
    n_models = sum(m.kind == "model" for m in run.models)
    waits = [m.queued_s / (m.wall_s + m.queued_s) for m in run.models if m.wall_s > 0]
    if any(waits):
        how += (
            f" 'measured' is each run's wall time less its wait for a core (Linux schedstat: "
            f"the latency with the cores to itself); that wait was a median "
            f"{100 * statistics.median(waits):.0f} % (max {100 * max(waits):.0f} %) of the "
            "wall time."
        )
    lanes = {"CPUExecutionProvider": f"intra-op threads {run.threads}, spinning off"}
    lines = [
        f"# Calibrated latency model: leave-one-model-out, {run.provider}"
        + (f" ({run.threads} thread)" if run.provider == "CPUExecutionProvider" else ""),
        "",
        f"ONNX Runtime {run.ort_version}, {run.provider}, "
        f"{lanes.get(run.provider, 'numpy inputs and outputs')}; {len(run.models)} graphs "
        f"measured ({n_models} models + probes) on {run.host}; {how} Each model is projected by "
        "a calibration fit without it; 'uncalibrated' is the base target's roofline. "
        f"Command: `{command}`.",
        "",
        "| model | batch | measured | uncalibrated | error | calibrated (held out) | error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['measured_s'] * 1e3:.3f} ms "
            f"| {r['uncalibrated_s'] * 1e3:.3f} ms | {100 * r['error_before']:+.1f} % "
            f"| {r['calibrated_s'] * 1e3:.3f} ms | {100 * r['error_after']:+.1f} % |"
        )
    lines += [
        "",
        "| | models | median abs. error | within 10 % | within 20 % |",
        "|---|---|---|---|---|",
    ]
    batches = sorted({r["batch"] for r in rows})
    for label, key in (("uncalibrated", "error_before"), ("calibrated", "error_after")):
        scopes = [("all", rows)] + [
            (f"batch {b}", [r for r in rows if r["batch"] == b]) for b in batches
        ]
        for scope, sel in scopes:
            s = error_summary([r[key] for r in sel])
            lines.append(
                f"| {label}, {scope} | {s['n']} | {100 * s['median_abs']:.1f} % "
                f"| {100 * s['within_10']:.0f} % | {100 * s['within_20']:.0f} % |"
            )
    return "\n".join(lines) + "\n"


def across_sessions(train: CalibrationRun, check: CalibrationRun, models: dict) -> str:
    """One calibration fit on every graph of ``train``, checked on ``check``'s models (another
    measurement session of the same device): the error a user sees next time."""
    table = fit(train, models)
    tgt = base_target(train)
    errors = [
        predict(models[m.name], tgt, table) / m.wall_s - 1
        for m in check.models
        if m.kind == "model" and m.name in models
    ]
    s = error_summary(errors)
    return (
        f"\nFit on all of this session's graphs, checked on the models of another session "
        f"({check.note or 'saved earlier'}): {s['n']} models, median |error| "
        f"{100 * s['median_abs']:.1f} %, within 10 % {100 * s['within_10']:.0f} %, within 20 % "
        f"{100 * s['within_20']:.0f} %.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2", help="thread counts, interleaved (1,2)")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--from", dest="from_files", type=Path, action="append", default=[],
                    help="refit saved measurements (repeatable)")  # fmt: skip
    ap.add_argument("--against", type=Path,
                    help="with one --from: check its full fit on another session")  # fmt: skip
    args = ap.parse_args()
    extra = [DATA / "models" / f for f in SHARED if (DATA / "models" / f).exists()]
    load_before = _load()
    started = time.time()
    if args.from_files:
        runs = [CalibrationRun.load(p) for p in args.from_files]
        how = "refit from the saved measurements."
    else:
        threads = [int(t) for t in args.threads.split(",")]
        settings = [("CPUExecutionProvider", t) for t in threads]
        runs = run_suites(settings, runs=args.runs, rounds=args.rounds, extra=extra)
        how = (
            f"thread counts {args.threads} measured interleaved, {args.rounds} rounds of "
            f"{args.runs} timed runs (median of the rounds' medians) in "
            f"{time.time() - started:.0f} s; shared host: load average {load_before} before, "
            f"{_load()} after."
        )
        for run in runs:
            run.save(RESULTS / f"latency_model-t{run.threads}.json")
    models = {m.name: m.model for m in calibration_suite()}
    for p in extra:
        models[p.name] = infer_shapes(io.load(p), batch=1)
    for run, src in zip(runs, args.from_files or [None] * len(runs), strict=True):
        cpu = run.provider == "CPUExecutionProvider"
        stem = f"t{run.threads}" if cpu else run.provider.removesuffix("ExecutionProvider").lower()
        command = "python benchmarks/bench_latency_model.py " + (
            f"--from {src.relative_to(ROOT) if src.is_relative_to(ROOT) else src}"
            if src
            else f"--threads {args.threads} --rounds {args.rounds}"
        )
        if args.against:
            command += f" --against {args.against}"
        text = report(run, models, how=run.note + "; " + how if run.note else how, command=command)
        if args.against:
            text += across_sessions(run, CalibrationRun.load(args.against), models)
        (RESULTS / f"latency_model-{stem}.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
