"""The first-run activation estimate against ONNX Runtime's own CPU arena, in one run.

For each model: the greedy offset plan (the floor), every tensor its own buffer (naive), the
BFC-arena simulation :func:`onnxfit.analysis.allocators.bfc_arena_bytes` (what ``--budget``
uses for CPU targets) and what ORT 1.x's CPU arena really added during the first run, read from
its log by :func:`onnxfit.runtime.arenastat.measure_cpu_arena` (graph optimization level BASIC,
memory patterns off: the DirectML session settings; QDQ groups unfused). The DirectML bucket
pool estimate is listed beside it; it cannot be measured on this machine.

Run:  .venv/bin/python benchmarks/bench_memory_estimate.py
Writes benchmarks/results/memory_estimate.md.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from onnxfit import io, zoo
from onnxfit.analysis.allocators import (
    bfc_arena_bytes,
    bucket_pool_bytes,
    ep_lifetimes,
    no_reuse_bytes,
)
from onnxfit.analysis.memory import plan_memory
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.runtime.arenastat import measure_cpu_arena

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", ROOT.parent / "shared" / "data"))
OUT = ROOT / "benchmarks" / "results" / "memory_estimate.md"
MIB = 2**20


def _models(tmp: Path) -> list[tuple[str, Path, int]]:
    out = []
    for name in ("resnet18", "yolov3-tiny"):
        p = tmp / f"{name}.onnx"
        io.save(zoo.build(name), p)
        out.append((name, p, 1))
    for batch in (4,):
        m = infer_shapes(zoo.build("resnet18"), batch=batch)
        p = tmp / f"resnet18-b{batch}.onnx"
        io.save(m, p)
        out.append((f"resnet18 b{batch}", p, batch))
    for f in ("yolox_nano.onnx", "shufflenet-v2-12-qdq.onnx"):
        if (DATA / "models" / f).exists():
            out.append((f, DATA / "models" / f, 1))
    return out


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for label, path, batch in _models(Path(d)):
            shaped = infer_shapes(io.load(path), batch=batch)
            cpu = ep_lifetimes(shaped, provider="CPUExecutionProvider", qdq=False)
            dml = ep_lifetimes(shaped, provider="DmlExecutionProvider")
            est = bfc_arena_bytes(cpu)
            got = measure_cpu_arena(path, level="basic").first_run_bytes
            plan = plan_memory(shaped)
            rows.append(
                (
                    label,
                    plan.arena_bytes / MIB,
                    no_reuse_bytes(cpu) / MIB,
                    est / MIB,
                    got / MIB,
                    (est - got) / got * 100 if got else float("nan"),
                    bucket_pool_bytes(dml) / MIB,
                )
            )
            print(rows[-1], flush=True)
    head = "| model | planned floor MiB | naive MiB | BFC estimate MiB | ORT CPU arena, 1st run MiB"
    head += " | estimate error | DirectML pool estimate MiB |\n|---|---|---|---|---|---|---|\n"
    body = "".join(
        f"| {r[0]} | {r[1]:.2f} | {r[2]:.2f} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:+.1f} % "
        f"| {r[6]:.2f} |\n"
        for r in rows
    )
    import onnxruntime as ort

    text = (
        "# First-run activation memory: estimate vs ONNX Runtime's CPU arena\n\n"
        f"onnxruntime {ort.__version__}, CPU provider, graph optimization BASIC, memory patterns "
        "off, one run of zeros; measured = growth of the BFC arena's `Total allocated bytes` "
        "during the first run (ORT's verbose log). Command: "
        "`python benchmarks/bench_memory_estimate.py`.\n\n" + head + body
    )
    OUT.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
