"""The fit verdict: does a model fit a memory budget at load time and at its first run?

One function decides fit for every command (:func:`decide_fit`; ``inspect`` and ``optimize``
both call it): a model that does not fit makes the CLI exit with :data:`EXIT_DOES_NOT_FIT` (3)
unless ``--allow-over-budget`` is given (then 0). The budget is the target's ``memory_budget``
or a slice of it given as ``--budget 256MB`` (:func:`parse_size`).

Two moments are judged, because they fail differently (FINDINGS: on a Series S a 1B-parameter
FP16 model loaded in 2,878 MB of a 3,801 MB budget and then ran out of memory at its first
inference):

* **load** — the weights as the execution provider holds them. DirectML uploads each
  initializer into a D3D12 committed buffer (``DmlGraphFusionHelper::CreateResource``), and a
  committed buffer takes whole 64 KiB pages (``D3D12_DEFAULT_RESOURCE_PLACEMENT_ALIGNMENT``), so
  each weight tensor is rounded up to 64 KiB; BatchNormalization parameters that follow a Conv
  are not counted (ORT's basic level folds them into the Conv). Other providers: the weight
  bytes as stored.
* **first run** — load + graph inputs/outputs + the activations *as the provider's allocator
  holds them* (:mod:`onnxfit.analysis.allocators`): DirectML's bucketized pool (powers of two
  of at least 64 KiB, pooled per bucket, no memory patterns), ORT's BFC arena
  for the CPU and CUDA providers. Graph outputs are allocated by the provider and counted with
  the activations. The greedy offset plan is reported as the floor
  (``activations_floor_bytes``) and every-tensor-its-own-buffer as ``activations_naive_bytes``.

The CPU arena model was checked against ORT 1.32's own arena log (``Total allocated bytes``
after the first run, ``benchmarks/bench_memory_estimate.py``). Not counted: the runtime's own
overhead (ORT's CPU process peaks near 215 MiB RSS for ResNet-18, mostly session creation),
kernel workspaces, DirectML's persistent resources and a fused graph's temporary resource
(planned by DirectML itself), and on a unified-memory console the host copy of the weights ORT
keeps while it creates the session.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import onnx_ir as ir

from onnxfit.analysis.allocators import (
    bfc_arena_bytes,
    bucket_pool_bytes,
    ep_lifetimes,
    no_reuse_bytes,
)
from onnxfit.errors import InputError
from onnxfit.targets import Target, get_target

#: Exit status of ``inspect`` / ``optimize`` when the model does not fit its budget.
EXIT_DOES_NOT_FIT = 3
DML = "DmlExecutionProvider"
D3D12_PAGE = 64 * 1024
_UNITS = {
    "": 1,
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
    "K": 10**3,
    "M": 10**6,
    "G": 10**9,
}


def parse_size(text: str | int) -> int:
    """``256MB`` / ``1.5GiB`` / ``300000000`` -> bytes (MB = 10**6, MiB = 2**20)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(text))
        unit = m.group(2).upper() if m else ""
        if m is None or unit not in _UNITS:
            raise InputError(
                f"bad size {text!r}", hint="write it as 256MB, 1.5GiB or a number of bytes"
            )
        value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise InputError(f"a memory budget must be positive, got {text!r}", hint="--budget 256MB")
    return value


@dataclass(frozen=True)
class FitVerdict:
    """Load-time and first-run memory against a budget (bytes; module docstring)."""

    budget_bytes: int
    budget_source: str
    provider: str
    weights_bytes: int
    load_bytes: int
    io_bytes: int
    activations_bytes: int
    activations_floor_bytes: int
    activations_naive_bytes: int
    allocator: str

    @property
    def first_run_bytes(self) -> int:
        return self.load_bytes + self.io_bytes + self.activations_bytes

    @property
    def fits_load(self) -> bool:
        return self.load_bytes <= self.budget_bytes

    @property
    def fits_first_run(self) -> bool:
        return self.first_run_bytes <= self.budget_bytes

    @property
    def fits(self) -> bool:
        return self.fits_load and self.fits_first_run

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.first_run_bytes

    @property
    def headroom_pct(self) -> float:
        return 100.0 * self.headroom_bytes / self.budget_bytes if self.budget_bytes else 0.0

    @property
    def fails_at(self) -> str | None:
        """``"load"``, ``"first run"`` or None when it fits."""
        if not self.fits_load:
            return "load"
        return None if self.fits_first_run else "first run"

    def exit_code(self, *, allow_over_budget: bool = False) -> int:
        """0 when it fits (or over budget is allowed), else :data:`EXIT_DOES_NOT_FIT`."""
        return 0 if self.fits or allow_over_budget else EXIT_DOES_NOT_FIT

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(
            first_run_bytes=self.first_run_bytes,
            fits_load=self.fits_load,
            fits_first_run=self.fits_first_run,
            fits=self.fits,
            fails_at=self.fails_at,
            headroom_bytes=self.headroom_bytes,
            headroom_pct=self.headroom_pct,
            exit_code=self.exit_code(),
        )
        return d


