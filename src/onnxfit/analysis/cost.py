"""Per-node FLOPs and bytes, and a roofline projection of each node's time on a Target.

Counting rules (the op formulas live in :mod:`onnxfit.analysis.opcount`):

* Conv / ConvTranspose / Gemm / MatMul (batched) / Einsum / RNNs: FLOPs = 2 x MACs, with MACs =
  output elements x the reduction length (for Conv: in-channels per group x kernel elements, so
  groups and dilation are exact). Bias adds are not counted (the fvcore / thop convention).
* Pooling: kernel elements per output; global pooling: one per input element. Normalization,
  elementwise, Softmax, Resize, reductions, Q/DQ: a small fixed count per element (the table in
  ``opcount``; e.g. Add 1, Sigmoid 4, BatchNormalization 2, LayerNormalization 7).
* Bytes read / written: every distinct input / output tensor at its dtype (4-bit types packed),
  weights (initializers, Constant outputs) included and also reported apart. View ops (Reshape,
  Flatten, Squeeze, Unsqueeze, Identity, Dropout) alias their input: 0 bytes. Shape, Size and
  Constant cost nothing (resolved before the run). Other data-movement ops (Transpose, Concat,
  Split, Slice, Gather, Pad, ...) are 0 FLOPs and memory-bound.
* Unknown ops (and control flow) are listed in :attr:`CostReport.unknown_ops`, counted as
  memory-bound with their bytes, ``known=False`` — never dropped.
* Node precision: int8 when it reads int8/uint8 tensors or the output of a DequantizeLinear
  (QDQ: runtimes fuse DQ -> op -> Q into int8 kernels), fp16 when its float inputs are 16-bit,
  else fp32. ``precision=`` re-projects every float node at that precision (float tensors are
  then counted at that precision's size) — a what-if for conversion.

Projection (roofline, Williams et al., CACM 2009)::

    time = max(flops / (target.peak(precision) x lanes), bytes / target.memory_bandwidth)
           + target.dispatch_overhead_s

and ``bound`` says which of the two terms is larger. ``lanes`` is 1 unless the target sets
``wave_size`` (the Series S/X: 32): then it is the share of a wave's lanes the node keeps busy
(:func:`onnxfit.analysis.lanes.lane_utilization`), so idle lanes cost compute time.

This is the uncalibrated prior: "projected, uncalibrated: a floor". A target calibrated on a
device (``onnxfit calibrate``) replaces it with the figures the device achieved per op class
(:mod:`onnxfit.analysis.calibrated`): efficiencies of peak and bandwidth, a cost per kernel, no
cost for nodes its runtime fuses away, a fixed cost per run (``CostReport.run_s``) and, on a GPU,
the copies of the graph's inputs and outputs between host and device (``CostReport.transfer_s``:
:func:`graph_io_bytes` over the calibrated link bandwidth).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import onnx_ir as ir

from onnxfit.analysis import opcount
from onnxfit.analysis.calibrated import (
    CalibratedModel,
    from_table,
    is_fused,
    kernel_time,
    op_class,
)
from onnxfit.analysis.lanes import lane_utilization
from onnxfit.analysis.shapes import has_static_shapes, infer_shapes, static_dims
from onnxfit.errors import InputError
from onnxfit.targets import PRECISIONS, Target, get_target

logger = logging.getLogger(__name__)

Bound = Literal["compute", "memory"]
_FLOAT_DTYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
_INT8_DTYPES = frozenset({ir.DataType.INT8, ir.DataType.UINT8})
_ITEMSIZE = {"fp32": 4.0, "fp16": 2.0, "int8": 1.0}


@dataclass(frozen=True)
class NodeCost:
    """The cost of one node. ``known`` is False for unknown ops or unresolved shapes."""

    name: str
    op_type: str
    flops: int
    bytes_read: int
    bytes_written: int
    weight_bytes: int
    precision: str
    time_s: float
    bound: Bound
    known: bool
    macs: int = 0
    domain: str = ""
    lane_util: float = 1.0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, FLOPs per byte moved (0 when nothing moves)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CostReport:
    """Per-node costs on one target, their totals and a per-bound breakdown."""

    target: str
    precision: str | None
    nodes: tuple[NodeCost, ...]
    unknown_ops: tuple[str, ...] = field(default_factory=tuple)
    run_s: float = 0.0  # a calibrated target's fixed cost per run
    transfer_s: float = 0.0  # a calibrated GPU's host<->device copies of the graph's IO

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def bytes_read(self) -> int:
        return sum(n.bytes_read for n in self.nodes)

    @property
    def bytes_written(self) -> int:
        return sum(n.bytes_written for n in self.nodes)

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def weight_bytes(self) -> int:
        return sum(n.weight_bytes for n in self.nodes)

    @property
    def time_s(self) -> float:
        """Projected latency: the sum of node times (nodes run one after another), plus a
        calibrated target's cost per run and its host<->device copies."""
        return sum(n.time_s for n in self.nodes) + self.run_s + self.transfer_s

    @property
    def unknown_nodes(self) -> int:
        return sum(not n.known for n in self.nodes)

    def by_bound(self) -> dict[str, dict[str, float]]:
        """{"compute"|"memory": {"nodes", "time_s", "flops", "bytes", "share"}}."""
        total = self.time_s or 1.0
        out: dict[str, dict[str, float]] = {}
        for bound in ("compute", "memory"):
            sel = [n for n in self.nodes if n.bound == bound]
            t = sum(n.time_s for n in sel)
            out[bound] = {
                "nodes": len(sel),
                "time_s": t,
                "flops": sum(n.flops for n in sel),
                "bytes": sum(n.bytes for n in sel),
                "share": t / total,
            }
        return out

    def by_op(self) -> dict[str, dict[str, float]]:
        """Totals per op type, largest time first."""
        acc: dict[str, dict[str, float]] = {}
        for n in self.nodes:
            row = acc.setdefault(n.op_type, {"count": 0, "flops": 0, "bytes": 0, "time_s": 0.0})
            row["count"] += 1
            row["flops"] += n.flops
            row["bytes"] += n.bytes
            row["time_s"] += n.time_s
        return dict(sorted(acc.items(), key=lambda kv: -kv[1]["time_s"]))

    def top(self, k: int = 10) -> list[NodeCost]:
        """The ``k`` nodes with the largest projected time (stable for ties)."""
        return sorted(self.nodes, key=lambda n: -n.time_s)[: max(0, k)]

    def to_dict(self, *, nodes: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "target": self.target,
            "precision": self.precision,
            "flops": self.flops,
            "macs": self.macs,
            "bytes_read": self.bytes_read,
            "bytes_written": self.bytes_written,
            "weight_bytes": self.weight_bytes,
            "time_s": self.time_s,
            "run_s": self.run_s,
            "transfer_s": self.transfer_s,
            "by_bound": self.by_bound(),
            "unknown_ops": list(self.unknown_ops),
            "unknown_nodes": self.unknown_nodes,
        }
        if nodes:
            d["nodes"] = [n.to_dict() for n in self.nodes]
        return d


