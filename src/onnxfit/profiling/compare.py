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
from dataclasses import dataclass, field
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
from onnxfit.profiling.results import Measured
from onnxfit.profiling.stats import Summary, summarize
from onnxfit.profiling.system import CpuMonitor, Noise
from onnxfit.profiling.worker import RUNTIMES
from onnxfit.targets import get_target
from onnxfit.verify.evaluator import Accuracy

logger = logging.getLogger(__name__)


def interleave_schedule(n_models: int, rounds: int) -> list[int]:
    """The order models run in: ``[0, 1, ..., n-1]`` repeated ``rounds`` times."""
    if n_models < 1 or rounds < 1:
        raise InputError(f"interleave needs >= 1 model and round, got {n_models}, {rounds}")
    return [m for _ in range(rounds) for m in range(n_models)]


@dataclass(frozen=True)
class ModelStats(Measured):
    """One model's figures in a comparison (seconds, bytes)."""

    name: str
    path: str
    runtime: str
    file_bytes: int
    parameters: int
    static: Static
    provider: str
    threads: int | None
    session_s: float
    first_s: float
    latency: Summary
    samples: tuple[float, ...]
    peak_rss: int
    rss_baseline: int | None
    device_bytes: int | None
    pid: int
    batch: int
    accuracy: Accuracy | None = None
    gpu_latency: Summary | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "runtime": self.runtime,
            "file_bytes": self.file_bytes,
            "parameters": self.parameters,
            "static": self.static.to_dict(),
            "provider": self.provider,
            "threads": self.threads,
            "session_s": self.session_s,
            "first_s": self.first_s,
            "latency": self.latency.to_dict(),
            "throughput": self.throughput,
            "gpu_latency": self.gpu_latency.to_dict() if self.gpu_latency else None,
            "peak_rss": self.peak_rss,
            "rss_baseline": self.rss_baseline,
            "rss_delta": self.rss_delta,
            "device_bytes": self.device_bytes,
            "pid": self.pid,
            "batch": self.batch,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelStats:
        return cls(
            name=d["name"],
            path=d["path"],
            runtime=d.get("runtime", "onnxfit"),
            file_bytes=d["file_bytes"],
            parameters=d["parameters"],
            static=Static(**d.get("static", {})),
            provider=d["provider"],
            threads=d.get("threads"),
            session_s=d["session_s"],
            first_s=d["first_s"],
            latency=Summary.from_dict(d["latency"]),
            samples=tuple(d.get("samples", ())),
            peak_rss=d["peak_rss"],
            rss_baseline=d.get("rss_baseline"),
            device_bytes=d.get("device_bytes"),
            pid=d.get("pid", 0),
            batch=d.get("batch", 1),
            accuracy=Accuracy.from_dict(d["accuracy"]) if d.get("accuracy") else None,
            gpu_latency=Summary.from_dict(d["gpu_latency"]) if d.get("gpu_latency") else None,
        )


def _ratio(first: float | None, this: float | None) -> float | None:
    if not first or not this:
        return None
    return first / this


@dataclass(frozen=True)
class CompareResult:
    """Models measured together; :meth:`ratios` against the first."""

    models: tuple[ModelStats, ...]
    target: str
    batch: int
    warmup: int
    rounds: int
    per_round: int
    schedule: tuple[int, ...]
    isolated: bool
    noise: Noise | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    eval_data: str | None = None
    notes: tuple[str, ...] = ()
    layer_errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def ratios(self) -> list[dict[str, float | None]]:
        """Per model, improvement factors vs the first (see the module docstring)."""
        a = self.models[0]
        out = []
        for m in self.models:
            acc = None
            if a.accuracy is not None and m.accuracy is not None:
                key, base = a.accuracy.headline
                acc = 100.0 * (m.accuracy.metrics.get(key, 0.0) - base)
            out.append(
                {
                    "file_size": _ratio(a.file_bytes, m.file_bytes),
                    "parameters": _ratio(a.parameters, m.parameters),
                    "arena": _ratio(a.static.arena_bytes, m.static.arena_bytes),
                    "runtime_memory": _ratio(a.static.runtime_bytes, m.static.runtime_bytes),
                    "weights": _ratio(a.static.weights_bytes, m.static.weights_bytes),
                    "peak_rss": _ratio(a.peak_rss, m.peak_rss),
                    "rss_delta": _ratio(a.rss_delta, m.rss_delta),
                    "latency": _ratio(a.latency.median, m.latency.median),
                    "throughput": _ratio(m.throughput, a.throughput),
                    "projected": _ratio(a.static.projected_s, m.static.projected_s),
                    "accuracy_pts": acc,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "batch": self.batch,
            "warmup": self.warmup,
            "rounds": self.rounds,
            "per_round": self.per_round,
            "schedule": list(self.schedule),
            "isolated": self.isolated,
            "noise": self.noise.to_dict() if self.noise else None,
            "machine": self.machine,
            "eval_data": self.eval_data,
            "notes": list(self.notes),
            "models": [m.to_dict() for m in self.models],
            "ratios": self.ratios(),
            "layer_errors": {k: list(v) for k, v in self.layer_errors.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompareResult:
        return cls(
            models=tuple(ModelStats.from_dict(m) for m in d["models"]),
            target=d["target"],
            batch=d["batch"],
            warmup=d.get("warmup", 0),
            rounds=d["rounds"],
            per_round=d["per_round"],
            schedule=tuple(d.get("schedule", ())),
            isolated=d.get("isolated", True),
            noise=Noise.from_dict(d["noise"]) if d.get("noise") else None,
            machine=d.get("machine", {}),
            eval_data=d.get("eval_data"),
            notes=tuple(d.get("notes", ())),
            layer_errors={k: list(v) for k, v in d.get("layer_errors", {}).items()},
        )


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
        st, _ = static_figures(m, batch=batch, target=tgt.name, input_shapes=input_shapes)
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
                    target=tgt.name,
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
                target=tgt.name,
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
        errors = layer_errors(irs, labels, top=layers, eval_data=eval_data, seed=seed)
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
        layer_errors=errors,
    )


def layer_errors(
    models: Sequence[Any],
    names: Sequence[str],
    *,
    top: int,
    eval_data: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> dict[str, list[dict[str, Any]]]:
    """For each model after the first: its ``top`` nodes by the error they add against the
    first model's tensors of the same name (:func:`onnxfit.verify.per_node_sensitivity`), on
    the first 16 ``eval_data`` images or 16 seeded synthetic samples."""
    from onnxfit.data.calibration import synthetic_inputs
    from onnxfit.verify import per_node_sensitivity

    inputs: Any
    if eval_data is not None:
        from onnxfit.verify.evalset import dataset_task, load_labelled
        from onnxfit.verify.evaluator import model_info

        info = model_info(models[0], task=dataset_task(eval_data))
        inputs = load_labelled(eval_data, info.preset, limit=16).x
    else:
        inputs = synthetic_inputs(models[0], 16, seed=seed)
    out = {}
    for name, model in zip(names[1:], models[1:], strict=True):
        drifts = per_node_sensitivity(models[0], model, inputs, top=top)
        out[name] = [
            {k: getattr(d, k) for k in ("node", "op_type", "rel_error", "added", "cosine")}
            for d in drifts
        ]
    return out
