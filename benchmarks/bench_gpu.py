"""GPU benchmark: onnxfit's CUDA session settings vs a plain ONNX Runtime CUDA session.

Runs on a machine with onnxruntime-gpu (the lead ran it on the H100 machine). In ONE process, for
the zoo ResNet-18 and YOLOv3-tiny at batch 1 and 64:

* plain ORT: ``InferenceSession(providers=["CUDAExecutionProvider"])``, numpy in / numpy out;
* onnxfit ``Session(target="cuda")`` (IO binding, static shapes via free-dimension overrides);
* onnxfit ``Session(..., cuda_graph=True)`` (CUDA graph replay);
* the same three on our FP16 model (fold-batchnorm + fp16 passes).

Rounds are interleaved (A, B, C, A, B, C, ...) and each figure is the median over rounds of the
mean of a round. Outputs are checked against the CPU provider's. Writes a Markdown report.

    python benchmarks/bench_gpu.py [--quick] [-o benchmarks/results/gpu.md]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnxruntime as ort

from onnxfit import io, zoo
from onnxfit.passes.base import run_passes
from onnxfit.passes.fold_batchnorm import FoldBatchNormPass
from onnxfit.passes.fp16 import Fp16Pass
from onnxfit.runtime.session import Session


def _fp16(model: ir.Model) -> ir.Model:
    copy = io.from_proto(io.to_proto(model))
    run_passes(copy, [FoldBatchNormPass(), Fp16Pass()])
    return copy


def _time_interleaved(
    fns: dict[str, Callable[[], object]], *, rounds: int, per_round: int
) -> dict[str, float]:
    for fn in fns.values():  # warm-up (and graph capture)
        for _ in range(5):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(per_round):
                fn()
            samples[name].append((time.perf_counter() - t0) / per_round)
    return {k: statistics.median(v) for k, v in samples.items()}


def _callables(
    plain: ort.InferenceSession, ours: Session, graph: Session, x: np.ndarray
) -> dict[str, Callable[[], object]]:
    """What each row times: numpy in/out, then inputs and outputs resident on the GPU."""
    feeds = {"input": x}
    x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    bound = plain.io_binding()
    bound.bind_ortvalue_input("input", x_dev)
    for o in plain.get_outputs():
        bound.bind_output(o.name, "cuda", 0)
    return {
        "plain ORT run (numpy)": lambda: plain.run(None, feeds),
        "onnxfit Session.run (numpy)": lambda: ours.run(feeds),
        "onnxfit CUDA graph (numpy)": lambda: graph.run(feeds),
        "plain ORT IO binding (on GPU)": lambda: plain.run_with_iobinding(bound),
        "onnxfit run_device (on GPU)": lambda: ours.run_device({"input": x_dev}),
    }


def _first_output(value: object) -> np.ndarray:
    if isinstance(value, dict):
        value = next(iter(value.values()))
    if isinstance(value, list):
        value = value[0]
    if isinstance(value, ort.OrtValue):
        return np.asarray(value.numpy())
    return np.asarray(value)


def bench_model(name: str, model: ir.Model, batch: int, rounds: int) -> list[list[str]]:
    hw = (224, 224) if name == "resnet18" else (416, 416)
    x = np.random.default_rng(0).standard_normal((batch, 3, *hw)).astype(np.float32)
    rows = []
    cpu = ort.InferenceSession(io.to_bytes(model), providers=["CPUExecutionProvider"])
    ref = cpu.run(None, {"input": x})[0]
    scale = float(np.max(np.abs(ref)))
    for prec, m in (("fp32", model), ("fp16", _fp16(model))):
        plain = ort.InferenceSession(io.to_bytes(m), providers=["CUDAExecutionProvider"])
        ours = Session(m, target="cuda", free_dims={"batch": batch}, strict=True)
        graph = Session(m, target="cuda", free_dims={"batch": batch}, cuda_graph=True, strict=True)
        fns = _callables(plain, ours, graph, x)
        errs = {}
        for label, fn in fns.items():
            if "IO binding" in label:
                fn()
                errs[label] = "-"
                continue
            out = _first_output(fn())
            errs[label] = f"{float(np.max(np.abs(out.astype(np.float32) - ref))) / scale:.1e}"
        times = _time_interleaved(fns, rounds=rounds, per_round=20 if batch == 1 else 5)
        base = times["plain ORT run (numpy)"]
        for label, t in times.items():
            rows.append(
                [
                    name,
                    prec,
                    str(batch),
                    label,
                    f"{t * 1e3:.3f}",
                    f"{batch / t:,.0f}",
                    f"{base / t:.2f}x",
                    errs[label],
                ]
            )
        for s in (ours, graph):
            s.close()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("-o", "--output", default="benchmarks/results/gpu.md")
    args = ap.parse_args()
    rounds = 5 if args.quick else 15
    rows: list[list[str]] = []
    for name in ("resnet18", "yolov3-tiny"):
        model = zoo.build(name)
        for batch in (1, 64):
            rows += bench_model(name, model, batch, rounds)
            print(rows[-1])
    gpu = "unknown GPU"
    try:
        import subprocess

        gpu = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        pass
    head = [
        "model",
        "precision",
        "batch",
        "session",
        "latency ms",
        "img/s",
        "vs plain",
        "max err / max |ref|",
    ]
    lines = [
        "# GPU: onnxfit CUDA sessions vs plain ONNX Runtime",
        "",
        f"{gpu}; onnxruntime-gpu {ort.__version__}; Python {platform.python_version()}; "
        f"{rounds} interleaved rounds, median of round means.",
        "",
        "Command: `python benchmarks/bench_gpu.py" + (" --quick" if args.quick else "") + "`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
