"""Measurements for ``onnxfit calibrate``: wall times and per-kernel profiles on this device.

:func:`measure_model` runs one model twice through ONNX Runtime with the provider asked for:
a plain session timed with wall clocks (``warmup`` runs, then the median of ``runs``; each run's
wait for a core taken off, :mod:`onnxfit.profiling.contention`), and a session with ORT's
profiler on (kernel times scaled down by the share of its runs spent waiting for a core), whose
per-kernel times (:mod:`onnxfit.profiling.ortprofile`) are joined with the cost model
(:func:`onnxfit.profiling.opcost.match_nodes`): each kernel becomes a :class:`KernelSample` (op
class of the node it stands for, precision, FLOPs, bytes, mean seconds). Model nodes without a
kernel of their own are recorded with the op of their producer: the fit learns what is fused.

:func:`run_suite` measures :func:`onnxfit.profiling.calib_suite.calibration_suite` (plus any
extra models) into a :class:`CalibrationRun` (:func:`run_suites`: several thread counts or
providers interleaved, over rounds merged by :func:`merge_rounds`), which keeps the raw
measurements (JSON) so that a fit can be redone and validated without measuring again
(``benchmarks/bench_latency_model.py``).
Sessions run with ``intra_op_num_threads`` = ``threads`` and thread spinning off.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit import atomic, io
from onnxfit.errors import InputError
from onnxfit.profiling.contention import timed_runs

logger = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "dml": "DmlExecutionProvider",
    "directml": "DmlExecutionProvider",
    "webgpu": "WebGpuExecutionProvider",
}
#: providers whose ORT profile times the device work (GPU providers only time the enqueue)
SYNC_PROFILE = frozenset({"CPUExecutionProvider"})
#: the built-in target whose peaks a provider's calibration is relative to, by default
BASE_TARGET = {
    "CPUExecutionProvider": "cpu",
    "CUDAExecutionProvider": "cuda",
    "DmlExecutionProvider": "xbox-series-s",
}


@dataclass(frozen=True)
class KernelSample:
    """One profiled kernel: what it computes and its mean time per run."""

    node: str
    op_class: str
    precision: str
    flops: int
    bytes: int
    time_s: float


@dataclass
class ModelRun:
    """One model's measurements: wall time, kernels, and fused-away nodes."""

    name: str
    kind: str
    batch: int
    wall_s: float
    wall_runs: list[float]
    kernels: int
    samples: list[KernelSample]
    unmatched_s: float  # kernels ORT added (layout reorders ...) per run
    fusion: list[tuple[str, str, bool]]  # (op, producer op, had no kernel of its own)
    queued_s: float = 0.0  # median wait for a core per run, taken off the wall times

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["samples"] = [asdict(s) for s in self.samples]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelRun:
        d = dict(d)
        d["samples"] = [KernelSample(**s) for s in d["samples"]]
        d["fusion"] = [tuple(x) for x in d["fusion"]]
        return cls(**d)


