"""The calibrated latency model: per op class and precision, what a device really achieves.

An uncalibrated target projects every node on the roofline of its datasheet (a floor: no
kernel reaches peak, and every dispatch costs more than the launch itself). A target calibrated
by ``onnxfit calibrate`` (:mod:`onnxfit.profiling.calibrate`) carries, in its TOML
``[calibration]`` table, for each op class and precision:

* ``compute_efficiency`` — the fraction of ``peak(precision)`` the class's kernels achieve,
* ``bandwidth_efficiency`` — the fraction of ``memory_bandwidth`` they achieve,
* ``overhead_s`` — a fixed time per kernel (launch, threading, small-tensor costs),

and, for the whole model, ``per_kernel_s`` (the gap between kernels: the runtime's own work per
node), ``run_s`` (a fixed cost per ``run``) and, on a device with memory of its own (a GPU fed
host arrays), ``transfer_bandwidth`` (bytes/s over the host link: the graph's inputs go to the
device and its outputs come back on every run) and ``weight_bandwidth`` (bytes/s at which a
runtime that touches every weight on every run, e.g. to re-layout it, gets through them; 0 or
absent: no such cost). A node's time is then::

    time = max(flops / (compute_efficiency x peak), bytes / (bandwidth_efficiency x bandwidth))
           + overhead_s + per_kernel_s + weight bytes / weight_bandwidth

and the model's is the sum over its kernels plus ``run_s`` plus
``graph_io_bytes / transfer_bandwidth`` (:func:`onnxfit.analysis.cost.graph_io_bytes`).
Nodes the device's runtime fuses into the kernel before them cost nothing of their own:
``fused`` lists the (op, producer op) pairs the calibration saw fused (e.g. a Relu after a
Conv on ORT's CPU provider), and a node matches when its first input comes from such a
producer and is read by it alone; a pair whose producer is ``<constant>`` (e.g. the
DequantizeLinear of a weight) is folded at load.

Op classes (:func:`op_class`): ``conv`` (spatial kernels), ``conv1x1`` (pointwise, stride 1),
``dwconv`` (depthwise), ``matmul`` (MatMul, Gemm, Einsum), ``pool``, ``norm`` (normalizations,
Softmax, reductions), ``resize``, ``move`` (Transpose, Concat, Slice, views ...), ``eltwise``
(everything else with a formula) and ``other`` (no formula). A class the calibration has no
figures for falls back to the calibration's ``default`` entry, then to the roofline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from onnxfit.analysis import opcount
from onnxfit.analysis.shapes import static_dims

_CONVS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"})
_MATMULS = frozenset(
    {"MatMul", "Gemm", "Einsum", "QLinearMatMul", "MatMulInteger", "FusedMatMul", "FusedGemm"}
)
_POOLS = frozenset(
    {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
)
_NORMS = frozenset(
    {
        "BatchNormalization",
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "Softmax",
        "LogSoftmax",
        "LRN",
        "MeanVarianceNormalization",
    }
)
CLASSES = ("conv", "conv1x1", "dwconv", "matmul", "pool", "norm", "resize", "move", "eltwise")


def op_class(node: ir.Node) -> str:
    """The op class of ``node`` (module docstring)."""
    op = node.op_type
    if op in _CONVS:
        w = static_dims(node.inputs[1]) if len(node.inputs) > 1 else None
        group = int(node.attributes["group"].value) if "group" in node.attributes else 1
        if w is not None and group > 1 and w[1] == 1:
            return "dwconv"
        strides = node.attributes.get("strides")
        unit_stride = strides is None or all(s == 1 for s in strides.value)
        if w is not None and all(k == 1 for k in w[2:]) and unit_stride and group == 1:
            return "conv1x1"
        return "conv"
    if op in _MATMULS:
        return "matmul"
    if op in _POOLS:
        return "pool"
    if op in _NORMS or op.startswith("Reduce"):
        return "norm"
    if op in ("Resize", "Upsample"):
        return "resize"
    kind = opcount.kind_of(node)
    if kind in ("move", "view", "free"):
        return "move"
    return "eltwise" if kind == "compute" else "other"


@dataclass(frozen=True)
class OpFigures:
    """What one op class achieves at one precision (module docstring)."""

    compute_efficiency: float
    bandwidth_efficiency: float
    overhead_s: float
    samples: int = 0


@dataclass(frozen=True)
class CalibratedModel:
    """A ``[calibration]`` table read into figures (see :func:`from_table`)."""

    ops: Mapping[tuple[str, str], OpFigures]
    per_kernel_s: float
    run_s: float
    fused: frozenset[tuple[str, str]]
    source: str = ""
    transfer_bandwidth: float = 0.0  # bytes/s host<->device; 0: no copies (a CPU)
    weight_bandwidth: float = 0.0  # bytes/s through every weight per run; 0: no such cost

    def transfer_s(self, nbytes: int) -> float:
        """Seconds to copy ``nbytes`` of graph inputs and outputs between host and device."""
        return nbytes / self.transfer_bandwidth if self.transfer_bandwidth > 0 else 0.0

    def weight_s(self, nbytes: int) -> float:
        """Seconds a kernel spends on ``nbytes`` of its weights beyond its roofline time."""
        return nbytes / self.weight_bandwidth if self.weight_bandwidth > 0 else 0.0

    def figures(self, cls: str, precision: str) -> OpFigures | None:
        for key in ((cls, precision), (cls, "fp32"), ("default", precision), ("default", "fp32")):
            if key in self.ops:
                return self.ops[key]
        return None


def from_table(table: Mapping[str, Any]) -> CalibratedModel:
    """Read a target's ``calibration`` table (as :func:`onnxfit.targets.load_target_file` keeps
    it): ``ops.<class>.<precision> = {compute_efficiency, bandwidth_efficiency, overhead_s}``."""
    ops: dict[tuple[str, str], OpFigures] = {}
    for cls, per_prec in dict(table.get("ops", {})).items():
        for prec, f in dict(per_prec).items():
            ops[(str(cls), str(prec))] = OpFigures(
                float(f["compute_efficiency"]),
                float(f["bandwidth_efficiency"]),
                float(f.get("overhead_s", 0.0)),
                int(f.get("samples", 0)),
            )
    fused = frozenset((str(a), str(b)) for a, b in (p.split("<-") for p in table.get("fused", [])))
    return CalibratedModel(
        ops=ops,
        per_kernel_s=float(table.get("per_kernel_s", 0.0)),
        run_s=float(table.get("run_s", 0.0)),
        fused=fused,
        source=str(table.get("source", "")),
        transfer_bandwidth=float(table.get("transfer_bandwidth", 0.0)),
        weight_bandwidth=float(table.get("weight_bandwidth", 0.0)),
    )


CONSTANT = "<constant>"
GRAPH_INPUT = "<input>"


def producer_key(node: ir.Node) -> str | None:
    """What feeds ``node``'s first input: the producer's op type, :data:`CONSTANT` (an
    initializer or Constant: e.g. a weight's DequantizeLinear) or :data:`GRAPH_INPUT`."""
    if not node.inputs or node.inputs[0] is None:
        return None
    src = node.inputs[0]
    producer = src.producer()
    if producer is None:
        return CONSTANT if src.is_initializer() or src.const_value is not None else GRAPH_INPUT
    return CONSTANT if producer.op_type == "Constant" else producer.op_type


def is_fused(node: ir.Node, fused: frozenset[tuple[str, str]]) -> bool:
    """True when ``node`` has no kernel of its own (module docstring): it runs inside the
    kernel before it (a pair in ``fused`` whose tensor it alone reads) or, for a pair with
    :data:`CONSTANT`, is folded at load."""
    key = producer_key(node)
    if key is None or (node.op_type, key) not in fused:
        return False
    if key in (CONSTANT, GRAPH_INPUT):
        return key == CONSTANT
    src = node.inputs[0]
    assert src is not None
    return len(src.uses()) == 1 and not src.is_graph_output()


def kernel_time(
    figures: OpFigures, *, flops: int, nbytes: int, peak: float, bandwidth: float
) -> tuple[float, str]:
    """(seconds, bound) of one kernel with ``figures`` (without the per-kernel gap)."""
    compute = flops / (figures.compute_efficiency * peak) if flops else 0.0
    memory = nbytes / (figures.bandwidth_efficiency * bandwidth) if nbytes else 0.0
    bound = "compute" if compute > memory else "memory"
    return max(compute, memory) + figures.overhead_s, bound
