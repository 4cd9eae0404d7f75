"""Does writing com.microsoft FusedConv offline help on this CPU, against ORT's own fusion?

Zoo ResNet-18 (BatchNorm folded first), batch 1, onnxruntime CPU with 2 intra-op threads, in
one process, interleaved round by round so that host noise hits every variant alike:

* ``plain / ORT ALL``        the zoo model as is (the plain onnxruntime baseline);
* ``folded / BASIC``         BN folded, Conv+Relu left for nobody (ORT BASIC does not fuse);
* ``folded / EXTENDED``      BN folded, ORT's EXTENDED level makes FusedConv at load;
* ``fusedconv / BASIC``      our ``fuse(emit="fusedconv")`` output at BASIC (the DirectML-safe
                             level: what an offline-fused model gets without EXTENDED);
* ``fusedconv / EXTENDED``   the same at EXTENDED.

Writes ``benchmarks/results/fusedconv.md``. ``--quick`` runs a short measurement. On a busy
machine the medians mostly measure the neighbours: compare variants by ``min`` and by the
interleaved medians, never against numbers from another run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from onnxfit import io, zoo
from onnxfit.optimizer.registry import make_pass
from onnxfit.passes.base import run_passes

LEVELS = {
    "ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}


def _session(model_bytes: bytes, level: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (proves it works)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--iters", type=int, default=10, help="runs per variant per round")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "fusedconv.md"))
    args = parser.parse_args()
    rounds, iters = (3, 3) if args.quick else (args.rounds, args.iters)

    plain = zoo.resnet18(seed=0)
    plain_bytes = io.to_bytes(plain)
    folded = io.from_proto(io.to_proto(plain))
    run_passes(folded, [make_pass("cleanup"), make_pass("fold-batchnorm")])
    folded_bytes = io.to_bytes(folded)
    fused = io.from_proto(io.to_proto(folded))
    fuse = make_pass("fuse", emit="fusedconv", provider="cpu")
    run_passes(fused, [fuse])
    fused_bytes = io.to_bytes(fused)

    variants = {
        "plain / ORT ALL (baseline)": (plain_bytes, "ALL"),
        "folded / BASIC": (folded_bytes, "BASIC"),
        "folded / EXTENDED": (folded_bytes, "EXTENDED"),
        "fusedconv / BASIC": (fused_bytes, "BASIC"),
        "fusedconv / EXTENDED": (fused_bytes, "EXTENDED"),
    }
    sessions = {k: _session(b, level) for k, (b, level) in variants.items()}
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    ref = sessions["plain / ORT ALL (baseline)"].run(None, {"input": x})[0]
    errors = {
        k: float(np.abs(s.run(None, {"input": x})[0] - ref).max()) for k, s in sessions.items()
    }
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for name, sess in sessions.items():
            sess.run(None, {"input": x})  # warm
            for _ in range(iters):
                t0 = time.perf_counter()
                sess.run(None, {"input": x})
                times[name].append((time.perf_counter() - t0) * 1e3)

    base = statistics.median(times["plain / ORT ALL (baseline)"])
    lines = [
        "# FusedConv written offline vs onnxruntime's own fusion (ResNet-18, CPU)",
        "",
        f"Command: `.venv/bin/python benchmarks/fusedconv.py{' --quick' if args.quick else ''}`  ",
        f"onnxruntime {ort.__version__}, 2 intra-op threads, batch 1, {rounds} rounds x {iters} "
        "runs per variant, interleaved. fuse stats: " + str(fuse.report().stats),
        "",
        "| variant | median ms | min ms | p10 ms | p90 ms | median vs baseline "
        "| max abs diff vs baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, ts in times.items():
        q = np.percentile(ts, [10, 50, 90])
        lines.append(
            f"| {name} | {q[1]:.2f} | {min(ts):.2f} | {q[0]:.2f} | {q[2]:.2f} | {base / q[1]:.2f}x "
            f"| {errors[name]:.2e} |"
        )
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
