"""``inspect``: everything onnxfit knows about a model on a target, in one result.

:func:`inspect` loads the model (when given a path), fixes the batch and input shapes
(:func:`~onnxfit.analysis.shapes.infer_shapes`), costs every node
(:func:`~onnxfit.analysis.cost.analyze_cost`), plans the activation arena
(:func:`~onnxfit.analysis.memory.plan_memory`) and gives the fit verdict of
:func:`onnxfit.analysis.budget.decide_fit`: load time (weights as the provider holds them) and
first run (+ activations as the provider's allocator holds them) against the target's memory
budget or a ``budget`` slice of it, with the headroom in bytes and percent. On a DirectML target
it adds the DirectML pre-flight (:mod:`onnxfit.analysis.directml`).

Parameters follow torchvision's ``parameters()`` convention: elements of numeric weight tensors
(initializers and Constant outputs) except those used only as BatchNormalization running
statistics, quantization scales / zero points, or shape-like operands (Reshape's shape, Slice's
starts, Resize's scales, ...). Weight bytes count every weight tensor.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit import io
from onnxfit.analysis.budget import FitVerdict, decide_fit
from onnxfit.analysis.cost import CostReport, analyze_cost
from onnxfit.analysis.directml import DmlPreflight, directml_preflight
from onnxfit.analysis.fit import FitVerdict as PrecisionVerdict
from onnxfit.analysis.fit import verdict_of
from onnxfit.analysis.lanes import LaneReport, lane_report
from onnxfit.analysis.memory import MemoryPlan, plan_memory
from onnxfit.analysis.shapes import infer_shapes, shape_engine
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

_QLINEAR_META = frozenset({1, 2, 4, 5, 6, 7})
#: Input slots that hold metadata (statistics, quantization parameters, shapes), not parameters.
NON_PARAM_SLOTS: dict[str, frozenset[int]] = {
    "BatchNormalization": frozenset({3, 4}),
    "QuantizeLinear": frozenset({1, 2}),
    "DequantizeLinear": frozenset({1, 2}),
    "QLinearConv": _QLINEAR_META,
    "QLinearMatMul": _QLINEAR_META,
    "QLinearAdd": _QLINEAR_META,
    "QLinearMul": _QLINEAR_META,
    "ConvInteger": frozenset({2, 3}),
    "MatMulInteger": frozenset({2, 3}),
    "Reshape": frozenset({1}),
    "Expand": frozenset({1}),
    "Tile": frozenset({1}),
    "Slice": frozenset({1, 2, 3, 4}),
    "Pad": frozenset({1, 2, 3}),
    "Resize": frozenset({1, 2, 3}),
    "Upsample": frozenset({1}),
    "Squeeze": frozenset({1}),
    "Unsqueeze": frozenset({1}),
    "Split": frozenset({1}),
    "TopK": frozenset({1}),
    "Gather": frozenset({1}),
    "GatherElements": frozenset({1}),
    "GatherND": frozenset({1}),
    "Clip": frozenset({1, 2}),
    "CumSum": frozenset({1}),
    "OneHot": frozenset({1, 2}),
    "ConstantOfShape": frozenset({0}),
    "Range": frozenset({0, 1, 2}),
    **{
        op: frozenset({1})
        for op in [
            "ReduceMean",
            "ReduceSum",
            "ReduceMax",
            "ReduceMin",
            "ReduceProd",
            "ReduceL1",
            "ReduceL2",
            "ReduceSumSquare",
            "ReduceLogSum",
            "ReduceLogSumExp",
        ]
    },
}


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output as the user sees it (shape before batch fixing)."""

    name: str
    shape: tuple[int | str | None, ...] | None
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "shape": None if self.shape is None else list(self.shape),
            "dtype": self.dtype,
        }


