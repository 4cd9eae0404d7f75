"""Pruning with reconstruction vs magnitude pruning, on trained models, held-out images.

1. **YOLOv3-tiny** (official Darknet weights, zoo graph), mAP@0.5 on the COCO sample: the
   pipeline's order (cleanup, fold BatchNorm, prune, FP16), unstructured sparsity 10-80 %,
   ``method`` magnitude vs reconstruct, calibrated on the first half of the images and scored
   on the other half (never the same images); file sizes with sparse storage vs FP32.
2. **ShuffleNetV2** (the zoo QDQ model dequantized to FP32), top-1 on the ImageNet sample:
   same, calibrated on 128 images of the first half, scored on the second half.
3. **YOLOv3-tiny channels**: ratio of Conv output channels removed (multiples of 8) with
   magnitude (filter norms + mean compensation, 16 images) vs reconstruct (least-squares refit
   of the next layers): mAP@0.5, parameters, planned activation arena, and the CPU latency of
   every variant measured **interleaved** in one run (batch 1, 416 x 416, plain onnxruntime).

Each stage's results go to benchmarks/results/prune_recon.json as it finishes (``--only``
reruns one stage and keeps the others); the report (prune_recon.md) and the plot
(prune_recon.png) are rendered from that file.

Run:  .venv/bin/python benchmarks/bench_prune_recon.py [--only yolo|shufflenet|channels]
      [--quick] [--runs N] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit import io, zoo
from onnxfit.atomic import write_text
from onnxfit.passes.cleanup import CleanupPass
from onnxfit.passes.dequantize import DequantizePass
from onnxfit.passes.fold_batchnorm import FoldBatchNormPass
from onnxfit.passes.fp16 import Fp16Pass
from onnxfit.pruning.channel_ls import ReconstructChannelsPass
from onnxfit.pruning.reconstruct import ReconstructPrunePass
from onnxfit.pruning.sparse import SparseStoragePass
from onnxfit.verify.evalset import load_labelled
from onnxfit.verify.evaluator import Evaluator, model_info
from onnxfit.verify.runner import first_samples

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
RESULTS = ROOT / "benchmarks" / "results"
JSON = RESULTS / "prune_recon.json"
MIB = 1024 * 1024
SPARSITIES = (0.1, 0.3, 0.5, 0.7, 0.8)
SHUFFLENET_LEVELS = (0.1, 0.3, 0.5)
SHUFFLENET_CALIB = 128
#: ``--levels``: sparsities to run instead of the defaults
LEVELS: list[tuple[float, ...] | None] = [None]
CHANNELS = (0.1, 0.25, 0.4)
METHODS = ("magnitude", "reconstruct")


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _float_model(path: Path, *, dequantize: bool = False) -> Any:
    m = io.load(path)
    if dequantize:
        DequantizePass()(m)
    CleanupPass()(m)
    FoldBatchNormPass()(m)
    return m


def _fp16(m: Any) -> Any:
    c = io.clone(m)
    Fp16Pass()(c)
    return c


def yolo_model(tmp: Path) -> Path:
    path = tmp / "yolov3-tiny.onnx"
    darknet = DATA / "models" / "darknet"
    zoo.build_and_save(
        "yolov3-tiny", path, force=True, weights=darknet / "yolov3-tiny.weights",
        cfg=darknet / "yolov3-tiny.cfg",
    )  # fmt: skip
    return path


Fold = tuple[list[dict[str, np.ndarray]], Any, str]  # calibration feeds, held-out set, text


#: folds run (``--folds``): 1 = calibrate on the first half, score on the second
FOLDS = [2]


def folds(m: Any, folder: Path, preset: str, calib: int) -> list[Fold]:
    """Up to two folds: calibrate on (at most ``calib`` images of) one half, score on the
    other; ``FOLDS[0]`` of them."""
    data = load_labelled(folder, preset)
    first, second = data.split(len(data) // 2)
    name = str(m.graph.inputs[0].name)
    out = []
    for cal, held in ((first, second), (second, first)):
        n = min(calib, len(cal))
        out.append(([{name: cal.x[:n]}], held, f"{n} of {len(cal)} images"))
    return out[: FOLDS[0]]


def fold_scorer(m: Any, fold: Fold, preset: str, metric: str) -> Callable[[Any], float]:
    info = model_info(m, preset=preset, task="detect" if metric == "map50" else None)
    ev = Evaluator(fold[1], info)
    return lambda x: 100 * ev.accuracy(x).metrics[metric]


def save_stage(stage: str, result: dict[str, Any]) -> None:
    """Merge one stage's (possibly partial) result into the JSON file."""
    saved = json.loads(JSON.read_text()) if JSON.is_file() else {}
    write_text(JSON, json.dumps({**saved, stage: result}, indent=1))


