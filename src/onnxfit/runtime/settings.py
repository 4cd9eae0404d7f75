"""ORT session settings per target and provider: the pure half of :mod:`onnxfit.runtime.session`.

:func:`plan_session` decides, without touching a model, which execution provider runs, with
which provider options and session options; :func:`build_session_options` turns the plan into an
``onnxruntime.SessionOptions``; :func:`deploy_settings` gives the settings a C++ runtime must use.

Facts the plans rest on (ONNX Runtime documentation, "DirectML Execution Provider"):

* DirectML does not support memory-pattern optimisation nor parallel execution: sessions must set
  ``enable_mem_pattern = False`` and ``execution_mode = ORT_SEQUENTIAL`` or creation fails.
* DirectML does not support multi-threaded calls to ``Run`` on the same session: only one thread
  may call ``Run`` at a time (different sessions may run concurrently). :class:`Session` enforces
  it with a lock.
* DirectML provider options: ``device_id`` (adapter index), ``performance_preference``
  (``default`` / ``high_performance`` / ``minimum_power``), ``device_filter`` (``gpu`` / ``npu`` /
  ``any``).
* A model optimised *offline* above the BASIC level for DirectML may hold CPU/CUDA-only fused ops
  (e.g. ``FusedConv``), so offline optimisation stays at BASIC for DirectML (FINDINGS.md).

CUDA ("CUDA Execution Provider", "I/O Binding" pages): IO binding pays when inputs and outputs
stay on the device (:meth:`Session.run_device`). For numpy in / numpy out it does not: measured on
an H100 (benchmarks/results/gpu.md, onnxruntime-gpu 1.31), YOLOv3-tiny at batch 64 took 28-31 ms
through plain ``run`` and 41-47 ms bound, because ``OrtValue.update_inplace`` and
``copy_outputs_to_cpu`` copy through pageable memory while ``run`` stages its own copies. So host
arrays go through plain ``run`` by default, and IO binding is on for CUDA graphs (which need it)
or when asked for. ``enable_cuda_graph`` captures the whole run as one CUDA graph, which
needs IO binding with fixed input/output addresses, shapes that never change, every node on the
CUDA EP and no control-flow ops (If, Loop, Scan).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnxruntime as ort

from onnxfit.errors import InputError
from onnxfit.runtime.webgpu import WEBGPU, available_providers
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

DML = "DmlExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: device name IO binding uses for each provider's memory
DEVICE_TYPES = {DML: "dml", CUDA: "cuda", CPU: "cpu"}
DML_PERFORMANCE = ("default", "high_performance", "minimum_power")
DML_FILTERS = ("gpu", "npu", "any")
#: ORT graph optimization level by name (``SessionPlan.graph_optimization_level``, the loader)
OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

ProviderArg = str | tuple[str, Mapping[str, Any]]


@dataclass(frozen=True)
class SessionPlan:
    """Everything decided about a session before the model is read."""

    target: str
    wanted: str
    provider: str
    providers: tuple[tuple[str, dict[str, str]], ...]
    fallback: bool
    enable_mem_pattern: bool
    execution_mode: str  # "sequential" | "parallel"
    intra_op_threads: int
    graph_optimization_level: str  # key of OPT_LEVELS
    free_dims: dict[str, int] = field(default_factory=dict)
    serialize_runs: bool = False
    io_binding: bool = False
    cuda_graph: bool = False
    device_type: str = "cpu"
    device_id: int = 0
    allow_spinning: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "wanted_provider": self.wanted,
            "provider": self.provider,
            "providers": [[n, dict(o)] for n, o in self.providers],
            "fallback": self.fallback,
            "enable_mem_pattern": self.enable_mem_pattern,
            "execution_mode": self.execution_mode,
            "intra_op_num_threads": self.intra_op_threads,
            "graph_optimization_level": self.graph_optimization_level,
            "free_dimension_overrides": dict(self.free_dims),
            "one_run_at_a_time": self.serialize_runs,
            "io_binding": self.io_binding,
            "cuda_graph": self.cuda_graph,
            "device_type": self.device_type,
            "device_id": self.device_id,
            "allow_spinning": self.allow_spinning,
        }


def _host_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _split_providers(
    target: Target, providers: Sequence[ProviderArg] | None
) -> list[tuple[str, dict[str, str]]]:
    raw: Sequence[ProviderArg] = target.providers if providers is None else providers
    if isinstance(raw, str):
        raw = [raw]
    out: list[tuple[str, dict[str, str]]] = []
    for p in raw:
        if isinstance(p, str):
            out.append((p, {}))
        elif isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
            out.append((p[0], {str(k): _opt_str(v) for k, v in dict(p[1]).items()}))
        else:
            raise InputError(
                f"bad provider entry {p!r}",
                hint='give provider names, or (name, options) pairs: ("CUDAExecutionProvider", {})',
            )
    if not out:
        raise InputError(
            "no execution provider given", hint='e.g. providers=["CPUExecutionProvider"]'
        )
    return out


def _opt_str(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def check_free_dims(free_dims: Mapping[str, int] | None) -> dict[str, int]:
    """Validate free-dimension overrides: names -> positive ints."""
    out: dict[str, int] = {}
    for name, value in (free_dims or {}).items():
        if not isinstance(name, str) or not name:
            raise InputError(f"free dimension name {name!r} must be a non-empty string")
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(
                f"free dimension {name!r} must be a positive int, given {value!r}",
                hint='e.g. free_dims={"batch": 1}',
            )
        out[name] = value
    return out


def _check_provider_options(provider: str, options: dict[str, str]) -> None:
    if "device_id" in options and not options["device_id"].isdigit():
        raise InputError(
            f"{provider} option device_id must be an int >= 0, given {options['device_id']!r}"
        )
    if provider == DML:
        pref = options.get("performance_preference")
        if pref is not None and pref not in DML_PERFORMANCE:
            raise InputError(
                f"DirectML performance_preference {pref!r} is not one of "
                f"{', '.join(DML_PERFORMANCE)}"
            )
        filt = options.get("device_filter")
        if filt is not None and filt not in DML_FILTERS:
            raise InputError(
                f"DirectML device_filter {filt!r} is not one of {', '.join(DML_FILTERS)}"
            )


def plan_session(
    target: str | Target = "cpu",
    *,
    providers: Sequence[ProviderArg] | None = None,
    available: Sequence[str] | None = None,
    strict: bool = False,
    free_dims: Mapping[str, int] | None = None,
    threads: int | None = None,
    io_binding: bool | None = None,
    cuda_graph: bool = False,
    provider_options: Mapping[str, Any] | None = None,
    serialize_runs: bool | None = None,
    allow_spinning: bool = True,
) -> SessionPlan:
    """Choose the provider and the settings for ``target``.

    ``providers`` (names or ``(name, options)`` pairs) defaults to the target's list; the first is
    the one wanted. ``available`` defaults to ``onnxruntime.get_available_providers()``. When the
    wanted provider is missing the first available one in the list runs instead (CPU at the
    end): a WARNING names both, or with ``strict=True`` :class:`InputError` is raised.
    ``provider_options`` apply to the wanted provider. ``WebGpuExecutionProvider`` (plugin EP,
    :mod:`onnxfit.runtime.webgpu`) counts as available when its package finds a device.
    ``serialize_runs`` forces (True) or forbids (False) the one-run-at-a-time lock; by default
    it is on for DirectML and CUDA graphs.
    ``allow_spinning=False`` stops ORT's intra-op threads from busy-waiting between ops, which
    matters when preprocessing workers share the cores (``session.intra_op.allow_spinning``).
    """
    tgt = get_target(target)
    entries = _split_providers(tgt, providers)
    have = list(available_providers() if available is None else available)
    wanted, _ = entries[0]
    extra = {str(k): _opt_str(v) for k, v in (provider_options or {}).items()}
    entries[0] = (wanted, {**entries[0][1], **extra})
    if not any(n == CPU for n, _ in entries):
        entries.append((CPU, {}))
    chosen = [(n, o) for n, o in entries if n in have]
    if not chosen:  # CPU is always built in; guard anyway
        chosen = [(CPU, {})]
    provider = chosen[0][0]
    fallback = provider != wanted
    if fallback:
        msg = (
            f"{wanted} is not available in this onnxruntime build "
            f"(available: {', '.join(have)}); {provider} runs instead"
        )
        hint = {
            DML: "install onnxruntime-directml (Windows) for DirectML",
            CUDA: "install onnxruntime-gpu with a matching CUDA for the CUDA provider",
            WEBGPU: "install onnxfit[webgpu] (onnxruntime-ep-webgpu) and a Vulkan/D3D12 GPU driver",
        }.get(wanted, "install the onnxruntime package that ships that provider")
        if strict:
            raise InputError(msg, hint=hint + ", or drop strict=True to fall back")
        logger.warning("%s (%s)", msg, hint)
    for name, opts in chosen:
        _check_provider_options(name, opts)
    fdims = check_free_dims(free_dims)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise InputError(f"threads must be a positive int, given {threads!r}")
    # The target's worker cores, never more than this host has (a console target falling back to
    # this CPU must not oversubscribe it).
    n_threads = threads if threads is not None else max(1, min(tgt.worker_cores, _host_cores()))
    is_dml = provider == DML
    is_cuda = provider == CUDA
    if cuda_graph and not is_cuda:
        msg = f"cuda_graph=True needs {CUDA}, but {provider} runs"
        if strict or not fallback:
            raise InputError(msg, hint="drop cuda_graph=True, or run on a CUDA build and GPU")
        logger.warning("%s; CUDA graph capture is off", msg)
        cuda_graph = False
    if cuda_graph:
        chosen[0] = (CUDA, {**chosen[0][1], "enable_cuda_graph": "1"})
        if io_binding is False:
            raise InputError("cuda_graph=True needs IO binding; drop io_binding=False")
    device_id = int(chosen[0][1].get("device_id", "0"))
    return SessionPlan(
        target=tgt.name,
        wanted=wanted,
        provider=provider,
        providers=tuple(chosen),
        fallback=fallback,
        enable_mem_pattern=not is_dml,
        execution_mode="sequential",
        intra_op_threads=n_threads,
        graph_optimization_level="all",
        free_dims=fdims,
        serialize_runs=(is_dml or cuda_graph) if serialize_runs is None else bool(serialize_runs),
        io_binding=cuda_graph if io_binding is None else bool(io_binding),
        cuda_graph=cuda_graph,
        device_type=DEVICE_TYPES.get(provider, "cpu"),
        device_id=device_id,
        allow_spinning=allow_spinning,
    )


def build_session_options(plan: SessionPlan) -> ort.SessionOptions:
    """An ``onnxruntime.SessionOptions`` carrying the plan's settings."""
    so = ort.SessionOptions()
    so.enable_mem_pattern = plan.enable_mem_pattern
    so.execution_mode = (
        ort.ExecutionMode.ORT_SEQUENTIAL
        if plan.execution_mode == "sequential"
        else ort.ExecutionMode.ORT_PARALLEL
    )
    so.intra_op_num_threads = plan.intra_op_threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = OPT_LEVELS[plan.graph_optimization_level]
    for name, value in plan.free_dims.items():
        so.add_free_dimension_override_by_name(name, value)
    if not plan.allow_spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def deploy_settings(target: str | Target, *, free_dims: Mapping[str, int] | None = None) -> dict:
    """The ORT session settings a C++ runtime must use to run a model built for ``target``.

    For DirectML: memory pattern off, sequential execution, one ``Run`` at a time per session,
    and offline graph optimisation at BASIC (a model saved with higher levels may contain fused
    ops DirectML lacks). Free-dimension overrides give static shapes, which DirectML and CUDA
    graphs both want. ``cpp`` lists the matching ``Ort::SessionOptions`` calls.
    """
    tgt = get_target(target)
    fdims = check_free_dims(free_dims)
    wanted = tgt.providers[0] if tgt.providers else CPU
    is_dml = wanted == DML
    is_cuda = wanted == CUDA
    settings: dict[str, Any] = {
        "target": tgt.name,
        "providers": list(tgt.providers) or [CPU],
        "enable_mem_pattern": not is_dml,
        "execution_mode": "ORT_SEQUENTIAL",
        "graph_optimization_level": "ORT_ENABLE_ALL",
        "offline_graph_optimization_level": "ORT_ENABLE_BASIC" if is_dml else "ORT_ENABLE_EXTENDED",
        "intra_op_num_threads": tgt.worker_cores,
        "inter_op_num_threads": 1,
        "free_dimension_overrides": dict(fdims),
        "one_run_at_a_time": is_dml,
        "io_binding": is_cuda or is_dml,
        "provider_options": {DML: {"device_id": "0", "performance_preference": "high_performance"}}
        if is_dml
        else {},
    }
    cpp = []
    if is_dml:
        cpp += ["session_options.DisableMemPattern();"]
    cpp += [
        "session_options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);",
        f"session_options.SetIntraOpNumThreads({tgt.worker_cores});",
        "session_options.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);",
    ]
    cpp += [
        f'session_options.AddFreeDimensionOverrideByName("{n}", {v});' for n, v in fdims.items()
    ]
    if is_dml:
        cpp += ["OrtSessionOptionsAppendExecutionProvider_DML(session_options, /*device_id=*/0);"]
    elif is_cuda:
        cpp += ["session_options.AppendExecutionProvider_CUDA_V2(cuda_options);"]
    settings["cpp"] = cpp
    notes = []
    if is_dml:
        notes += [
            "DirectML needs memory pattern off and sequential execution (session creation fails"
            " otherwise) and allows one Run at a time per session (ORT DirectML EP docs)",
            "optimise offline at ORT_ENABLE_BASIC only: higher levels can save CPU/CUDA-only"
            " fused ops (e.g. FusedConv) that DirectML cannot run",
        ]
    if not fdims:
        notes.append("no free-dimension overrides: dynamic dims stay dynamic (slower on GPUs)")
    settings["notes"] = notes
    return settings
