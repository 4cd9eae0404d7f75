"""``compare``: several models measured interleaved in one run, and the before/after table.

Every model gets its own fresh child process (:mod:`onnxfit.profiling.worker`), so each one's
peak RSS is its own; the children are loaded, warmed up, then driven in rounds —
``A x k, B x k, A x k, B x k, ...`` (:func:`interleave_schedule`) — one child running at a time,
so a slow minute of the machine hits every model alike. Beside the timings stand file size,
parameters, the memory plan (arena; weights + arena + IO), the projection on the target and,
with an evaluation folder, accuracy (the one evaluator, :mod:`onnxfit.verify.evaluator`).

Ratios are against the first model and read "times better": size, memory and latency
``first / this``; throughput ``this / first``; accuracy is a difference in points.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.profiling import system
from onnxfit.profiling.bench import (
    ProgressFn,
    Static,
    check_options,
    count_parameters,
    pin_cpus,
    static_figures,
)
from onnxfit.profiling.client import open_worker
from onnxfit.profiling.compare_result import CompareResult, ModelStats
from onnxfit.profiling.stats import summarize
from onnxfit.profiling.system import CpuMonitor, Noise
from onnxfit.profiling.worker import RUNTIMES
from onnxfit.targets import get_target
from onnxfit.verify.evaluator import Accuracy

__all__ = ["CompareResult", "ModelStats", "compare", "interleave_schedule"]

logger = logging.getLogger(__name__)


def interleave_schedule(n_models: int, rounds: int) -> list[int]:
    """The order models run in: ``[0, 1, ..., n-1]`` repeated ``rounds`` times."""
    if n_models < 1 or rounds < 1:
        raise InputError(f"interleave needs >= 1 model and round, got {n_models}, {rounds}")
    return [m for _ in range(rounds) for m in range(n_models)]


def _names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise InputError(f"{len(names)} names for {len(paths)} models")
        return list(names)
    out = [p.name for p in paths]
    if len(set(out)) < len(out):  # same file name in different folders
        out = [str(p) for p in paths]
    return out


def compare(
    models: Sequence[str | os.PathLike[str]],
    *,
    target: str = "cpu",
    providers: Sequence[str] | None = None,
    batch: int = 1,
    warmup: int = 10,
    rounds: int = 10,
    per_round: int = 10,
    threads: int | None = None,
    io_binding: bool = False,
    isolated: bool = True,
    runtime: str | Sequence[str] = "onnxfit",
    names: Sequence[str] | None = None,
    eval_data: str | os.PathLike[str] | None = None,
    eval_limit: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    pin: bool = True,
    noise: bool = True,
    seed: int = 0,
    layers: int = 0,
    on_progress: ProgressFn | None = None,
) -> CompareResult:
    """Measure ``models`` interleaved (see the module docstring); a :class:`CompareResult`.

    ``runtime`` is one runtime for all, or one per model ("onnxfit" or "ort" — plain
    onnxruntime defaults, the baseline). ``rounds`` x ``per_round`` timed runs per model.
    ``layers`` > 0 adds, for every model after the first, its ``layers`` nodes adding the most
    error against the first (:func:`layer_errors`).
    """
    paths = [Path(m) for m in models]
    if not paths:
        raise InputError("compare needs at least one model", hint="onnxfit compare A.onnx B.onnx")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InputError(f"--batch must be a positive integer, got {batch!r}", hint="--batch 1")
    if rounds < 1 or per_round < 1:
        raise InputError(
            f"rounds and iterations per round must be >= 1, got {rounds} and {per_round}",
            hint="--rounds 10 --per-round 10",
        )
    check_options(warmup=warmup, iterations=rounds * per_round, duration=None)
    runtimes = [runtime] * len(paths) if isinstance(runtime, str) else list(runtime)
    if len(runtimes) != len(paths) or any(r not in RUNTIMES for r in runtimes):
        raise InputError(f"runtime must be one of {RUNTIMES} (one, or one per model)")
    labels = _names(paths, names)
    tgt = get_target(target)
    if eval_data is not None:
        from onnxfit.verify.evalset import dataset_task

        dataset_task(eval_data)  # check the folder before the long part
    irs = [io.load(p) for p in paths]  # ModelLoadError for a bad file, before anything runs
    statics: list[Static] = []
    notes: list[str] = []
    for label, m in zip(labels, irs, strict=True):
        st, _ = static_figures(m, batch=batch, target=tgt, input_shapes=input_shapes)
        if st.note:
            notes.append(f"{label}: {st.note}")
        statics.append(st)
    schedule = interleave_schedule(len(paths), rounds)
    total = len(schedule) * per_round
    probe_before = system.noise_probe() if noise else 0.0
    monitor = CpuMonitor()
    times: list[list[float]] = [[] for _ in paths]
    gpu: list[list[float]] = [[] for _ in paths]
    infos: list[dict[str, Any]] = []
    mems: list[dict[str, Any]] = []
    ran: list[int] = []
    with contextlib.ExitStack() as stack:
        workers: list[Any] = []
        for i, p in enumerate(paths):
            if on_progress:
                on_progress(0, total, f"loading {labels[i]}")
            w: Any = stack.enter_context(open_worker(isolated=isolated))
            workers.append(w)
            infos.append(
                w.call(
                    "load",
                    model=str(p),
                    batch=batch,
                    target=target if isinstance(target, str) else tgt.name,
                    providers=list(providers) if providers else None,
                    threads=threads,
                    io_binding=io_binding,
                    runtime=runtimes[i],
                    input_shapes={k: list(v) for k, v in (input_shapes or {}).items()} or None,
                    cpus=pin_cpus(threads) if pin and isolated else None,
                    seed=seed,
                )
            )
        if warmup:
            for w in workers:
                w.call("run", iterations=warmup)
        for slot in schedule:
            answer = workers[slot].call("run", iterations=per_round)
            ran.append(slot)
            times[slot] += answer["times"]
            if answer.get("gpu_times"):
                gpu[slot] += answer["gpu_times"]
            if on_progress:
                on_progress(len(ran) * per_round, total, "interleaved runs")
        mems = [w.call("memory") for w in workers]
    child_cpu = sum(m["cpu_s"] for m in mems) if isolated else 0.0
    other = monitor.stop(child_cpu)
    noise_res = None
    if noise:
        noise_res = Noise(probe_before, system.noise_probe(), other, system.load_average())
        if not noise_res.quiet:
            notes.append(
                f"the machine was busy (probe drift {noise_res.drift:+.0%}, others used "
                f"{noise_res.other_cpu_share or 0:.0%} of the cores): expect noise"
            )
    if not isolated:
        notes.append("measured in one process: peak RSS is the whole process's, for every model")
    accs: list[Accuracy | None] = [None] * len(paths)
    if eval_data is not None:
        from onnxfit.verify.evaluator import evaluate_models

        if on_progress:
            on_progress(total, total, "accuracy")
        accs = list(
            evaluate_models(
                paths,
                eval_data,
                target=target if isinstance(target, str) else tgt.name,
                providers=providers,
                threads=threads,
                limit=eval_limit,
            )
        )
    stats = []
    for i, p in enumerate(paths):
        info, mem = infos[i], mems[i]
        stats.append(
            ModelStats(
                name=labels[i],
                path=str(p),
                runtime=runtimes[i],
                file_bytes=io.file_size(p).bytes,
                parameters=count_parameters(irs[i]),
                static=statics[i],
                provider=info["provider"],
                threads=info.get("threads"),
                session_s=info["session_s"],
                first_s=info["first_s"],
                latency=summarize(times[i]),
                samples=tuple(times[i]),
                peak_rss=mem["peak_rss"],
                rss_baseline=info.get("rss_baseline"),
                device_bytes=mem.get("device_bytes"),
                pid=info["pid"],
                batch=batch,
                accuracy=accs[i],
                gpu_latency=summarize(gpu[i]) if gpu[i] else None,
            )
        )
    if stats[0].provider != (providers[0] if providers else tgt.providers[0]):
        notes.append(
            f"{(providers or tgt.providers)[0]} is not available here; measured on "
            f"{stats[0].provider} (the projection is still for {tgt.name})"
        )
    errors: dict[str, list[dict[str, Any]]] = {}
    if layers > 0 and len(irs) > 1:
        if on_progress:
            on_progress(total, total, "layer errors")
        errors = _layer_errors(irs, labels, top=layers, eval_data=eval_data, seed=seed)
    return CompareResult(
        models=tuple(stats),
        target=tgt.name,
        batch=batch,
        warmup=warmup,
        rounds=rounds,
        per_round=per_round,
        schedule=tuple(ran),
        isolated=isolated,
        noise=noise_res,
        machine=system.machine_description(),
        eval_data=str(eval_data) if eval_data is not None else None,
        notes=tuple(notes),
        projection=tgt.projection_label,
        layer_errors=errors,
    )


def _layer_errors(
    models: Sequence[Any], names: Sequence[str], *, top: int, eval_data: Any, seed: int
) -> dict[str, list[dict[str, Any]]]:
    """Per model after the first: :func:`onnxfit.verify.sensitivity.layer_errors` against the
    first, on its first 16 ``eval_data`` images or 16 seeded synthetic samples."""
    from onnxfit.data.calibration import synthetic_inputs
    from onnxfit.verify.sensitivity import layer_errors

    inputs: Any = synthetic_inputs(models[0], 16, seed=seed)
    if eval_data is not None:
        from onnxfit.verify.evalset import dataset_task, load_labelled
        from onnxfit.verify.evaluator import model_info

        info = model_info(models[0], task=dataset_task(eval_data))
        inputs = load_labelled(eval_data, info.preset, limit=16).x
    return {
        name: layer_errors(models[0], m, inputs, top=top, origins=m)
        for name, m in zip(names[1:], models[1:], strict=True)
    }