@dataclass(frozen=True)
class InspectResult:
    """Size, cost, memory plan and fit verdict of one model on one target."""

    model: str
    target: Target
    batch: int
    input_shapes: dict[str, list[int]]
    file_size: io.FileSize | None
    params: int
    weight_bytes: int
    weight_dtypes: dict[str, int]  # dtype -> weight elements
    opset: int | None
    op_histogram: dict[str, int]
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    cost: CostReport
    memory: MemoryPlan
    default_precision_latency_s: float | None = None
    verdict: FitVerdict | None = None
    directml: DmlPreflight | None = None
    lanes: LaneReport | None = None
    #: which engine resolved the last shapes: onnx, ort-symbolic or execution
    shape_engine: str | None = None

    @property
    def num_nodes(self) -> int:
        return sum(self.op_histogram.values())

    @property
    def flops(self) -> int:
        return self.cost.flops

    @property
    def macs(self) -> int:
        return self.cost.macs

    @property
    def latency_s(self) -> float:
        """Projected latency on the target at the model's own precision."""
        return self.cost.time_s

    @property
    def io_bytes(self) -> int:
        return self.memory.input_bytes + self.memory.output_bytes

    @property
    def runtime_bytes(self) -> int:
        """Weights + activation arena + graph inputs and outputs."""
        return self.weight_bytes + self.memory.arena_bytes + self.io_bytes

    @property
    def budget_bytes(self) -> int:
        return self.verdict.budget_bytes if self.verdict else int(self.target.memory_budget)

    @property
    def first_run_bytes(self) -> int:
        """Bytes at the first run as the provider allocates them (the planned total without a
        verdict)."""
        return self.verdict.first_run_bytes if self.verdict else self.runtime_bytes

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.first_run_bytes

    @property
    def headroom_pct(self) -> float:
        return 100.0 * self.headroom_bytes / self.budget_bytes if self.budget_bytes else 0.0

    @property
    def fits(self) -> bool:
        return self.verdict.fits if self.verdict else self.runtime_bytes <= self.budget_bytes

    @property
    def projection(self) -> PrecisionVerdict:
        """The same verdict (needed bytes and budget of :attr:`verdict`) with the projection at
        narrower precisions and the next step (:mod:`.fit`)."""
        return verdict_of(self)

    def to_dict(self, *, nodes: bool = True) -> dict[str, Any]:
        """A JSON-serializable dict (``nodes=False`` leaves the per-node costs out)."""
        return {
            "model": self.model,
            "target": self.target.to_dict(),
            "batch": self.batch,
            "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
            "file_size": None if self.file_size is None else self.file_size.to_dict(),
            "params": self.params,
            "weight_bytes": self.weight_bytes,
            "weight_dtypes": dict(self.weight_dtypes),
            "opset": self.opset,
            "shape_engine": self.shape_engine,
            "num_nodes": self.num_nodes,
            "op_histogram": dict(self.op_histogram),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "flops": self.flops,
            "macs": self.macs,
            "latency_s": self.latency_s,
            "default_precision": self.target.default_precision,
            "default_precision_latency_s": self.default_precision_latency_s,
            "cost": self.cost.to_dict(nodes=nodes),
            "memory": self.memory.to_dict(),
            "fit": {
                "fits": self.fits,
                "weights_bytes": self.weight_bytes,
                "arena_bytes": self.memory.arena_bytes,
                "io_bytes": self.io_bytes,
                "runtime_bytes": self.runtime_bytes,
                "budget_bytes": self.budget_bytes,
                "headroom_bytes": self.headroom_bytes,
                "headroom_pct": self.headroom_pct,
                **({"verdict": self.verdict.to_dict()} if self.verdict else {}),
                "precision": self.projection.precision,
                "projected_bytes": dict(self.projection.projected),
                "next_step": self.projection.next_step(),
            },
            "directml": self.directml.to_dict() if self.directml else None,
            "lanes": self.lanes.to_dict() if self.lanes else None,
        }


def _tensor_info(value: ir.Value) -> TensorInfo:
    shape: tuple[int | str | None, ...] | None = None
    if value.shape is not None:
        shape = tuple(d if isinstance(d, int) else d.value for d in value.shape.dims)
    dtype = value.dtype.name.lower() if value.dtype is not None else "?"
    return TensorInfo(str(value.name), shape, dtype)


def _weights(model: ir.Model) -> list[tuple[ir.Value, ir.TensorProtocol]]:
    out: list[tuple[ir.Value, ir.TensorProtocol]] = []
    for value in model.graph.initializers.values():
        if value.const_value is not None:
            out.append((value, value.const_value))
    for node in model.graph:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            attr = node.attributes.get("value")
            if attr is not None and isinstance(attr.value, ir.TensorProtocol):
                out.append((node.outputs[0], attr.value))
    return out