@dataclass
class CalibrationRun:
    """Every measurement of one calibration, with the conditions it was taken in."""

    provider: str
    base: str
    threads: int
    ort_version: str
    host: str
    models: list[ModelRun] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["models"] = [m.to_dict() for m in self.models]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationRun:
        d = dict(d)
        d["models"] = [ModelRun.from_dict(m) for m in d["models"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from onnxfit import atomic

        atomic.write_text(Path(path), json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CalibrationRun:
        return cls.from_dict(json.loads(Path(path).read_text()))


def provider_name(text: str | None) -> str:
    """``cpu`` / ``cuda`` / ``dml`` / ``webgpu`` or a full ORT provider name."""
    if not text:
        return "CPUExecutionProvider"
    from onnxfit.runtime.webgpu import available_providers

    name = PROVIDERS.get(text.strip().lower(), text.strip())
    have = available_providers()
    if name not in have:
        raise InputError(
            f"execution provider {name} is not available in this onnxruntime",
            hint=f"available: {', '.join(have)}",
        )
    return name


def _session(model_bytes: bytes, provider: str, threads: int, profile_prefix: str | None) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if provider == "DmlExecutionProvider":
        so.enable_mem_pattern = False
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    from onnxfit.runtime.webgpu import inference_session

    providers = (
        [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
    )
    return inference_session(model_bytes, so, providers)


def _feeds(model: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for v in model.graph.inputs:
        if v.is_initializer():
            continue
        dims = [d if isinstance(d, int) else 1 for d in v.shape.dims] if v.shape else [1]
        dtype = v.dtype.numpy() if v.dtype is not None else np.float32
        out[str(v.name)] = rng.standard_normal(dims).astype(dtype)
    return out


def _wall_only(
    name: str, model: ir.Model, *, kind: str, batch: int, wall: list[float], target: Any
) -> ModelRun:
    """A measurement from wall times alone (providers whose profile is not device time): a
    probe's one compute node becomes a sample of its whole run (the fit takes ``run_s`` off)."""
    from onnxfit.analysis import opcount
    from onnxfit.analysis.calibrated import op_class
    from onnxfit.analysis.cost import node_cost
    from onnxfit.targets import get_target

    target = get_target(target)
    compute = [n for n in model.graph if opcount.kind_of(n) not in ("free",)]
    samples = []
    if kind == "probe" and len(compute) == 1:
        c = node_cost(compute[0], target)
        samples.append(
            KernelSample(
                str(compute[0].name), op_class(compute[0]), c.precision, c.flops, c.bytes,
                statistics.median(wall),
            )
        )  # fmt: skip
    return ModelRun(
        name=name,
        kind=kind,
        batch=batch,
        wall_s=statistics.median(wall),
        wall_runs=wall,
        kernels=len(compute),
        samples=samples,
        unmatched_s=0.0,
        fusion=[],
    )


def measure_model(
    name: str,
    model: ir.Model,
    *,
    kind: str = "model",
    batch: int = 1,
    provider: str = "CPUExecutionProvider",
    threads: int = 1,
    runs: int = 20,
    warmup: int = 5,
    target: Any = "cpu",
) -> ModelRun:
    """Wall time and per-kernel profile of a shape-inferred ``model`` (module docstring)."""
    from onnxfit.analysis.calibrated import op_class
    from onnxfit.analysis.cost import node_cost
    from onnxfit.profiling.opcost import match_nodes
    from onnxfit.profiling.ortprofile import parse_profile
    from onnxfit.targets import get_target

    tgt = get_target(target)
    payload = io.to_bytes(model)
    feeds = _feeds(model)
    sess = _session(payload, provider, threads, None)
    for _ in range(warmup):
        sess.run(None, feeds)
    raw, queued = timed_runs(functools.partial(sess.run, None, feeds), runs)
    wall = [max(w - q, 0.05 * w) for w, q in zip(raw, queued, strict=True)]
    del sess
    if provider not in SYNC_PROFILE:
        out = _wall_only(name, model, kind=kind, batch=batch, wall=wall, target=tgt)
        return dataclasses.replace(out, queued_s=statistics.median(queued))
    with atomic.temp_dir("calib") as tmp:
        psess = _session(payload, provider, threads, str(Path(tmp) / "p"))
        prof_runs = max(3, runs // 2)
        for _ in range(warmup):
            psess.run(None, feeds)
        raw_p, queued_p = timed_runs(functools.partial(psess.run, None, feeds), prof_runs)
        prof = parse_profile(psess.end_profiling(), skip_runs=warmup)
    # kernels' share of the wait for a core: in proportion to their time
    own_time = max(0.05, 1.0 - sum(queued_p) / sum(raw_p))
    groups = match_nodes({o.node: o.op_type for o in prof.ops}, model)
    samples = []
    unmatched = 0.0
    own: set[ir.Node] = set()  # nodes that are the base of a kernel
    per_run = max(1, prof.runs)
    for o in prof.ops:
        group = groups.get(o.node)
        if not group:
            unmatched += own_time * o.total_s / per_run
            continue
        own.add(group[0])
        costs = [node_cost(n, tgt) for n in group]
        nbytes = costs[0].bytes_read + costs[-1].bytes_written
        prec = max((c.precision for c in costs), key=("fp32", "fp16", "int8").index)
        samples.append(
            KernelSample(
                o.node,
                op_class(group[0]),
                prec,
                sum(c.flops for c in costs),
                nbytes,
                own_time * o.total_s / per_run,
            )
        )
    from onnxfit.analysis.calibrated import producer_key

    fusion = []
    for n in model.graph:
        key = producer_key(n)
        if key is not None:
            fusion.append((n.op_type, key, n not in own))
    return ModelRun(
        name=name,
        kind=kind,
        batch=batch,
        wall_s=statistics.median(wall),
        wall_runs=wall,
        kernels=len(prof.ops),
        samples=samples,
        unmatched_s=unmatched,
        fusion=fusion,
        queued_s=statistics.median(queued),
    )


def merge_rounds(rounds: Sequence[ModelRun]) -> ModelRun:
    """One model's measurements over several rounds: the median of the rounds' median wall
    times (every run kept in ``wall_runs``), each kernel's median time, the median of the
    unmatched time; kernels and fusion as the first round saw them."""
    first = rounds[0]
    if len(rounds) == 1:
        return first
    by_kernel: dict[tuple[int, str], list[float]] = {}
    for r in rounds:
        for i, s in enumerate(r.samples):
            by_kernel.setdefault((i, s.node), []).append(s.time_s)
    samples = [
        dataclasses.replace(s, time_s=statistics.median(by_kernel.get((i, s.node), [s.time_s])))
        for i, s in enumerate(first.samples)
    ]
    return dataclasses.replace(
        first,
        wall_s=statistics.median(r.wall_s for r in rounds),
        wall_runs=[t for r in rounds for t in r.wall_runs],
        samples=samples,
        unmatched_s=statistics.median(r.unmatched_s for r in rounds),
        queued_s=statistics.median(r.queued_s for r in rounds),
    )


def run_suites(
    settings: Sequence[tuple[str, int]],
    *,
    base: str | None = None,
    runs: int = 20,
    rounds: int = 1,
    quick: bool = False,
    extra: Sequence[str | Path] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> list[CalibrationRun]:
    """Measure the suite (and ``extra`` model files) once per (provider, threads) setting,
    interleaved: each round takes every graph in turn under every setting, so that a change in
    the host's load during the measurement falls on all settings alike; the rounds are merged
    with :func:`merge_rounds`. One :class:`CalibrationRun` per setting, in order."""
    import onnxruntime as ort

    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.profiling.calib_suite import SuiteModel, calibration_suite
    from onnxfit.targets import get_target

    suite = calibration_suite(quick=quick)
    for p in extra:
        suite.insert(0, SuiteModel(Path(p).name, infer_shapes(io.load(p), batch=1), "model"))
    out = []
    for provider, threads in settings:
        base_name = base or BASE_TARGET.get(provider, "cpu")
        out.append(
            CalibrationRun(
                provider=provider,
                base=base_name,
                threads=threads,
                ort_version=ort.__version__,
                host=f"{platform.node()} {get_target(base_name).description}",
                note=f"{rounds} interleaved round(s) of {len(settings)} setting(s)",
            )
        )
    measured: list[list[list[ModelRun]]] = [[[] for _ in suite] for _ in settings]
    total = rounds * len(suite)
    for k in range(rounds):
        for i, item in enumerate(suite):
            if progress is not None:
                progress(item.name, k * len(suite) + i, total)
            logger.info("calibrating on %s (round %d)", item.name, k + 1)
            n = runs if item.kind == "model" else max(5, runs // 2)
            for j, (run, (provider, threads)) in enumerate(zip(out, settings, strict=True)):
                measured[j][i].append(
                    measure_model(
                        item.name,
                        item.model,
                        kind=item.kind,
                        batch=item.batch,
                        provider=provider,
                        threads=threads,
                        runs=n,
                        target=run.base,
                    )
                )
    for run, per_model in zip(out, measured, strict=True):
        run.models = [merge_rounds(r) for r in per_model]
    return out


def run_suite(
    *,
    provider: str = "CPUExecutionProvider",
    base: str | None = None,
    threads: int = 1,
    runs: int = 20,
    rounds: int = 1,
    quick: bool = False,
    extra: Sequence[str | Path] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrationRun:
    """Measure the suite (and ``extra`` model files) on ``provider`` (:func:`run_suites`)."""
    (run,) = run_suites(
        [(provider, threads)],
        base=base,
        runs=runs,
        rounds=rounds,
        quick=quick,
        extra=extra,
        progress=progress,
    )
    return run