def _numel(value: ir.Value | None) -> int | None:
    dims = static_dims(value)
    return None if dims is None else math.prod(dims)


def _nbytes(value: ir.Value, precision: str | None) -> int | None:
    n = _numel(value)
    if n is None or value.dtype is None:
        return None
    try:
        itemsize = float(value.dtype.itemsize)
    except TypeError:  # UNDEFINED / STRING: no fixed width
        return None
    if precision is not None and value.dtype in _FLOAT_DTYPES:
        itemsize = _ITEMSIZE[precision]
    return math.ceil(n * itemsize)


def _is_weight(value: ir.Value) -> bool:
    if value.is_initializer() or value.const_value is not None:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "Constant"


def node_precision(node: ir.Node) -> str:
    """fp32 / fp16 / int8 for ``node`` as the model stands (see the module docstring)."""
    if node.op_type in opcount.INT8_OPS:
        return "int8"
    inputs = [v for v in node.inputs if v is not None]
    for v in inputs:
        if v.dtype in _INT8_DTYPES:
            return "int8"
        producer = v.producer()
        if producer is not None and producer.op_type == "DequantizeLinear":
            return "int8"
    floats = [v.dtype for v in inputs if v.dtype in _FLOAT_DTYPES]
    if floats and floats[0] in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
        return "fp16"
    return "fp32"


def _unique(values: Iterable[ir.Value | None]) -> list[ir.Value]:
    out: list[ir.Value] = []
    for v in values:
        if v is not None and v not in out:
            out.append(v)
    return out


