"""Before/after figures of a model: size, parameters, FLOPs, memory, latency (projected and
measured).

Static figures come from :func:`onnxfit.analysis.inspect.inspect` at batch 1 (parameters,
GFLOPs, the activation arena of the greedy-by-size memory plan, weights + arena + IO, the
roofline latency on the target at the model's own precision). The measured latency is
onnxruntime's CPU provider on *this host*: ``warmup`` untimed runs, then the median of
``runs`` timed runs of one sample (a short, noisy measure; ``benchmarks/`` has the careful one).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.analysis.fit import FitVerdict
from onnxfit.targets import Target

logger = logging.getLogger(__name__)


@dataclass
class ModelStats:
    """One model's figures for the before/after table (bytes, seconds, counts)."""

    precision: str
    file_bytes: int
    params: int
    flops: int
    weight_bytes: int
    arena_bytes: int
    runtime_bytes: int
    projected_latency_s: float
    fits: bool
    nodes: int
    measured_latency_s: float | None = None
    fit: dict[str, Any] | None = None  # FitVerdict.to_dict(): load / first run vs the budget
    verdict: FitVerdict | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["verdict"] = self.verdict.to_dict() if self.verdict is not None else None
        return d


def model_stats(
    model: ir.Model,
    *,
    target: Target,
    file_bytes: int,
    precision: str,
    budget: int | str | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> ModelStats:
    """Static figures of ``model`` on ``target`` (``file_bytes`` measured by the caller);
    ``budget`` replaces the target's memory budget in the fit verdict; ``input_shapes`` pins
    dynamic input dims (``--input-shape``)."""
    from onnxfit.analysis.inspect import inspect
    from onnxfit.pruning.sparse import densified

    # sparse-stored weights are decoded (constant-folded) at load: analyse the dense form
    shapes = {k: list(v) for k, v in input_shapes.items()} if input_shapes else None
    result = inspect(densified(model), target=target, batch=1, budget=budget, input_shapes=shapes)
    return ModelStats(
        precision=precision,
        file_bytes=int(file_bytes),
        params=int(result.params),
        flops=int(result.flops),
        weight_bytes=int(result.weight_bytes),
        arena_bytes=int(result.memory.arena_bytes),
        runtime_bytes=int(result.runtime_bytes),
        projected_latency_s=float(result.latency_s),
        fits=bool(result.fits),
        nodes=int(result.num_nodes),
        fit=result.verdict.to_dict() if result.verdict else None,
        verdict=result.projection,
    )


def one_sample(
    feed: Mapping[str, np.ndarray], model: ir.Model | None = None
) -> dict[str, np.ndarray]:
    """The first sample of a feed (batch axis kept); the first ``n`` where ``model`` fixes the
    input's batch dimension at ``n`` (a model built for batch 2 takes nothing else); scalars
    (a sample rate) whole."""
    fixed: dict[str, int] = {}
    if model is not None:
        for value in model.graph.inputs:
            dims = value.shape.dims if value.shape is not None else ()
            if dims and isinstance(dims[0], int) and dims[0] > 0:
                fixed[str(value.name)] = dims[0]
    # (np.ascontiguousarray would turn a 0-d array into shape [1])
    return {
        k: np.ascontiguousarray(v[: fixed.get(k, 1)]) if np.ndim(v) else np.asarray(v)
        for k, v in feed.items()
    }


def measure_latency(
    model: ir.Model, feed: Mapping[str, np.ndarray], *, runs: int = 20, warmup: int = 3
) -> float | None:
    """Median seconds per run of ``model`` on ``feed`` in ORT's CPU provider (None: runs=0)."""
    if runs <= 0:
        return None
    from onnxfit.runtime.session import Session

    with Session(model, target="cpu") as sess:
        for _ in range(warmup):
            sess.run(feed)
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(feed)
            times.append(time.perf_counter() - t0)
    return float(statistics.median(times))


COMPUTE_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})


def _from_dq(value: ir.Value | None) -> bool:
    if value is None:
        return False
    producer = value.producer()
    return producer is not None and producer.op_type == "DequantizeLinear"


def compute_precision(node: ir.Node) -> str:
    """The precision a compute node (Conv/Gemm/MatMul) runs at: ``int8`` when its data input
    and its weight both come from DequantizeLinear (ORT fuses the pair into an integer kernel),
    ``fp16`` when its output is float16, else ``fp32``."""
    ins = list(node.inputs)
    if len(ins) >= 2 and _from_dq(ins[0]) and _from_dq(ins[1]):
        return "int8"
    out = node.outputs[0] if node.outputs else None
    if out is not None and out.dtype == ir.DataType.FLOAT16:
        return "fp16"
    return "fp32"


def precision_share(model: ir.Model, precision: str, *, target: Target) -> dict[str, Any]:
    """How much of ``model``'s compute (Conv/ConvTranspose/Gemm/MatMul) runs at ``precision``:
    ``{"nodes": k, "total": n, "node_share": k/n, "flops_share": ...}`` (FLOPs from
    :func:`onnxfit.analysis.cost.analyze_cost` at batch 1)."""
    from onnxfit.analysis.cost import analyze_cost
    from onnxfit.pruning.sparse import densified

    dense = densified(model)
    nodes = [n for n in dense.graph if n.op_type in COMPUTE_OPS]
    names = [str(n.name or "") for n in nodes]
    at = {str(n.name or "") for n in nodes if compute_precision(n) == precision}
    flops: dict[str, int] = {}
    try:
        flops = {c.name: int(c.flops) for c in analyze_cost(dense, target=target).nodes}
    except Exception:
        flops = {}
    total_flops = sum(flops.get(n, 0) for n in names)
    return {
        "precision": precision,
        "nodes": len(at),
        "total": len(nodes),
        "node_share": len(at) / len(nodes) if nodes else 1.0,
        "flops_share": (sum(flops.get(n, 0) for n in at) / total_flops if total_flops else None),
    }