def unstructured(
    m: Any, preset: str, metric: str, data: list[Fold], levels: tuple[float, ...], tmp: Path,
    stage: str,
) -> dict[str, Any]:  # fmt: skip
    """Dense FP32 / FP16, then every level x method pruned, FP16, scored (mean of the folds)."""
    scorers = [fold_scorer(m, f, preset, metric) for f in data]
    fp32_bytes = io.save(m, tmp / "dense32.onnx", force=True).bytes
    m16 = _fp16(m)
    dense32 = float(np.mean([s(m) for s in scorers]))
    dense16 = float(np.mean([s(m16) for s in scorers]))
    say(f"dense {metric}: FP32 {dense32:.2f}, FP16 {dense16:.2f}")
    rows: list[dict[str, Any]] = []
    out = {"metric": metric, "dense_fp32": dense32, "dense_fp16": dense16,
           "fp32_bytes": fp32_bytes, "folds": [f[2] for f in data],
           "evaluation": [f[1].describe() for f in data], "rows": rows}  # fmt: skip
    for level in levels:
        for method in METHODS:
            scores, seconds, size, achieved = [], 0.0, 0, 0.0
            for (feeds, _, _), score in zip(data, scorers, strict=True):
                c = io.clone(m)
                t = time.perf_counter()
                p = ReconstructPrunePass(sparsity=level, method=method, feeds=feeds)
                p(c)
                seconds += time.perf_counter() - t
                achieved = p.stats["weights_pruned"] / max(p.stats["weights_eligible"], 1)
                c16 = _fp16(c)
                scores.append(score(c16))
                SparseStoragePass()(c16)
                size = io.save(c16, tmp / "p.onnx", force=True).bytes
            s16 = float(np.mean(scores))
            rows.append({
                "level": level, "method": method, "score": s16, "folds": scores,
                "drop": dense16 - s16, "achieved": achieved, "seconds": seconds / len(data),
                "file_bytes": size, "file_vs_fp32": size / fp32_bytes,
            })  # fmt: skip
            say(f"{method} {level:g}: {metric} {s16:.2f} {scores} (drop {dense16 - s16:.2f}), "
                f"file {100 * size / fp32_bytes:.1f} % of FP32, {seconds:.0f} s")  # fmt: skip
            save_stage(stage, {**out, "partial": True})
    return out


def stage_yolo(tmp: Path, quick: bool) -> dict[str, Any]:
    m = _float_model(yolo_model(tmp))
    data = folds(m, DATA / "coco-sample", "yolov3-tiny", 128)
    levels = (0.5, 0.7) if quick else LEVELS[0] or SPARSITIES
    return unstructured(m, "yolov3-tiny", "map50", data, levels, tmp, "yolo")


def stage_shufflenet(tmp: Path, quick: bool) -> dict[str, Any]:
    m = _float_model(DATA / "models" / "shufflenet-v2-12-qdq.onnx", dequantize=True)
    data = folds(m, DATA / "imagenet-sample", "imagenet", SHUFFLENET_CALIB)
    levels = (0.3, 0.5) if quick else LEVELS[0] or SHUFFLENET_LEVELS
    return unstructured(m, "imagenet", "top1", data, levels, tmp, "shufflenet")


