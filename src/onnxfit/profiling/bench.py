"""``bench``: latency, throughput and memory of one model per batch size, measured honestly.

For every batch size, :func:`bench` opens a worker — by default a fresh child process
(:mod:`onnxfit.profiling.worker`), so allocations of one measurement never show in the next —
and records: session-creation time, first-inference time, ``warmup`` untimed runs, then
``iterations`` timed runs (or as many as fit in ``duration`` seconds, at least 10), each timed
alone with ``time.perf_counter``; latency min / median / mean / p90 / p99 / max (percentiles by
linear interpolation, :mod:`onnxfit.profiling.stats`); throughput = batch / mean latency; the
child's peak RSS (VmHWM) beside its RSS before the session existed, and device memory where
nvidia-smi reports it. Beside the measurements stand the static figures from the analysis: the
activation arena and the weights + arena + IO estimate of the memory plan
(:func:`onnxfit.analysis.memory.estimate_runtime_memory`), and the latency projected on the
target by the roofline cost model (:func:`onnxfit.analysis.cost.analyze_cost`).

Stable numbers: the child is pinned to as many of the allowed cores as it runs threads (the
last ones); a fixed workload is timed before and after each measurement and the share of the
cores other processes used meanwhile is read from /proc/stat
(:class:`~onnxfit.profiling.system.Noise`); a measurement whose probe moved 10 % or more, or
during which others took 25 % of the cores, is flagged not quiet.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.profiling import system
from onnxfit.profiling.client import open_worker
from onnxfit.profiling.opcost import device_target, join_cost
from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.profiling.results import BatchResult, BenchResult, Static
from onnxfit.profiling.stats import summarize
from onnxfit.profiling.system import CpuMonitor, Noise
from onnxfit.profiling.worker import RUNTIMES
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

#: called with (done, total, label); total is None while unknown (duration mode)
ProgressFn = Callable[[int, int | None, str], None]
MIN_ITERATIONS = 10
_CHUNK_S = 0.25


def count_parameters(model: ir.Model) -> int:
    """Parameters the way ``onnxfit inspect`` counts them (torchvision's convention)."""
    from onnxfit.analysis.inspect import count_params

    return count_params(model)[0]


def static_figures(
    model: ir.Model,
    *,
    batch: int,
    target: str | Target,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> tuple[Static, ir.Model | None]:
    """Memory-plan and cost-model figures at ``batch`` (and the shape-inferred model)."""
    from onnxfit.analysis.cost import analyze_cost
    from onnxfit.analysis.memory import estimate_runtime_memory
    from onnxfit.analysis.shapes import infer_shapes

    shapes = {k: list(v) for k, v in (input_shapes or {}).items()} or None
    try:
        shaped = infer_shapes(model, batch=batch, input_shapes=shapes)
        mem = estimate_runtime_memory(model, batch=batch, input_shapes=shapes)
        cost = analyze_cost(shaped, target=target)
    except InputError as exc:
        logger.warning("static analysis at batch %d failed: %s", batch, exc.message)
        return Static(note=f"analysis failed: {exc.message}"), None
    return (
        Static(
            arena_bytes=mem.arena_bytes,
            lower_bound_bytes=mem.plan.lower_bound_bytes,
            weights_bytes=mem.weights_bytes,
            runtime_bytes=int(mem),
            projected_s=cost.time_s,
            flops=cost.flops,
        ),
        shaped,
    )


def parse_batches(text: str | Sequence[int]) -> tuple[int, ...]:
    """``"1,8,32"`` (or a sequence) -> (1, 8, 32); anything but positive ints raises InputError."""
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[int] = []
    for item in items:
        try:
            b = int(str(item).strip())
        except ValueError:
            b = 0
        if b <= 0 or str(item).strip() in ("", "True", "False"):
            raise InputError(
                f"bad batch size {str(item).strip()!r} in --batch {text!r}"
                if isinstance(text, str)
                else f"bad batch size {item!r}",
                hint="give positive integers separated by commas, e.g. --batch 1,8,32",
            )
        if b not in out:
            out.append(b)
    if not out:
        raise InputError("no batch size given", hint="e.g. --batch 1,8,32")
    return tuple(out)


def check_options(*, warmup: int, iterations: int | None, duration: float | None) -> None:
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}", hint="--warmup 10")
    if iterations is not None and iterations < 1:
        raise InputError(f"--iterations must be >= 1, got {iterations}", hint="--iterations 100")
    if duration is not None and not duration > 0:
        raise InputError(f"--duration must be > 0 seconds, got {duration}", hint="--duration 10")
    if iterations is not None and duration is not None:
        raise InputError(
            "give --iterations or --duration, not both", hint="--iterations 100 or --duration 10"
        )


def pin_cpus(threads: int | None) -> list[int] | None:
    """The CPUs a child running ``threads`` threads is pinned to: the last ``threads`` allowed
    ones (core 0 takes more interrupts); None when that is every allowed core anyway."""
    cpus = system.allowed_cpus()
    n = threads or len(cpus)
    if n >= len(cpus):
        return None
    return cpus[-n:]


def timed_runs(
    worker: Any,
    *,
    iterations: int | None,
    duration: float | None,
    first_s: float,
    on_progress: ProgressFn | None = None,
    label: str = "",
) -> tuple[list[float], list[float] | None]:
    """Ask ``worker`` for timed runs in chunks of ~0.25 s (so progress can be shown)."""
    est = max(first_s / 2, 1e-5)
    times: list[float] = []
    gpu: list[float] | None = None
    t0 = time.perf_counter()
    total = iterations
    while True:
        if iterations is not None:
            left = iterations - len(times)
        else:
            assert duration is not None
            if time.perf_counter() - t0 >= duration and len(times) >= MIN_ITERATIONS:
                break
            left = 10**9
        if left <= 0:
            break
        chunk = max(1, min(left, int(_CHUNK_S / est)))
        answer = worker.call("run", iterations=chunk)
        times += answer["times"]
        if answer.get("gpu_times") is not None:
            gpu = (gpu or []) + answer["gpu_times"]
        est = max(summarize(answer["times"]).median, 1e-5)
        if on_progress:
            on_progress(len(times), total, label)
    return times, gpu


def bench(
    model: str | os.PathLike[str],
    *,
    target: str = "cpu",
    providers: Sequence[str] | None = None,
    batches: Sequence[int] = (1,),
    warmup: int = 10,
    iterations: int | None = 100,
    duration: float | None = None,
    threads: int | None = None,
    io_binding: bool = False,
    profile: bool = False,
    profile_runs: int = 20,
    isolated: bool = True,
    runtime: str = "onnxfit",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    pin: bool = True,
    noise: bool = True,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
) -> BenchResult:
    """Measure ``model`` at each batch size (see the module docstring); a :class:`BenchResult`.

    ``target`` sets the session settings and the projection; ``providers`` overrides the
    target's providers (a missing one falls back, noted in the result). ``isolated=False``
    measures in this process. ``runtime="ort"`` runs plain onnxruntime with default options.
    """
    path = Path(model)
    tgt = get_target(target)
    if duration is not None:
        iterations = None
    check_options(warmup=warmup, iterations=iterations, duration=duration)
    batch_list = parse_batches(list(batches))
    if runtime not in RUNTIMES:
        raise InputError(f"unknown runtime {runtime!r}", hint=f"one of {', '.join(RUNTIMES)}")
    ir_model = io.load(path)
    size = io.file_size(path).bytes
    results: list[BatchResult] = []
    notes: list[str] = []
    for b in batch_list:
        static, shaped = static_figures(ir_model, batch=b, target=tgt, input_shapes=input_shapes)
        if static.note:
            notes.append(f"batch {b}: {static.note}")
        res = measure_batch(
            path,
            batch=b,
            target=target if isinstance(target, str) else tgt.name,
            providers=providers,
            warmup=warmup,
            iterations=iterations,
            duration=duration,
            threads=threads,
            io_binding=io_binding,
            profile=profile,
            profile_runs=profile_runs,
            isolated=isolated,
            runtime=runtime,
            input_shapes=input_shapes,
            pin=pin,
            noise=noise,
            seed=seed,
            static=static,
            on_progress=on_progress,
        )
        if res.profile is not None and shaped is not None:
            dev = (
                tgt.name if res.provider == "DmlExecutionProvider" else device_target(res.provider)
            )
            res = _with_profile(res, join_cost(res.profile, shaped, target=dev))
        results.append(res)
    first = results[0]
    if first.provider != (providers[0] if providers else tgt.providers[0]):
        notes.append(
            f"{(providers or tgt.providers)[0]} is not available here; measured on "
            f"{first.provider} (the projection is still for {tgt.name})"
        )
    for r in results:
        if r.noise is not None and not r.noise.quiet:
            notes.append(
                f"batch {r.batch}: the machine was busy (probe drift {r.noise.drift:+.0%}, "
                f"others used {r.noise.other_cpu_share or 0:.0%} of the cores): expect noise"
            )
    return BenchResult(
        model=str(path),
        file_bytes=size,
        parameters=count_parameters(ir_model),
        target=tgt.name,
        runtime=runtime,
        batches=tuple(results),
        projection=tgt.projection_label,
        machine=system.machine_description(),
        options={
            "providers": list(providers) if providers else None,
            "warmup": warmup,
            "iterations": iterations,
            "duration": duration,
            "threads": threads,
            "io_binding": io_binding,
            "isolated": isolated,
            "pin": pin,
            "seed": seed,
        },
        notes=tuple(notes),
    )


def _with_profile(res: BatchResult, prof: OrtProfile) -> BatchResult:
    from dataclasses import replace

    return replace(res, profile=prof)


def measure_batch(
    path: Path,
    *,
    batch: int,
    target: str,
    providers: Sequence[str] | None,
    warmup: int,
    iterations: int | None,
    duration: float | None,
    threads: int | None,
    io_binding: bool,
    profile: bool,
    profile_runs: int,
    isolated: bool,
    runtime: str,
    input_shapes: Mapping[str, Sequence[int]] | None,
    pin: bool,
    noise: bool,
    seed: int,
    static: Static,
    on_progress: ProgressFn | None,
) -> BatchResult:
    """One batch size in one (fresh) worker; see :func:`bench`."""
    label = f"{path.name} b{batch}"
    probe_before = system.noise_probe() if noise else 0.0
    monitor = CpuMonitor()
    cpus = pin_cpus(threads) if pin and isolated else None
    with open_worker(isolated=isolated) as worker:
        if on_progress:
            on_progress(0, iterations, f"{label}: creating session")
        info = worker.call(
            "load",
            model=str(path),
            batch=batch,
            target=target,
            providers=list(providers) if providers else None,
            threads=threads,
            io_binding=io_binding,
            runtime=runtime,
            input_shapes={k: list(v) for k, v in (input_shapes or {}).items()} or None,
            cpus=cpus,
            seed=seed,
        )
        if warmup:
            worker.call("run", iterations=warmup)
        times, gpu = timed_runs(
            worker,
            iterations=iterations,
            duration=duration,
            first_s=info["first_s"],
            on_progress=on_progress,
            label=label,
        )
        mem = worker.call("memory")
        prof = None
        if profile:
            if on_progress:
                on_progress(len(times), iterations, f"{label}: ORT profile")
            prof = OrtProfile.from_dict(
                worker.call("profile", runs=profile_runs, warmup=min(3, warmup or 1))["profile"]
            )
    child_cpu = mem["cpu_s"] if worker.isolated else 0.0
    other = monitor.stop(child_cpu)
    noise_res = None
    if noise:
        noise_res = Noise(
            probe_before_s=probe_before,
            probe_after_s=system.noise_probe(),
            other_cpu_share=other,
            load_average=system.load_average(),
        )
    return BatchResult(
        batch=batch,
        provider=info["provider"],
        threads=info.get("threads"),
        session_s=info["session_s"],
        first_s=info["first_s"],
        warmup=warmup,
        latency=summarize(times),
        samples=tuple(times),
        peak_rss=mem["peak_rss"],
        rss_baseline=info.get("rss_baseline"),
        device_bytes=mem.get("device_bytes"),
        static=static,
        noise=noise_res,
        pid=info["pid"],
        isolated=worker.isolated,
        gpu_latency=summarize(gpu) if gpu else None,
        profile=prof,
        settings=info.get("settings", {}),
        pinned_cpus=tuple(info["pinned_cpus"]) if info.get("pinned_cpus") else None,
    )