def _is_param(value: ir.Value, tensor: ir.TensorProtocol) -> bool:
    dtype = tensor.dtype
    if dtype is None or not (dtype.is_floating_point() or dtype.is_integer()):
        return False
    uses = value.uses()
    if not uses:
        return False
    return any(u.idx not in NON_PARAM_SLOTS.get(u.node.op_type, frozenset()) for u in uses)


def count_params(model: ir.Model) -> tuple[int, int, dict[str, int]]:
    """(parameters, weight bytes, weight elements per dtype) of ``model`` (module docstring)."""
    params = nbytes = 0
    dtypes: Counter[str] = Counter()
    for value, tensor in _weights(model):
        size = int(tensor.size)
        nbytes += int(tensor.nbytes)
        dtypes[tensor.dtype.name.lower()] += size
        if _is_param(value, tensor):
            params += size
    return params, nbytes, dict(dtypes)


def op_histogram(model: ir.Model) -> dict[str, int]:
    """Op type (``domain::op`` outside the default domain) -> count, most frequent first."""
    counts = Counter(
        (f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
        for n in model.graph
    )
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def inspect(
    model_or_path: ir.Model | str | os.PathLike[str],
    *,
    target: str | Target = "xbox-series-s",
    batch: int = 1,
    input_shapes: dict[str, list[int]] | None = None,
    budget: int | str | None = None,
) -> InspectResult:
    """Inspect a model (an :class:`onnx_ir.Model` or a path) for ``target``; never changes it.

    ``budget`` (bytes or ``"256MB"``) replaces the target's memory budget in the verdict.

    Raises :class:`~onnxfit.errors.InputError` (bad target, batch, shapes) and
    :class:`~onnxfit.errors.ModelLoadError` / :class:`~onnxfit.errors.UnsafeModelError`
    (from :func:`onnxfit.io.load`).
    """
    tgt = get_target(target)
    file_size: io.FileSize | None = None
    if isinstance(model_or_path, ir.Model):
        model = model_or_path
        name = str(model.graph.name or "model")
    else:
        path = Path(model_or_path)
        model = io.load(path)
        file_size = io.file_size(path)
        name = str(path)
    shaped = infer_shapes(model, batch=batch, input_shapes=input_shapes)
    cost = analyze_cost(shaped, target=tgt)
    default_latency = None
    if any(n.precision not in ("int8", tgt.default_precision) for n in cost.nodes if n.flops):
        default_latency = analyze_cost(shaped, target=tgt, precision=tgt.default_precision).time_s
    memory = plan_memory(shaped)
    params, weight_bytes, dtypes = count_params(shaped)
    verdict = decide_fit(shaped, target=tgt, budget=budget, weights_bytes=weight_bytes)
    dml = None
    if tgt.providers and tgt.providers[0] == "DmlExecutionProvider":
        dml = directml_preflight(shaped, original=model)
    lanes = lane_report(shaped, flops={n.name: n.flops for n in cost.nodes})
    result = InspectResult(
        model=name,
        target=tgt,
        batch=batch,
        input_shapes={k: list(v) for k, v in (input_shapes or {}).items()},
        file_size=file_size,
        params=params,
        weight_bytes=weight_bytes,
        weight_dtypes=dtypes,
        opset=model.opset_imports.get("", model.opset_imports.get("ai.onnx")),
        op_histogram=op_histogram(model),
        inputs=tuple(_tensor_info(v) for v in model.graph.inputs if not v.is_initializer()),
        outputs=tuple(
            _tensor_info(v if v.shape is not None else s)
            for v, s in zip(model.graph.outputs, shaped.graph.outputs, strict=True)
        ),
        cost=cost,
        memory=memory,
        default_precision_latency_s=default_latency,
        verdict=verdict,
        directml=dml,
        lanes=lanes,
        shape_engine=shape_engine(shaped),
    )
    logger.info(
        "%s on %s: %d params, %.3f GFLOPs, %.3f ms, %s",
        name,
        tgt.name,
        params,
        cost.flops / 1e9,
        cost.time_s * 1e3,
        "fits" if result.fits else "does NOT fit",
    )
    return result
