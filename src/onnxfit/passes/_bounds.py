"""Interval bounds of float values, from their producers: enough to skip redundant clips.

Used by the dequantize pass to tell whether a value is already >= 0 (so a hidden ReLU needs no
new Relu node) or already inside a quantization range (so no Clip is needed). The analysis is
conservative: an op it does not know gives ``(-inf, inf)``.
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from onnxfit.passes._quant import QRANGE, const_array

INF = math.inf
Interval = tuple[float, float]
UNKNOWN: Interval = (-INF, INF)

#: Ops with a fixed output interval.
_FIXED: dict[str, Interval] = {
    "Sigmoid": (0.0, 1.0),
    "HardSigmoid": (0.0, 1.0),
    "Softmax": (0.0, 1.0),
    "Tanh": (-1.0, 1.0),
    "Exp": (0.0, INF),
    "Abs": (0.0, INF),
    "Softplus": (0.0, INF),
    "Sqrt": (0.0, INF),
}
#: Ops whose output stays inside the interval of their data input(s) (Concat: all inputs).
_PRESERVING = frozenset(
    {
        "Reshape",
        "Transpose",
        "Flatten",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "MaxPool",
        "GlobalMaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "ReduceMax",
        "ReduceMin",
        "ReduceMean",
        "Split",
        "Slice",
        "Gather",
        "Concat",
        "DepthToSpace",
        "SpaceToDepth",
        "Tile",
        "Expand",
        "Resize",
        "Upsample",
    }
)


def dq_interval(node: ir.Node) -> Interval:
    """Representable output interval of a DequantizeLinear / QuantizeLinear's grid, if known."""
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
    qtype = zp_v.dtype if zp_v is not None else _default_qtype(node)
    if scale is None or qtype not in QRANGE or np.any(scale <= 0):
        return UNKNOWN
    zp = const_array(zp_v) if zp_v is not None else np.zeros(1)
    if zp is None:
        return UNKNOWN
    qmin, qmax = QRANGE[qtype]
    z = zp.astype(np.float64)
    s = scale.astype(np.float64)
    lo = float(np.min((qmin - z) * s))
    hi = float(np.max((qmax - z) * s))
    return lo, hi


def _default_qtype(node: ir.Node) -> ir.DataType | None:
    if node.op_type == "DequantizeLinear":
        return node.inputs[0].dtype if node.inputs[0] is not None else None
    attr = node.attributes.get("output_dtype")
    if attr is not None and attr.as_int() != 0:
        return ir.DataType(attr.as_int())
    return ir.DataType.UINT8


class ValueBounds:
    """Memoized interval of a value; :meth:`set` records intervals of values created later."""

    def __init__(self) -> None:
        self._known: dict[ir.Value, Interval] = {}

    def set(self, value: ir.Value, interval: Interval) -> None:
        self._known[value] = interval

    def __call__(self, value: ir.Value | None, depth: int = 0) -> Interval:
        if value is None:
            return UNKNOWN
        if value not in self._known:
            self._known[value] = self._compute(value, depth)
        return self._known[value]

    def _compute(self, value: ir.Value, depth: int) -> Interval:
        const = const_array(value)
        if const is not None and const.size and np.issubdtype(const.dtype, np.number):
            return float(np.min(const)), float(np.max(const))
        node = value.producer()
        if node is None or node.domain not in ("", "ai.onnx") or depth > 200:
            return UNKNOWN
        op = node.op_type
        if op in _FIXED:
            return _FIXED[op]
        if op == "Relu":
            lo, hi = self(node.inputs[0], depth + 1)
            return max(lo, 0.0), max(hi, 0.0)
        if op == "DequantizeLinear":
            return dq_interval(node)
        if op == "Clip":
            return self._clip(node, depth)
        if op in ("Resize", "Upsample"):
            mode = node.attributes.get("mode")
            if mode is not None and mode.as_string() == "cubic":
                return UNKNOWN
        if op in _PRESERVING:
            data = node.inputs if op == "Concat" else node.inputs[:1]
            intervals = [self(v, depth + 1) for v in data]
            return min(i[0] for i in intervals), max(i[1] for i in intervals)
        return UNKNOWN

    def _clip(self, node: ir.Node, depth: int) -> Interval:
        lo, hi = self(node.inputs[0], depth + 1)
        if "min" in node.attributes or "max" in node.attributes:
            a = node.attributes.get("min")
            b = node.attributes.get("max")
            cmin = a.as_float() if a is not None else -INF
            cmax = b.as_float() if b is not None else INF
        else:
            cmin, cmax = -INF, INF
            for i in (1, 2):
                v = node.inputs[i] if len(node.inputs) > i else None
                if v is None:
                    continue
                arr = const_array(v)
                if arr is None:
                    return UNKNOWN
                if i == 1:
                    cmin = float(arr.reshape(-1)[0])
                else:
                    cmax = float(arr.reshape(-1)[0])
        return max(lo, cmin), min(hi, cmax)
