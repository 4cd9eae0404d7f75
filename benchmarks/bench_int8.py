"""INT8 (onnxfit.passes.int8) against the plain onnxruntime FP32 baseline, in one run.

1. Latency and size, zoo ResNet-18, batch 1, this CPU: the FP32 model as built, run by a plain
   ``onnxruntime.InferenceSession`` (the baseline), against our static INT8 (QDQ, per-channel
   int8 weights) with uint8 activations (the default) and with int8 activations (ORT's
   default, for comparison). Calibration: 32 ImageNet-sample images (synthetic if absent).
   Runs are interleaved (round-robin) so that load from other processes hits every model alike;
   a fixed numpy workload is timed before and after to show how busy the cores were.
2. Accuracy, ShuffleNetV2: the ONNX-zoo INT8 QDQ model dequantized to FP32 (``dequantize``
   pass) against our INT8 of that FP32, calibrated on 100 of the 500 ImageNet-sample images
   (every 5th, sorted by file name); top-1/top-5 on all 500 and on the 400 not used for
   calibration. The zoo's own INT8 model is listed for reference.

Run:  .venv/bin/python benchmarks/bench_int8.py [--quick]
Writes benchmarks/results/int8.md (``--quick``: fewer runs, 100 eval images, MinMax only).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxfit import io, zoo
from onnxfit.data.calibration import CalibrationData, synthetic_inputs
from onnxfit.passes.int8 import Int8StaticPass
from onnxfit.verify import compare_models, load_eval_set

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results" / "int8.md"


def _clone(model):  # type: ignore[no-untyped-def]
    return io.from_proto(io.to_proto(model))


def _busy_probe() -> float:
    """Milliseconds for a fixed 2-thread-free numpy workload (higher = cores busier)."""
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    t = time.perf_counter()
    for _ in range(50):
        a = np.tanh(a @ a.T * 1e-3)
    return (time.perf_counter() - t) * 1e3


def latency(paths: dict[str, Path], runs: int) -> dict[str, float]:
    """Median ms per batch-1 run, round-robin over the models."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = os.cpu_count() or 1
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for s in sessions.values():
        for _ in range(10):
            s.run(None, {"input": x})
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - t)
    return {k: float(np.median(v) * 1e3) for k, v in times.items()}


def part_latency(quick: bool, lines: list[str]) -> None:
    fp32 = zoo.resnet18()
    if (DATA / "imagenet-sample").is_dir():
        x, _ = load_eval_set(DATA / "imagenet-sample", "imagenet", limit=32)
        calib = CalibrationData([{"input": x[i : i + 1]} for i in range(len(x))], "imagenet[:32]")
    else:
        calib = synthetic_inputs(fp32, 32)
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"fp32 (plain ORT)": Path(tmp) / "fp32.onnx"}
        io.save(fp32, paths["fp32 (plain ORT)"])
        for act, label in (("uint8", "int8 U8S8 (ours, default)"), ("int8", "int8 S8S8")):
            model = _clone(fp32)
            Int8StaticPass(calibration=calib, activation_type=act)(model)  # type: ignore[arg-type]
            paths[label] = Path(tmp) / f"int8_{act}.onnx"
            io.save(model, paths[label])
        sizes = {k: io.file_size(p).bytes for k, p in paths.items()}
        before = _busy_probe()
        ms = latency(paths, 40 if quick else 300)
        after = _busy_probe()
    base_ms, base_size = ms["fp32 (plain ORT)"], sizes["fp32 (plain ORT)"]
    lines += [
        "## ResNet-18 (zoo), batch 1, CPU",
        "",
        f"Calibration: {calib.source} ({calib.samples} samples). "
        f"{40 if quick else 300} interleaved runs per model, median. "
        f"Busy probe (fixed numpy workload): {before:.1f} ms before, {after:.1f} ms after.",
        "",
        "| model | latency (ms) | speed-up vs fp32 | file (MiB) | size vs fp32 |",
        "|---|---|---|---|---|",
    ]
    for k in paths:
        lines.append(
            f"| {k} | {ms[k]:.2f} | {base_ms / ms[k]:.2f}x | {sizes[k] / 2**20:.2f} | "
            f"{sizes[k] / base_size:.1%} |"
        )
    lines.append("")


def part_accuracy(quick: bool, lines: list[str]) -> None:
    from onnxfit.passes.dequantize import DequantizePass

    qdq_path = DATA / "models" / "shufflenet-v2-12-qdq.onnx"
    if not qdq_path.is_file():
        lines += ["## ShuffleNetV2 accuracy", "", f"skipped: {qdq_path} not found", ""]
        return
    n = 100 if quick else 500
    x, y = load_eval_set(DATA / "imagenet-sample", "imagenet", limit=n)
    zoo_int8 = io.load(qdq_path)
    fp32 = io.load(qdq_path)
    DequantizePass()(fp32)
    calib_idx = list(range(0, n, 5))
    held = [i for i in range(n) if i % 5]
    calib = CalibrationData(
        [{"input": x[i : i + 1]} for i in calib_idx], f"every 5th of {n} imagenet-sample images"
    )
    lines += [
        "## ShuffleNetV2 (zoo INT8 dequantized to FP32) -> our INT8",
        "",
        f"Calibration: {calib.source} ({len(calib_idx)} images). Accuracy on all {n} images "
        f"and on the {len(held)} not used for calibration. Drop = FP32 top-1 - model top-1.",
        "",
        f"| model | top-1 ({n}) | top-5 ({n}) | drop (pt) | top-1 agreement | "
        f"top-1 ({len(held)} held out) | drop held out (pt) | cosine min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows: list[tuple[str, object]] = [("zoo INT8 (Intel Neural Compressor)", zoo_int8)]
    for method in ("minmax",) if quick else ("minmax", "entropy", "percentile"):
        model = _clone(fp32)
        Int8StaticPass(calibration=calib, method=method)(model)  # type: ignore[arg-type]
        rows.append((f"ours, {method}", model))
    for name, model in rows:
        r = compare_models(fp32, model, x, labels=y)  # type: ignore[arg-type]
        h = compare_models(fp32, model, x[held], labels=y[held])  # type: ignore[arg-type]
        if name.startswith("zoo"):
            lines.append(
                f"| fp32 (dequantized) | {r.reference_accuracy['top1']:.1%} | "
                f"{r.reference_accuracy['top5']:.1%} | 0 | 100% | "
                f"{h.reference_accuracy['top1']:.1%} | 0 | 1 |"
            )
        lines.append(
            f"| {name} | {r.candidate_accuracy['top1']:.1%} | {r.candidate_accuracy['top5']:.1%}"
            f" | {r.accuracy_drop:+.1f} | {r.agreement:.1%} | "
            f"{h.candidate_accuracy['top1']:.1%} | {h.accuracy_drop:+.1f} | {r.cosine_min:.4f} |"
        )
    lines.append("")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short run (proves the script works)")
    args = ap.parse_args()
    t0 = time.time()
    lines = [
        "# INT8: onnxfit vs plain onnxruntime FP32",
        "",
        f"Command: `.venv/bin/python benchmarks/bench_int8.py{' --quick' if args.quick else ''}`"
        f" - onnxruntime {ort.__version__}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores{' - QUICK run' if args.quick else ''}.",
        "",
    ]
    part_latency(args.quick, lines)
    part_accuracy(args.quick, lines)
    lines.append(f"Total time: {time.time() - t0:.0f} s.")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