def _folded_bn_params(model: ir.Model) -> set[ir.Value]:
    out: set[ir.Value] = set()
    for node in model.graph:
        if node.op_type != "BatchNormalization" or not node.inputs or node.inputs[0] is None:
            continue
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type == "Conv":
            out.update(v for v in node.inputs[1:] if v is not None and v.is_initializer())
    return out


def device_weight_bytes(model: ir.Model, *, provider: str, precision: str | None = None) -> int:
    """Bytes of the weights as ``provider`` holds them (DirectML: 64 KiB pages per tensor)."""
    from onnxfit.analysis.lifetimes import value_bytes

    folded = _folded_bn_params(model) if provider == DML else set()
    total = 0
    for v in model.graph.initializers.values():
        if v in folded:
            continue
        n = value_bytes(v, precision=precision)
        if n is None and v.const_value is not None:
            n = v.const_value.nbytes
        n = n or 0
        if provider == DML and n:
            n = math.ceil(n / D3D12_PAGE) * D3D12_PAGE
        total += n
    for node in model.graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            n = value_bytes(node.outputs[0], precision=precision) or 0
            total += math.ceil(n / D3D12_PAGE) * D3D12_PAGE if provider == DML and n else n
    return total


def decide_fit(
    model: ir.Model,
    *,
    target: str | Target,
    budget: int | str | None = None,
    precision: str | None = None,
    provider: str | None = None,
    weights_bytes: int | None = None,
) -> FitVerdict:
    """The fit verdict of a shape-inferred ``model`` on ``target`` (module docstring).

    ``budget`` (bytes or ``"256MB"``) replaces the target's memory budget; ``precision`` counts
    float tensors at that width (a model about to be converted); ``provider`` defaults to the
    target's first provider; ``weights_bytes`` is only reported (default: as stored).
    """
    from onnxfit.analysis.lifetimes import analyze_lifetimes
    from onnxfit.analysis.memory import plan_memory
    from onnxfit.analysis.memory import weights_bytes as stored_weights

    tgt = get_target(target)
    prov = provider or (tgt.providers[0] if tgt.providers else "CPUExecutionProvider")
    if budget is None:
        limit, source = int(tgt.memory_budget), f"target {tgt.name}"
    else:
        limit = parse_size(budget)
        source = f"--budget {budget}" if isinstance(budget, str) else "budget"
    lives = ep_lifetimes(model, provider=prov, precision=precision, threads=tgt.worker_cores)
    if prov == DML:
        acts, allocator = bucket_pool_bytes(lives), "DirectML bucketized pool (2^n >= 64 KiB)"
    else:
        acts, allocator = bfc_arena_bytes(lives), "ORT BFC arena (next power of two)"
    plan = plan_memory(model, precision=precision)
    walk = analyze_lifetimes(model, precision=precision)
    stored = weights_bytes
    if stored is None:
        stored = stored_weights(model, precision=precision)
    # Graph outputs are in ``lives`` (allocated by the provider); count only inputs as IO.
    return FitVerdict(
        budget_bytes=limit,
        budget_source=source,
        provider=prov,
        weights_bytes=int(stored),
        load_bytes=device_weight_bytes(model, provider=prov, precision=precision),
        io_bytes=walk.input_bytes,
        activations_bytes=acts,
        activations_floor_bytes=plan.arena_bytes + plan.output_bytes,
        activations_naive_bytes=no_reuse_bytes(lives),
        allocator=allocator,
    )