def _timings(paths: dict[str, Path], runs: int, threads: int) -> dict[str, dict[str, float]]:
    """Median / min ms per model, every round running each model once (interleaved)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sessions = {
        k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
        for k, p in paths.items()
    }
    x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32)
    for s in sessions.values():
        for _ in range(3):
            s.run(None, {"input": x})
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(runs):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, {"input": x})
            times[k].append(time.perf_counter() - t)
    return {
        k: {"median_ms": float(np.median(v)) * 1e3, "min_ms": float(np.min(v)) * 1e3}
        for k, v in times.items()
    }


def stage_channels(tmp: Path, quick: bool) -> dict[str, Any]:
    from onnxfit.profiling.bench import static_figures
    from onnxfit.pruning.channels import count_elements

    m = _float_model(yolo_model(tmp))
    data = folds(m, DATA / "coco-sample", "yolov3-tiny", 128)
    scorers = [fold_scorer(m, f, "yolov3-tiny", "map50") for f in data]
    rows: list[dict[str, Any]] = []

    def add(label: str, models: list[Any], ratio: float, method: str, **stats: Any) -> None:
        st, _ = static_figures(models[0], batch=1, target="cpu")
        scores = [score(x) for x, score in zip(models, scorers, strict=True)]
        rows.append({
            "label": label, "ratio": ratio, "method": method, "score": float(np.mean(scores)),
            "folds": scores, "params": count_elements(models[0]),
            "gflops": (st.flops or 0) / 1e9, "arena_bytes": st.arena_bytes, **stats,
        })  # fmt: skip
        say(f"{label}: mAP@0.5 {np.mean(scores):.2f} {scores}")

    add("dense", [m] * len(data), 0.0, "-")
    for ratio in (0.25,) if quick else CHANNELS:
        for method in METHODS:
            models, seconds = [], 0.0
            for feeds, _, _ in data:
                c = io.clone(m)
                t = time.perf_counter()
                f = feeds if method == "reconstruct" else first_samples(feeds, 16)
                p = ReconstructChannelsPass(ratio=ratio, method=method, feeds=f)
                p(c)
                seconds += time.perf_counter() - t
                models.append(c)
            removed = 1 - p.stats["channels_after"] / p.stats["channels_before"]
            add(
                f"{ratio:g} {method}",
                models,
                ratio,
                method,
                seconds=seconds / len(data),
                removed=removed,
            )
    return {
        "rows": rows, "dense_score": rows[0]["score"], "folds": [f[2] for f in data],
        "evaluation": [f[1].describe() for f in data],
    }  # fmt: skip


def stage_timing(tmp: Path, quick: bool, runs: int, threads: int) -> dict[str, Any]:
    """CPU latency of the channel-pruned shapes, interleaved. The shapes (kept channels per
    layer) depend on the ratio and the rounding only, not on the method or the weights, so
    the models timed are pruned by filter norms (no data, seconds)."""
    m = _float_model(yolo_model(tmp))
    paths = {"dense": tmp / "t_dense.onnx"}
    io.save(m, paths["dense"], force=True)
    for ratio in (0.25,) if quick else CHANNELS:
        c = io.clone(m)
        ReconstructChannelsPass(ratio=ratio, method="magnitude")(c)
        paths[f"{ratio:g}"] = tmp / f"t_{ratio:g}.onnx"
        io.save(c, paths[f"{ratio:g}"], force=True)
    load = os.getloadavg()[0]
    timing = _timings(paths, runs, threads)
    dense_ms = timing["dense"]["median_ms"]
    for row in timing.values():
        row["speedup"] = dense_ms / row["median_ms"]
    say("timing: " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in timing.items()))
    return {"rows": timing, "runs": runs, "threads": threads, "load": [load, os.getloadavg()[0]]}


def _folds_text(r: dict[str, Any]) -> str:
    n = len(r["folds"])
    return "One split" if n == 1 else f"{n} folds (scores: their mean)"


def _md_unstructured(title: str, r: dict[str, Any]) -> list[str]:
    m = r["metric"]
    lines = [
        f"### {title} — {m} (%), FP16 after pruning",
        "",
        f"{_folds_text(r)}: calibrated on one half ({' / '.join(r['folds'])}) and scored on the "
        f"other ({' / '.join(r['evaluation'])}).",
        f"Dense: FP32 {r['dense_fp32']:.2f}, FP16 {r['dense_fp16']:.2f}.",
        "",
        f"| sparsity (requested = achieved) | method | {m} | drop vs FP16 (pts) | "
        "file vs FP32 (sparse storage) | pruning s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {100 * row['level']:.0f} % ({100 * row['achieved']:.2f} %) | {row['method']} | "
            f"{row['score']:.2f} | {row['drop']:.2f} | {100 * row['file_vs_fp32']:.1f} % | "
            f"{row['seconds']:.0f} |"
        )
    lines += [
        "",
        "Unstructured sparsity saves **file size only**: ONNX Runtime and DirectML densify "
        "the weights at load, so memory and time are those of the dense FP16 model.",
        "",
    ]
    return lines


def _md_channels(r: dict[str, Any], t: dict[str, Any] | None) -> list[str]:
    timing = (t or {}).get("rows", {})
    lines = [
        "### YOLOv3-tiny — Conv output channels removed (multiples of 8)",
        "",
        f"{_folds_text(r)} as above (reconstruct: {' / '.join(r['folds'])}; magnitude: 16 of "
        "them for its ranking and mean compensation). "
        + (
            f"Latency on this CPU: batch 1, 416 x 416, CPU EP, {t['threads']} intra-op threads, "
            f"{t['runs']} interleaved rounds of the dense and every pruned shape (load average "
            f"{t['load'][0]:.2f} -> {t['load'][1]:.2f}); the shape depends on the ratio only."
            if t
            else "Latency not measured."
        ),
        "",
        "| variant | channels removed | mAP@0.5 | drop (pts) | params | GFLOPs | planned arena MiB "
        "| median ms (min) | speed-up |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    base = r["dense_score"]
    for row in r["rows"]:
        removed = f"{100 * row['removed']:.1f} %" if "removed" in row else "-"
        tm = timing.get("dense" if row["method"] == "-" else f"{row['ratio']:g}")
        lat = (
            f"{tm['median_ms']:.1f} ({tm['min_ms']:.1f}) | {tm['speedup']:.2f}x" if tm else "- | -"
        )
        lines.append(
            f"| {row['label']} | {removed} | {row['score']:.2f} | {base - row['score']:.2f} | "
            f"{row['params']:,} | {row['gflops']:.2f} | {row['arena_bytes'] / MIB:.1f} | {lat} |"
        )
    lines += [
        "",
        "Channel pruning saves **memory and time**: the pruned model is a smaller dense model.",
        "",
    ]
    return lines


def plot(results: dict[str, Any], path: Path) -> None:
    from onnxfit.report.figures import figure, save_figure

    stages = [k for k in ("yolo", "shufflenet", "channels") if k in results]
    fig = figure(4.2 * len(stages), 3.4)
    axes = fig.subplots(1, len(stages), squeeze=False)[0]
    for ax, key in zip(axes, stages, strict=True):
        r = results[key]
        if key == "channels":
            for method, style in (("magnitude", "o--"), ("reconstruct", "s-")):
                rows = [x for x in r["rows"] if x["method"] == method]
                ax.plot([100 * x["ratio"] for x in rows], [x["score"] for x in rows], style,
                        label=f"{method} mAP")  # fmt: skip
            ax.axhline(r["dense_score"], color="0.5", lw=0.8, label="dense")
            ax.set_xlabel("channels removed (ratio, %)")
            ax.set_ylabel("mAP@0.5 (%)")
            ax.set_title("YOLOv3-tiny channels")
            timing = results.get("timing", {}).get("rows", {})
            if timing:
                ax2 = ax.twinx()
                xs = sorted(float(k) for k in timing if k != "dense")
                ax2.plot([100 * x for x in xs], [timing[f"{x:g}"]["speedup"] for x in xs], "^:",
                         color="tab:green", label="CPU speed-up")  # fmt: skip
                ax2.set_ylabel("CPU speed-up (x)")
                ax2.legend(fontsize=7, loc="lower right")
        else:
            for method, style in (("magnitude", "o--"), ("reconstruct", "s-")):
                rows = [x for x in r["rows"] if x["method"] == method]
                ax.plot([100 * x["level"] for x in rows], [x["score"] for x in rows], style,
                        label=method)  # fmt: skip
            ax.axhline(r["dense_fp16"], color="0.5", lw=0.8, label="dense FP16")
            ax.set_xlabel("unstructured sparsity (%)")
            ax.set_ylabel(f"{r['metric']} (%)")
            ax.set_title("YOLOv3-tiny (FP16)" if key == "yolo" else "ShuffleNetV2 (FP16)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    save_figure(fig, path)


def render(results: dict[str, Any]) -> str:
    lines = [
        "# Pruning with reconstruction (bench_prune_recon.py)",
        "",
        f"Host: {platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared). "
        "One-shot: no fine-tuning. Held-out images only: calibration and scoring never share "
        "an image.",
        "",
        "![curves](prune_recon.png)",
        "",
    ]
    if "yolo" in results:
        lines += _md_unstructured("YOLOv3-tiny (Darknet weights)", results["yolo"])
    if "shufflenet" in results:
        lines += _md_unstructured("ShuffleNetV2 (QDQ dequantized)", results["shufflenet"])
    if "channels" in results:
        lines += _md_channels(results["channels"], results.get("timing"))
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["yolo", "shufflenet", "channels", "timing"], action="append")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--folds", type=int, choices=[1, 2], default=2)
    ap.add_argument("--levels", help="comma-separated sparsities (yolo / shufflenet stages)")
    ap.add_argument("--render", action="store_true", help="only re-render from the JSON")
    args = ap.parse_args()
    FOLDS[0] = args.folds
    if args.levels:
        LEVELS[0] = tuple(float(x) for x in args.levels.split(","))
    results: dict[str, Any] = json.loads(JSON.read_text()) if JSON.is_file() else {}
    stages = [] if args.render else (args.only or ["yolo", "shufflenet", "channels", "timing"])
    with tempfile.TemporaryDirectory() as tmp:
        for stage in stages:
            t = time.perf_counter()
            say(f"stage {stage}")
            if stage == "yolo":
                results[stage] = stage_yolo(Path(tmp), args.quick)
            elif stage == "shufflenet":
                results[stage] = stage_shufflenet(Path(tmp), args.quick)
            elif stage == "channels":
                results[stage] = stage_channels(Path(tmp), args.quick)
            else:
                results[stage] = stage_timing(Path(tmp), args.quick, args.runs, args.threads)
            results[stage]["stage_seconds"] = time.perf_counter() - t
            save_stage(stage, results[stage])  # merged with what other runs (--only) wrote
            results = json.loads(JSON.read_text())
    write_text(RESULTS / "prune_recon.md", render(results))
    plot(results, RESULTS / "prune_recon.png")
    say(f"wrote {RESULTS / 'prune_recon.md'}")


if __name__ == "__main__":
    main()