def node_cost(
    node: ir.Node,
    target: Target,
    *,
    precision: str | None = None,
    calibration: CalibratedModel | None = None,
) -> NodeCost:
    """The cost of one node on ``target`` (its inputs' and outputs' shapes must be set).

    ``calibration`` is ``target``'s calibration already read (read here when not given)."""
    if calibration is None and target.calibration:
        calibration = from_table(target.calibration)
    kind = opcount.kind_of(node)
    prec = node_precision(node)
    if precision is not None and prec != "int8":
        prec = precision
    byte_prec = precision if precision is not None and prec != "int8" else None
    ins, outs = _unique(node.inputs), _unique(node.outputs)
    known = kind != "unknown"
    read = written = weights = 0
    if kind not in ("free", "view"):
        for v in ins:
            b = _nbytes(v, byte_prec)
            if b is None:
                known = False
                continue
            read += b
            if _is_weight(v):
                weights += b
        for v in outs:
            if not v.uses() and not v.is_graph_output():
                continue  # an unused optional output (e.g. Dropout mask) is not materialized
            b = _nbytes(v, byte_prec)
            if b is None:
                known = False
                continue
            written += b
    flops = macs = 0
    if known and kind not in ("free", "view", "move"):
        counted = opcount.count(node)
        if counted is None:
            known = False
        else:
            flops, macs = counted
    lanes = lane_utilization(node, target.wave_size) if target.wave_size and flops else 1.0
    figures = calibration.figures(op_class(node), prec) if calibration is not None else None
    if kind == "free":
        t, bound = 0.0, "memory"
    elif calibration is not None and is_fused(node, calibration.fused):
        t, bound = 0.0, "memory"  # runs inside the kernel before it
    elif calibration is not None and figures is not None:
        t, bound = kernel_time(
            figures,
            flops=flops,
            nbytes=read + written,
            peak=target.peak(prec),
            bandwidth=target.memory_bandwidth,
        )
        t += calibration.per_kernel_s + calibration.weight_s(weights)
    else:
        compute_t = flops / (target.peak(prec) * lanes)
        memory_t = (read + written) / target.memory_bandwidth
        bound = "compute" if compute_t > memory_t else "memory"
        t = max(compute_t, memory_t) + target.dispatch_overhead_s
    return NodeCost(
        name=str(node.name or ""),
        op_type=node.op_type,
        flops=int(flops),
        bytes_read=int(read),
        bytes_written=int(written),
        weight_bytes=int(weights),
        precision=prec,
        time_s=t,
        bound=bound,  # type: ignore[arg-type]
        known=known,
        macs=int(macs),
        domain=node.domain,
        lane_util=lanes,
    )


def graph_io_bytes(model: ir.Model) -> int:
    """Bytes of the graph's inputs (initializers aside) and outputs at their dtypes: what a run
    fed host arrays copies to a device and back. Unresolved shapes count 0."""
    values = [v for v in model.graph.inputs if not v.is_initializer()]
    values += [v for v in model.graph.outputs if v not in values]
    return sum(_nbytes(v, None) or 0 for v in values)


def _prepared(model: ir.Model) -> ir.Model:
    """The model with local functions inlined and shapes inferred (a copy when needed)."""
    if len(model.functions):
        from onnx_ir.passes.common import InlinePass

        model = model.clone()
        InlinePass()(model)
        return infer_shapes(model)
    if not has_static_shapes(model, allow_data_dependent=True):
        logger.info("shapes missing: running shape inference (batch 1)")
        return infer_shapes(model)
    return model


def analyze_cost(
    model: ir.Model, *, target: str | Target, precision: str | None = None
) -> CostReport:
    """Cost every node of ``model`` (shape-inferred; inferred at batch 1 when not) on ``target``.

    ``precision`` (fp32/fp16/int8) re-projects float nodes at that precision; None keeps each
    node's own precision. Never changes ``model``.
    """
    tgt = get_target(target)
    if precision is not None and precision not in PRECISIONS:
        raise InputError(
            f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISIONS)}"
        )
    model = _prepared(model)
    cal = from_table(tgt.calibration) if tgt.calibration else None
    nodes = tuple(node_cost(n, tgt, precision=precision, calibration=cal) for n in model.graph)
    unknown = sorted(
        {
            (f"{n.domain}::" if n.domain not in ("", "ai.onnx") else "") + n.op_type
            for n in model.graph
            if opcount.kind_of(n) == "unknown"
        }
    )
    report = CostReport(
        tgt.name,
        precision,
        nodes,
        tuple(unknown),
        cal.run_s if cal else 0.0,
        cal.transfer_s(graph_io_bytes(model)) if cal else 0.0,
    )
    if unknown:
        logger.warning("ops without a cost formula (counted as memory-bound): %s", unknown)
    logger.info(
        "cost on %s: %.3f GFLOPs, %.2f MB moved, %.3f ms projected",
        tgt.name,
        report.flops / 1e9,
        report.bytes / 1e6,
        report.time_s * 1e3,
    )
    return report
