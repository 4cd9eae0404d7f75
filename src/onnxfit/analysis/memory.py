"""Static activation-memory plan: tensor lifetimes -> arena offsets -> :class:`MemoryPlan`.

The plan joins two halves by a typed hand-off (DESIGN habit 3):

* statistics, :func:`onnxfit.analysis.lifetimes.tensor_lifetimes`: one
  :class:`~onnxfit.analysis.offsets.TensorLife` (size, first step, last step) per arena buffer of a
  shape-inferred graph. Like onnxruntime, the arena holds intermediate values only: graph inputs
  and outputs are IO, initializers are weights; view ops alias their input and elementwise ops
  work in place over an input that dies there (rules in that module's docstring).
* algorithm, :func:`onnxfit.analysis.offsets.greedy_by_size` (TFLite's arena planner strategy):
  largest buffer first, into the lowest gap that fits among the placed buffers whose lifetimes
  overlap. :func:`plan_memory` uses :func:`~onnxfit.analysis.offsets.plan_offsets`, which also
  tries three other orderings and keeps the smallest arena (deterministic).

Bounds reported with every plan: the lower bound (the largest sum of live buffer bytes at any
step: no offset assignment can do better) and the naive total (every intermediate value in its
own buffer, nothing reused). Every size scales linearly with the batch and with the activation
width: ``precision="fp16"`` halves an fp32 model's arena. :func:`estimate_runtime_memory` adds
weights and IO for the fit verdict, the resource manager and progressive loading.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import onnx_ir as ir

from onnxfit.analysis.lifetimes import (
    analyze_lifetimes,
    check_precision,
    is_constant,
    tensor_lifetimes,
    value_bytes,
)
from onnxfit.analysis.offsets import (
    STRATEGIES,
    TensorLife,
    arena_size,
    greedy_by_size,
    live_profile,
    lower_bound,
    plan_offsets,
)

__all__ = [
    "STRATEGIES",
    "Buffer",
    "MemoryPlan",
    "RuntimeMemory",
    "TensorLife",
    "estimate_runtime_memory",
    "greedy_by_size",
    "lower_bound",
    "plan_memory",
    "plan_offsets",
    "tensor_lifetimes",
    "weights_bytes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Buffer:
    """A placed buffer: bytes ``[offset, offset + size)`` of the arena during steps first..last."""

    name: str
    size: int
    offset: int
    first: int
    last: int
    values: tuple[str, ...] = ()

    @property
    def end(self) -> int:
        return self.offset + self.size

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["values"] = list(self.values)
        return d


@dataclass(frozen=True)
class MemoryPlan:
    """Offsets of every activation buffer in one arena, with the bounds to judge it by."""

    buffers: tuple[Buffer, ...]
    arena_bytes: int
    lower_bound_bytes: int
    naive_bytes: int
    input_bytes: int
    output_bytes: int
    batch: int | None
    dtypes: dict[str, int]  # activation dtype -> bytes of intermediate values (naive)
    alignment: int
    num_steps: int
    peak_step: int  # first step where live bytes reach the lower bound (-1: no buffers)
    peak_node: str
    live_bytes: tuple[int, ...]  # live buffer bytes at each step
    strategy: str
    alias: bool = True
    inplace: bool = True
    precision: str | None = None
    unsized: tuple[str, ...] = ()  # values whose size is unknown and counted as 0 (non-tensors)

    @property
    def io_bytes(self) -> int:
        return self.input_bytes + self.output_bytes

    @property
    def overhead(self) -> float:
        """``arena / lower bound`` (1.0 is optimal for these lifetimes)."""
        return self.arena_bytes / self.lower_bound_bytes if self.lower_bound_bytes else 1.0

    def to_dict(self) -> dict[str, object]:
        return {
            "arena_bytes": self.arena_bytes,
            "lower_bound_bytes": self.lower_bound_bytes,
            "naive_bytes": self.naive_bytes,
            "overhead": round(self.overhead, 6),
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "io_bytes": self.io_bytes,
            "batch": self.batch,
            "dtypes": dict(self.dtypes),
            "alignment": self.alignment,
            "num_steps": self.num_steps,
            "peak_step": self.peak_step,
            "peak_node": self.peak_node,
            "strategy": self.strategy,
            "alias": self.alias,
            "inplace": self.inplace,
            "precision": self.precision,
            "unsized": list(self.unsized),
            "buffers": [b.to_dict() for b in self.buffers],
        }


def _leading_batch(model: ir.Model) -> int | None:
    for v in model.graph.inputs:
        if not v.is_initializer() and v.shape is not None and v.shape.rank() >= 1:
            d = v.shape.dims[0]
            return int(d) if isinstance(d, int) else None
    return None


def plan_memory(
    model: ir.Model,
    *,
    alignment: int = 64,
    alias: bool = True,
    inplace: bool = True,
    precision: str | None = None,
    batch: int | None = None,
) -> MemoryPlan:
    """The activation arena of a shape-inferred model (see the module docstring for the rules).

    ``batch`` is only recorded (default: the first input's leading dimension); fix the batch with
    :func:`onnxfit.analysis.shapes.infer_shapes` before planning.
    """
    walk = analyze_lifetimes(model, alias=alias, inplace=inplace, precision=precision)
    lives = walk.lives
    offsets, strategy = plan_offsets(lives, alignment=alignment)
    profile = live_profile(lives)
    bound = max(profile, default=0)
    peak = profile.index(bound) if lives else -1
    buffers = tuple(
        Buffer(t.name, t.size_bytes, o, t.first, t.last, t.values)
        for t, o in zip(lives, offsets, strict=True)
    )
    plan = MemoryPlan(
        buffers=buffers,
        arena_bytes=arena_size(lives, offsets),
        lower_bound_bytes=bound,
        naive_bytes=walk.naive_bytes,
        input_bytes=walk.input_bytes,
        output_bytes=walk.output_bytes,
        batch=batch if batch is not None else _leading_batch(model),
        dtypes=walk.dtypes,
        alignment=alignment,
        num_steps=len(walk.steps),
        peak_step=peak,
        peak_node=walk.steps[peak] if peak >= 0 else "",
        live_bytes=tuple(profile) + (0,) * (len(walk.steps) - len(profile)),
        strategy=strategy,
        alias=alias,
        inplace=inplace,
        precision=precision,
        unsized=tuple(walk.unsized),
    )
    logger.info(
        "memory plan: arena %d B, lower bound %d B, naive %d B (%d buffers, %s)",
        plan.arena_bytes,
        bound,
        plan.naive_bytes,
        len(buffers),
        strategy,
    )
    return plan


def weights_bytes(model: ir.Model, *, precision: str | None = None) -> int:
    """Bytes of the main graph's initializers and ``Constant`` values (floats at ``precision``)."""
    check_precision(precision)
    total = 0
    for v in model.graph.initializers.values():
        n = value_bytes(v, precision=precision)
        if n is None and v.const_value is not None:
            n = v.const_value.nbytes
        total += n or 0
    for node in model.graph:
        if is_constant(node):
            for out in node.outputs:
                n = value_bytes(out, precision=precision)
                attr = node.attributes.get("value")
                if n is None and attr is not None and attr.type == ir.AttributeType.TENSOR:
                    n = attr.value.nbytes
                total += n or 0
    return total


class RuntimeMemory(int):
    """Bytes a model needs to run: weights + activation arena + graph inputs/outputs.

    An ``int`` (the total, so ``estimate_runtime_memory(m) <= budget`` works) that also carries
    the parts: ``weights_bytes``, ``arena_bytes``, ``io_bytes`` (``input_bytes`` +
    ``output_bytes``), ``batch``, ``precision`` and the :class:`MemoryPlan` behind it. It leaves
    out the runtime's own overhead (FINDINGS: ORT CPU peaks near 215 MiB RSS for ResNet-18,
    mostly session creation), workspace of individual kernels and weight copies made at load.
    """

    weights_bytes: int
    arena_bytes: int
    input_bytes: int
    output_bytes: int
    batch: int
    precision: str | None
    plan: MemoryPlan

    def __new__(
        cls, *, weights_bytes: int, plan: MemoryPlan, batch: int, precision: str | None = None
    ) -> RuntimeMemory:
        obj = super().__new__(cls, weights_bytes + plan.arena_bytes + plan.io_bytes)
        obj.weights_bytes = weights_bytes
        obj.arena_bytes = plan.arena_bytes
        obj.input_bytes = plan.input_bytes
        obj.output_bytes = plan.output_bytes
        obj.batch = batch
        obj.precision = precision
        obj.plan = plan
        return obj

    @property
    def io_bytes(self) -> int:
        return self.input_bytes + self.output_bytes

    @property
    def total(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return (
            f"RuntimeMemory(total={self.total}, weights_bytes={self.weights_bytes}, "
            f"arena_bytes={self.arena_bytes}, io_bytes={self.io_bytes}, batch={self.batch})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_bytes": self.total,
            "weights_bytes": self.weights_bytes,
            "arena_bytes": self.arena_bytes,
            "io_bytes": self.io_bytes,
            "input_bytes": self.input_bytes,
            "output_bytes": self.output_bytes,
            "lower_bound_bytes": self.plan.lower_bound_bytes,
            "naive_bytes": self.plan.naive_bytes,
            "batch": self.batch,
            "precision": self.precision,
        }


def estimate_runtime_memory(
    model: ir.Model,
    *,
    batch: int = 1,
    precision: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    alignment: int = 64,
) -> RuntimeMemory:
    """Weights + arena + IO bytes of ``model`` at ``batch`` (an ``int`` with the parts attached).

    Shapes are inferred on a copy (:func:`onnxfit.analysis.shapes.infer_shapes`; the model is not
    changed). ``precision`` counts floating-point weights and activations at that width, e.g.
    "fp16" for a model that will be converted. Raises :class:`InputError` for batch <= 0 or
    shapes that stay unknown.
    """
    from onnxfit.analysis.shapes import infer_shapes

    shaped = infer_shapes(model, batch=batch, input_shapes=input_shapes)
    plan = plan_memory(shaped, alignment=alignment, precision=precision, batch=batch)
    weights = weights_bytes(shaped, precision=precision)
    return RuntimeMemory(weights_bytes=weights, plan=plan, batch=batch, precision=precision)
