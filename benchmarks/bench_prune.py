"""Pruning (onnxfit.pruning.unstructured / prune_channels / sparse, onnxfit.pruning), in one run.

1. **File size**, zoo YOLOv3-tiny: FP32 as built (the plain baseline), FP16, FP16 + 70 %
   global magnitude pruning stored dense, as ONNX ``sparse_initializer`` (COO, int64 indices;
   built at the protobuf level since onnx-ir cannot hold it) and as onnxfit's bitmask + values
   form; every file loaded in plain onnxruntime and its outputs compared with the dense masked
   FP16 model (they must be identical), with session-creation time.
2. **Channels**, zoo ResNet-18 at ratio 0.3 (rounded to multiples of 8, the default, and exact):
   parameters, GFLOPs, activation arena (greedy plan), file size, and batch-1 latency on this
   CPU with 1 and with 2 intra-op threads, measured **interleaved** in one process against the
   dense model in plain onnxruntime (same session options), with a fixed numpy workload timed
   before and after (and the load average) to show how busy the shared cores were.
3. **Accuracy**, real models in ../shared/data: ShuffleNetV2 (zoo INT8 dequantized to FP32)
   top-1 on imagenet-sample and YOLOX-Nano mAP@0.5 on coco-sample, per sparsity / channel ratio
   (one-shot: no fine-tuning), and the budget mode (per-layer sensitivity scan, then per-layer
   ratios) at ``--max-accuracy-drop 1.0``: scan on a subset, final check on the full set.

Run:  .venv/bin/python benchmarks/bench_prune.py [--quick] [--skip-accuracy] [--skip-budget]
Writes benchmarks/results/prune.md and prune.json (``--quick``: fewer runs, images, levels).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxfit import io, pruning, zoo
from onnxfit.passes.fp16 import Fp16Pass
from onnxfit.pruning.channels import PruneChannelsPass
from onnxfit.pruning.sparse import SparseStoragePass, nonzero_mask
from onnxfit.pruning.unstructured import PrunePass

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results" / "prune.md"
MIB = 1024 * 1024
#: intra-op threads measured: 1 is steady on a shared 2-core host; 2 uses both cores
THREADS = (1, 2)


def _busy_probe() -> float:
    a = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    t = time.perf_counter()
    for _ in range(50):
        a = np.tanh(a @ a.T * 1e-3)
    return (time.perf_counter() - t) * 1e3


def _session(model: bytes | str, threads: int | None = None) -> tuple[ort.InferenceSession, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or os.cpu_count() or 1
    t = time.perf_counter()
    s = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t


# ---------------------------------------------------------------------------- 1. file size


def coo_proto(dense16: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    """``dense16`` with the named initializers moved to ``sparse_initializer`` (linear COO)."""
    proto = onnx.ModelProto()
    proto.CopyFrom(dense16)
    keep = []
    for init in proto.graph.initializer:
        if init.name not in names:
            keep.append(init)
            continue
        arr = onnx.numpy_helper.to_array(init)
        idx = np.flatnonzero(nonzero_mask(arr)).astype(np.int64)
        values = onnx.numpy_helper.from_array(arr.reshape(-1)[idx], init.name)
        indices = onnx.numpy_helper.from_array(idx, init.name + ".indices")
        proto.graph.sparse_initializer.append(
            onnx.helper.make_sparse_tensor(values, indices, list(arr.shape))
        )
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    return proto


def file_sizes(tmp: Path) -> dict[str, Any]:
    m = zoo.yolov3_tiny(seed=0)
    fp32 = io.save(m, tmp / "y32.onnx").bytes
    m16 = io.from_proto(io.to_proto(m))
    Fp16Pass()(m16)
    fp16 = io.save(m16, tmp / "y16.onnx").bytes
    p = PrunePass(sparsity=0.7)
    p(m)
    Fp16Pass()(m)
    pruned = io.save(m, tmp / "y16p.onnx").bytes
    names = [t.name for t in p.tensors]
    dense_proto = io.load_proto(tmp / "y16p.onnx")
    coo = coo_proto(dense_proto, names)
    (tmp / "y16coo.onnx").write_bytes(coo.SerializeToString())  # onnx-ir would drop it
    coo_bytes = (tmp / "y16coo.onnx").stat().st_size
    s = SparseStoragePass()
    s(m)
    bitmask = io.save(m, tmp / "y16bm.onnx").bytes
    x = np.random.default_rng(0).standard_normal((1, 3, 416, 416)).astype(np.float32)
    ref_sess, _ = _session(str(tmp / "y16p.onnx"))
    ref = ref_sess.run(None, {"input": x})
    rows = []
    for label, f, size in [
        ("FP32 (baseline, plain zoo model)", "y32.onnx", fp32),
        ("FP16", "y16.onnx", fp16),
        ("FP16 + 70 % pruned, dense storage", "y16p.onnx", pruned),
        ("FP16 + 70 %, ONNX sparse_initializer (COO)", "y16coo.onnx", coo_bytes),
        ("FP16 + 70 %, bitmask + values (onnxfit)", "y16bm.onnx", bitmask),
    ]:
        try:
            sess, load_s = _session(str(tmp / f))
            out = sess.run(None, {"input": x})
            same = (
                "n/a (not pruned)"
                if f in ("y32.onnx", "y16.onnx")
                else (
                    "identical"
                    if all(np.array_equal(a, b) for a, b in zip(out, ref, strict=True))
                    else "DIFFERENT"
                )
            )
            loads = f"{load_s * 1e3:.0f} ms"
        except Exception as exc:
            same, loads = f"load failed: {str(exc)[:80]}", "-"
        rows.append(
            {"model": label, "bytes": size, "ratio": size / fp32, "loads": loads, "outputs": same}
        )
    return {"rows": rows, "prune": p.stats, "storage": s.stats}


# ---------------------------------------------------------------------------- 2. channels


def channel_figures(tmp: Path, runs: int) -> dict[str, Any]:
    from onnxfit.profiling.bench import static_figures

    variants: dict[str, Any] = {"dense (plain onnxruntime)": zoo.resnet18(seed=0)}
    for label, mult in (("channels 0.3, multiples of 8", 8), ("channels 0.3, exact", 1)):
        m = zoo.resnet18(seed=0)
        PruneChannelsPass(ratio=0.3, multiple_of=mult)(m)
        variants[label] = m
    paths, rows = {}, []
    for i, (label, m) in enumerate(variants.items()):
        paths[label] = tmp / f"r{i}.onnx"
        size = io.save(m, paths[label]).bytes
        st, _ = static_figures(m, batch=1, target="cpu")
        params = sum(
            int(v.const_value.size)
            for v in m.graph.initializers.values()
            if v.const_value is not None
        )
        rows.append(
            {
                "model": label,
                "params": params,
                "gflops": (st.flops or 0) / 1e9,
                "arena": st.arena_bytes,
                "file": size,
            }
        )
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    probe_before, load_before = _busy_probe(), os.getloadavg()[0]
    for threads in THREADS:
        sessions = {k: _session(str(p), threads)[0] for k, p in paths.items()}
        for s in sessions.values():
            for _ in range(5):
                s.run(None, {"input": x})
        times: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(runs):
            for k, s in sessions.items():  # interleaved: each round runs every model once
                t = time.perf_counter()
                s.run(None, {"input": x})
                times[k].append(time.perf_counter() - t)
        base_ms = float(np.median(times[rows[0]["model"]])) * 1e3
        for row in rows:
            med = float(np.median(times[row["model"]])) * 1e3
            row[f"t{threads}"] = {
                "median_ms": med,
                "min_ms": min(times[row["model"]]) * 1e3,
                "p90_ms": float(np.percentile(times[row["model"]], 90)) * 1e3,
                "x": base_ms / med,
            }
    probe_after, load_after = _busy_probe(), os.getloadavg()[0]
    base = rows[0]
    for row in rows:
        for key in ("params", "gflops", "arena", "file"):
            row[f"{key}_x"] = base[key] / row[key] if row[key] else None
    return {
        "rows": rows,
        "runs": runs,
        "probe_ms": [probe_before, probe_after],
        "load": [load_before, load_after],
    }


# ---------------------------------------------------------------------------- 3. accuracy


def _models(data: Path) -> dict[str, Any]:
    from onnxfit.passes.cleanup import CleanupPass
    from onnxfit.passes.dequantize import DequantizePass

    shuffle = io.load(data / "models" / "shufflenet-v2-12-qdq.onnx")
    DequantizePass()(shuffle)
    CleanupPass()(shuffle)
    yolox = io.load(data / "models" / "yolox_nano.onnx")
    return {"ShuffleNetV2 (FP32)": shuffle, "YOLOX-Nano": yolox}


def _metrics(
    name: str, data: Path, quick: bool
) -> tuple[pruning.Metric, pruning.Metric, list[dict[str, np.ndarray]]]:
    """(scan metric on a subset, full metric, 16 calibration feeds) for one model."""
    if name.startswith("ShuffleNet"):
        from onnxfit.verify import load_eval_set

        x, y = load_eval_set(data / "imagenet-sample", "imagenet", limit=100 if quick else None)
        sub = 50 if quick else 200
        step = max(1, len(x) // sub)
        calib = [{"input": x[i : i + 1]} for i in range(1, len(x), max(1, len(x) // 16))][:16]
        return (
            pruning.top1_metric(x[::step][:sub], y[::step][:sub]),
            pruning.top1_metric(x, y),
            calib,
        )
    from onnxfit.data.images import list_images, preprocess

    imgs = list_images(data / "coco-sample" / "images", recursive=True)
    calib = [{"images": preprocess(p, "yolox")[None]} for p in imgs[:: max(1, len(imgs) // 16)]]
    full = pruning.map50_metric(data / "coco-sample", limit=16 if quick else None)
    scan = full if quick else pruning.map50_metric(data / "coco-sample", limit=32)
    return scan, full, calib[:16]


LEVELS = {
    "unstructured": ((0.3, 0.5, 0.7), (0.1, 0.3, 0.5, 0.7, 0.9)),  # (quick, full)
    "channels": ((0.1, 0.3), (0.1, 0.2, 0.3, 0.5)),
}


def accuracy(data: Path, quick: bool, budget: bool, on: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, model in _models(data).items():
        scan_metric, metric, calib = _metrics(name, data, quick)
        base = metric.evaluate(model)
        rows = [{"kind": "dense", "level": 0.0, "score": base, "drop": 0.0}]
        variants: list[tuple[str, pruning.Kind, dict[str, Any]]] = [
            ("unstructured", "unstructured", {}),
            ("channels, filter L1", "channels", {}),
            ("channels, data (16 images) + mean compensation", "channels", {"feeds": calib}),
        ]
        for label, kind, opts in variants:
            for r in LEVELS[kind][0 if quick else 1]:
                t = time.perf_counter()
                score = metric.evaluate(pruning.prune_copy(model, kind, ratio=r, **opts))
                rows.append(
                    {
                        "kind": label,
                        "unit": kind,
                        "level": r,
                        "score": score,
                        "drop": base - score,
                        "seconds": time.perf_counter() - t,
                    }
                )
                on(f"{name} {label} {r}: {metric.name} {score:.2f} (dense {base:.2f})")
        entry: dict[str, Any] = {"metric": metric.name, "rows": rows, "budget": {}}
        if budget:
            grids: dict[pruning.Kind, tuple[float, ...]] = {
                "unstructured": (0.5, 0.9) if quick else (0.1, 0.3, 0.5, 0.7, 0.9),
                "channels": (0.25, 0.5) if quick else (0.1, 0.2, 0.3, 0.5),
            }
            for kind, grid in grids.items():
                t = time.perf_counter()
                opts = {"feeds": calib} if kind == "channels" else {}
                res = pruning.fit_budget(
                    model, scan_metric, kind=kind, max_drop=1.0, ratios=grid, check=metric, **opts
                )
                d = res.to_dict()
                d["seconds"] = time.perf_counter() - t
                entry["budget"][kind] = d
                on(f"{name} budget {kind}: removed {res.removed:.3f}, drop {res.drop:.2f}")
        out[name] = entry
    return out


# ---------------------------------------------------------------------------- report


def _md_sizes(r: dict[str, Any]) -> list[str]:
    lines = [
        "| model | bytes | MiB | vs FP32 | loads in ORT | outputs vs dense masked FP16 |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for row in r["rows"]:
        lines.append(
            f"| {row['model']} | {row['bytes']:,} | {row['bytes'] / MIB:.2f} | "
            f"{100 * row['ratio']:.1f} % | {row['loads']} | {row['outputs']} |"
        )
    return lines


def _md_channels(r: dict[str, Any]) -> list[str]:
    cols = " | ".join(f"{t} thread{'s' * (t > 1)}: median ms (min) | x" for t in THREADS)
    lines = [
        f"| model | params | GFLOPs | arena MiB | file MiB | {cols} | params x | GFLOPs x | "
        "arena x |",
        "|---|" + "---:|" * (4 + 2 * len(THREADS) + 3),
    ]
    for row in r["rows"]:
        lat = " | ".join(
            f"{row[f't{t}']['median_ms']:.2f} ({row[f't{t}']['min_ms']:.2f}) | "
            f"{row[f't{t}']['x']:.2f}"
            for t in THREADS
        )
        lines.append(
            f"| {row['model']} | {row['params']:,} | {row['gflops']:.3f} | "
            f"{row['arena'] / MIB:.2f} | {row['file'] / MIB:.2f} | {lat} | {row['params_x']:.2f} "
            f"| {row['gflops_x']:.2f} | {row['arena_x']:.2f} |"
        )
    return lines


def _attempt(a: dict[str, Any]) -> str:
    how = f"t={a['tolerance']:.2f}" if a["tolerance"] is not None else f"first {a['prefix']}"
    return f"{how} ({a['layers']} layers) -> {a['drop']:.2f}"


def _md_accuracy(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, entry in r.items():
        m = entry["metric"]
        lines += [
            f"### {name} ({'top-1' if m == 'top1' else 'mAP@0.5'}, %)",
            "",
            f"| pruning | level | {m} | drop (pts) |",
            "|---|---:|---:|---:|",
        ]
        for row in entry["rows"]:
            level = (
                "-"
                if row["kind"] == "dense"
                else (
                    f"{100 * row['level']:.0f} % sparsity"
                    if row.get("unit") == "unstructured"
                    else f"{100 * row['level']:.0f} % channels"
                )
            )
            lines.append(f"| {row['kind']} | {level} | {row['score']:.2f} | {row['drop']:.2f} |")
        for kind, b in entry["budget"].items():
            worst = sorted(
                b["scan"]["rows"],
                key=lambda x: -max([d for d in x["drops"] if d is not None] or [0]),
            )[:8]
            lines += [
                "",
                f"Budget mode, {kind}, max drop 1.0 pt: per-layer ratios for "
                f"{len(b['ratios'])} of {len(b['scan']['rows'])} layers, "
                + (
                    f"{100 * b['removed']:.1f} % of the eligible weights set to zero, "
                    if kind == "unstructured"
                    else f"{100 * b['removed']:.1f} % of all Conv output channels removed "
                    f"(mean chosen ratio {100 * b['pruned_share']:.1f} % before rounding to "
                    "multiples of 8), "
                )
                + f"{m} {b['score']:.2f} (drop **{b['drop']:.2f}** pts on the full set); "
                f"{b['scan']['evaluations']} scan evaluations, {b['seconds']:.0f} s. "
                f"Attempts (tolerance or least-sensitive prefix -> drop): "
                + ", ".join(_attempt(a) for a in b["attempts"]),
                "",
                "Most sensitive layers in the scan (drop in pts at each ratio):",
                "",
                "| layer | size | " + " | ".join(f"{r:g}" for r in b["scan"]["ratios"]) + " |",
                "|---|---:|" + "---:|" * len(b["scan"]["ratios"]),
            ]
            for row in worst:
                cells = " | ".join("-" if d is None else f"{d:.2f}" for d in row["drops"])
                lines.append(f"| {row['layer']} | {row['size']:,} | {cells} |")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip-accuracy", action="store_true")
    ap.add_argument("--skip-budget", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    results: dict[str, Any] = {
        "quick": args.quick,
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
    }
    with tempfile.TemporaryDirectory() as tmp:
        print("1. file sizes (YOLOv3-tiny)", flush=True)
        results["sizes"] = file_sizes(Path(tmp))
        print("2. channels (ResNet-18)", flush=True)
        results["channels"] = channel_figures(Path(tmp), 30 if args.quick else 200)
    if not args.skip_accuracy and (DATA / "models").is_dir():
        print("3. accuracy (real models)", flush=True)
        results["accuracy"] = accuracy(
            DATA, args.quick, not args.skip_budget, lambda s: print("  ", s, flush=True)
        )
    results["seconds"] = time.perf_counter() - t0
    lines = [
        "# Pruning benchmark",
        "",
        f"Written by `benchmarks/bench_prune.py{' --quick' if args.quick else ''}` in one run "
        f"({results['seconds']:.0f} s); onnxruntime {ort.__version__}, CPU provider, "
        f"{os.cpu_count()} cores on this host. One-shot pruning: no fine-tuning anywhere.",
        "",
        "## 1. File size: zoo YOLOv3-tiny, FP16 + 70 % unstructured pruning",
        "",
        *_md_sizes(results["sizes"]),
        "",
        f"Pruned: {results['sizes']['prune']['weights_pruned']:,} of "
        f"{results['sizes']['prune']['weights_eligible']:,} eligible weights (first conv and "
        f"the two heads excluded: {', '.join(results['sizes']['prune']['excluded'])}). "
        "COO stores an int64 index per non-zero (10 B per FP16 non-zero): it is larger than "
        "dense FP16 at this density. The bitmask form costs 1 bit per weight + the FP16 "
        "non-zeros and is decoded by standard ops that onnxruntime constant-folds at session "
        "creation.",
        "",
        "## 2. Channel pruning: zoo ResNet-18, ratio 0.3, batch 1, this CPU",
        "",
        *_md_channels(results["channels"]),
        "",
        f"Latency: {results['channels']['runs']} interleaved rounds per thread count (every "
        "model once per round, same process, same session options; the dense model in plain "
        "onnxruntime is the baseline); 'x': dense median / pruned median (higher is better). "
        f"Busy probe before/after: {results['channels']['probe_ms'][0]:.0f} / "
        f"{results['channels']['probe_ms'][1]:.0f} ms (a fixed numpy workload; higher = the "
        f"shared cores were busier), load average {results['channels']['load'][0]:.2f} / "
        f"{results['channels']['load'][1]:.2f}. With 2 threads a run waits for the slower core, "
        "so other processes on this shared host add more noise there.",
        "",
    ]
    if "accuracy" in results:
        lines += [
            "## 3. Accuracy per pruning level (real models, ../shared/data)",
            "",
            "ShuffleNetV2: the zoo INT8 QDQ model dequantized to FP32, top-1 on "
            f"{'100' if args.quick else 'all 500'} imagenet-sample images. YOLOX-Nano: "
            f"mAP@0.5 on {'16' if args.quick else 'all 64'} coco-sample images "
            "(onnxfit.data decode + per-class NMS). Unstructured: global magnitude, "
            "first / last layers excluded. Channels: per coupling group, kept counts "
            "rounded to multiples of 8.",
            "",
            *_md_accuracy(results["accuracy"]),
        ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {OUT} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
