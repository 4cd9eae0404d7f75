"""Leave-one-model-out validation of the calibrated latency model on this machine.

1. Measures the calibration suite (:mod:`onnxfit.profiling.calib_suite`: zoo ResNet-18 at
   batch 1 and 2, YOLOv3-tiny, generated cnn / mobilenet / bottleneck / transformer variants
   at several widths, and single-op probes), plus the real models of ``../shared/data`` when
   present (YOLOX-Nano, the INT8 QDQ ShuffleNetV2), with ONNX Runtime's CPU provider
   (``--threads``, default 1), exactly as ``onnxfit calibrate`` does.
2. For every model (not the probes): fits the calibration on all the *other* graphs, projects
   the held-out model, and compares with its measured median latency; the uncalibrated
   roofline of the built-in ``cpu`` target is listed beside it.
3. Reports the error distribution before and after calibration: median |error| and the share
   of models within +-10 % and +-20 % (goal: median <= 10 %, >= 80 % within +-20 %).

The host's load average is recorded before and after (the CPU is shared with other work).

Run:  .venv/bin/python benchmarks/bench_latency_model.py [--threads 1] [--from FILE.json]
Writes benchmarks/results/latency_model-t<threads>.md and the raw measurements
benchmarks/results/latency_model-t<threads>.json (refit with ``--from``).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from onnxfit import io
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.profiling.calib_fit import error_summary, leave_one_out
from onnxfit.profiling.calib_measure import CalibrationRun, run_suite
from onnxfit.profiling.calib_suite import calibration_suite

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ("yolox_nano.onnx", "shufflenet-v2-12-qdq.onnx")


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--from", dest="from_file", type=Path, help="refit saved measurements")
    args = ap.parse_args()
    extra = [DATA / "models" / f for f in SHARED if (DATA / "models" / f).exists()]
    load_before = _load()
    started = time.time()
    if args.from_file:
        run = CalibrationRun.load(args.from_file)
    else:
        run = run_suite(threads=args.threads, runs=args.runs, extra=extra)
        run.save(RESULTS / f"latency_model-t{args.threads}.json")
    measured_s = time.time() - started
    load_after = _load()
    models = {m.name: m.model for m in calibration_suite()}
    for p in extra:
        models[p.name] = infer_shapes(io.load(p), batch=1)
    rows = leave_one_out(run, models)
    n_models = sum(m.kind == "model" for m in run.models)
    lines = [
        f"# Calibrated latency model: leave-one-model-out on this CPU ({run.threads} thread)",
        "",
        f"ONNX Runtime {run.ort_version}, {run.provider}, intra-op threads {run.threads}, "
        f"spinning off; {len(run.models)} graphs measured ({n_models} models + probes) in "
        f"{measured_s:.0f} s on {run.host}. Shared host: load average "
        f"{load_before} before, {load_after} after. Each model is projected by a calibration fit "
        "without it; 'uncalibrated' is the built-in `cpu` target's roofline. Command: "
        f"`python benchmarks/bench_latency_model.py --threads {run.threads}`.",
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
    for label, key in (("uncalibrated", "error_before"), ("calibrated", "error_after")):
        for scope, sel in (("all", rows), ("batch 1", [r for r in rows if r["batch"] == 1])):
            s = error_summary([r[key] for r in sel])
            lines.append(
                f"| {label}, {scope} | {s['n']} | {100 * s['median_abs']:.1f} % "
                f"| {100 * s['within_10']:.0f} % | {100 * s['within_20']:.0f} % |"
            )
    text = "\n".join(lines) + "\n"
    out = RESULTS / f"latency_model-t{run.threads}.md"
    out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
