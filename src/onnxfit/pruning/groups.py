"""Channel coupling analysis for structured pruning: which output channels can go, and with what.

One walk over the graph (topological order) gives every tracked tensor an *id array*: one
integer per channel (axis 1; the features of a 2-D tensor). A Conv with ``group=1`` and
constant weights *creates* ids for its output channels (a **source**); per-channel ops pass
their input's ids on; ops that combine tensors channel by channel *unite* ids in a union-find
(``Add`` of a residual: channel c of both branches must go together); ``Concat`` on axis 1
concatenates the arrays (offset mapping) and ``Split`` / ``Slice`` on axis 1 cut them. A set of
united ids is removed as a whole or not at all. Ids are **locked** (never removed) when they
reach a graph output (output channel counts never change), a graph input, an op this analysis
does not understand (Softmax over channels, LRN, a channel shuffle Reshape/Transpose, Gather,
...), a grouped conv, or a conv excluded by name.

Rules (ops of the ONNX domain; anything else locks its inputs):

* ``Conv``, group 1, constant W (and B): reads its input's ids on W's axis 1; new ids for its
  outputs, sliced on W / B axis 0. Depthwise (group = in = out channels): ids pass through,
  W / B sliced on axis 0 and ``group`` follows. Other grouped convs lock in and out.
* ``BatchNormalization`` / ``InstanceNormalization``: pass, per-channel parameters sliced.
* elementwise unary ops, pooling, ``Resize``/``Upsample`` and ``Pad`` that leave axis 1 alone,
  ``Transpose`` keeping axes 0 and 1, ``Squeeze``/``Unsqueeze`` and reductions that keep axis 1:
  pass.
* elementwise n-ary ops (Add, Mul, Sub, Div, Max, Min, Sum, Mean, Where, PRelu...): ids of the
  full-width tensor inputs are united; constants with a per-channel axis are sliced; a
  channel-wide input that is neither tracked nor constant locks.
* ``Concat`` axis 1: concatenation; other axes: unite. ``Split`` / ``Slice`` on axis 1 (step 1):
  cut, with their sizes / starts / ends rewritten later. ``Reshape`` / ``Flatten`` to
  ``[N, C, ...]`` (same C) pass; to ``[N, C*S]`` repeat each id S times (features of a Gemm
  after flatten); a literal C in the shape constant is rewritten later.
* ``Gemm`` (transA=0) / ``MatMul`` with a constant 2-D weight: the input's ids select the
  weight's input-feature axis; their outputs are new, locked ids.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from onnxfit.pruning.groups_layout import LayoutRules
from onnxfit.pruning.ids import (
    ChannelGraph,
    ConstSlice,
    Edit,
    Source,
    UnionFind,
    attr_value,
    axes_of,
    const_array,
)

__all__ = ["ChannelGraph", "ConstSlice", "Edit", "Source", "UnionFind", "analyze"]

logger = logging.getLogger(__name__)

# fmt: off
UNARY = frozenset((
    "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Sin", "Cos", "Identity", "Dropout", "Cast",
    "Clip", "ThresholdedRelu", "Not", "IsNaN", "IsInf", "MaxPool", "AveragePool", "LpPool",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool",
))
NARY = frozenset((
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Sum", "Mean", "Pow", "PRelu", "Where", "Equal",
    "Less", "Greater", "And", "Or", "Xor",
))
NORM = frozenset(("BatchNormalization", "InstanceNormalization"))
REDUCE = frozenset((
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2",
    "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare",
))
# fmt: on


class _Walker(LayoutRules):
    """Applies the per-op rules of the module docstring, in graph order."""

    def run(self) -> ChannelGraph:
        graph = self.model.graph
        for v in graph.inputs:
            if not v.is_initializer():
                self.fresh(v)
        for node in graph:
            if node.domain not in ("", "ai.onnx"):
                self.lock_node(node, f"domain {node.domain}")
            elif any(
                a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
                for a in node.attributes.values()
            ):
                self.lock_node(node, "has subgraphs")
                self._lock_captured(node)
            else:
                handler = getattr(self, f"op_{node.op_type}", None)
                if handler is not None:
                    handler(node)
                elif node.op_type in UNARY:
                    self.passthrough(node)
                elif node.op_type in NARY:
                    self.nary(node)
                elif node.op_type in NORM:
                    self.norm(node)
                elif node.op_type in REDUCE:
                    self.reduce(node)
                elif node.op_type in ("Shape", "Size"):
                    pass
                else:
                    self.lock_node(node, "op not understood")
        for v in graph.outputs:
            ids = self.ids(v)
            if ids is not None:
                self.uf.lock(ids)
        return self.g

    def _lock_captured(self, node: ir.Node) -> None:
        for attr in node.attributes.values():
            graphs = (
                [attr.value]
                if attr.type == ir.AttributeType.GRAPH
                else (list(attr.value) if attr.type == ir.AttributeType.GRAPHS else [])
            )
            for sub in graphs:
                for inner in sub.all_nodes():
                    for v in inner.inputs:
                        ids = self.ids(v)
                        if ids is not None:
                            self.uf.lock(ids)

    def norm(self, node: ir.Node) -> None:
        ids = self.ids(node.inputs[0])
        params = list(range(1, len(node.inputs)))
        if ids is None or any(const_array(node.inputs[i]) is None for i in params):
            self.lock_node(node, "non-constant parameters")
            return
        for i in params:
            self.g.slices.append(ConstSlice(node, i, 0, ids))
        self.passthrough(node, ids)

    def nary(self, node: ir.Node) -> None:
        out = node.outputs[0]
        out_dims = self.dims(out)
        if out_dims is None or len(out_dims) < 2:
            self.lock_node(node, "output rank unknown")
            return
        rank, width = len(out_dims), out_dims[1]
        full: list[np.ndarray] = []
        consts: list[tuple[int, int]] = []
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            ids = self.ids(v)
            d = self.dims(v)
            arr = const_array(v)
            if arr is not None:
                axis = 1 - (rank - arr.ndim)
                if axis >= 0 and arr.shape[axis] > 1:
                    consts.append((i, axis))
                continue
            if ids is not None and d is not None and len(d) == rank and len(ids) == width:
                full.append(ids)
            elif d is not None and (len(d) < rank - 1 or d[len(d) - rank + 1] == 1):
                continue  # broadcasts over the channels (spatial map, scalar)
            else:
                self.lock_node(node, "channel-wide input of unknown origin")
                return
        if not full:
            self.lock_node(node, "no tracked input")
            return
        for other in full[1:]:
            for a, b in zip(full[0], other, strict=True):
                self.uf.union(int(a), int(b))
        for i, axis in consts:
            self.g.slices.append(ConstSlice(node, i, axis, full[0]))
        self.g.values[out] = full[0]

    def reduce(self, node: ir.Node) -> None:
        axes = axes_of(node, 1)
        dims = self.dims(node.inputs[0])
        ids = self.ids(node.inputs[0])
        if ids is None or axes is None or dims is None or not axes:
            self.lock_node(node, "reduces over channels")
            return
        axes = [a % len(dims) for a in axes]
        keep = int(attr_value(node, "keepdims", 1))  # type: ignore[call-overload]
        if 1 in axes or (0 in axes and not keep):
            self.lock_node(node, "reduces over channels")
            return
        self.passthrough(node, ids)

    # -- ops with their own rule
    def op_Conv(self, node: ir.Node) -> None:
        x, w = node.inputs[0], node.inputs[1]
        warr = const_array(w)
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        ids = self.ids(x)
        if warr is None or (bias is not None and const_array(bias) is None):
            self.lock_node(node, "weights not constant")
            self.g.locked_sources[str(node.name)] = "weights not constant"
            return
        group = int(attr_value(node, "group", 1))  # type: ignore[call-overload]
        cout, cin = warr.shape[0], warr.shape[1] * group
        if group == 1:
            if ids is not None:
                self.g.slices.append(ConstSlice(node, 1, 1, ids, mixes=True))
            locked = node.name in self.exclude
            out = self.uf.new(cout, locked=locked)
            if locked:
                self.g.locked_sources[str(node.name)] = "excluded"
            self.g.sources.append(Source(node, out))
        elif group == cin == cout and ids is not None:
            out = ids
            self.g.edits.append(Edit(node, "group", ids))
        else:
            self.lock_node(node, "grouped conv")
            self.g.locked_sources[str(node.name)] = "grouped conv"
            return
        self.g.slices.append(ConstSlice(node, 1, 0, out))
        if bias is not None:
            self.g.slices.append(ConstSlice(node, 2, 0, out))
        self.g.values[node.outputs[0]] = out

    def _feature_weight(self, node: ir.Node, w_index: int, axis: int) -> None:
        ids = self.ids(node.inputs[0])
        warr = const_array(node.inputs[w_index])
        if ids is None:
            self.fresh(node.outputs[0])
            return
        if warr is None or warr.ndim != 2 or len(self.dims(node.inputs[0]) or []) != 2:
            self.lock_node(node, "input features not matched to a constant weight")
            return
        self.g.slices.append(ConstSlice(node, w_index, axis, ids, mixes=True))
        self.fresh(node.outputs[0])

    def op_Gemm(self, node: ir.Node) -> None:
        if int(attr_value(node, "transA", 0)):  # type: ignore[call-overload]
            self.lock_node(node, "transA")
            return
        self._feature_weight(node, 1, 1 if int(attr_value(node, "transB", 0)) else 0)  # type: ignore[call-overload]

    def op_MatMul(self, node: ir.Node) -> None:
        if const_array(node.inputs[0]) is not None:
            self.lock_node(node, "constant left operand")
            return
        self._feature_weight(node, 1, 0)


def analyze(
    model: ir.Model,
    *,
    shapes: dict[str, list[int]] | None = None,
    exclude: Sequence[str] = (),
) -> ChannelGraph:
    """The channel coupling of ``model`` (not changed). ``shapes``: value name -> static dims
    (from :func:`onnxfit.analysis.shapes.infer_shapes`; the model's own shapes otherwise)."""
    return _Walker(model, dict(shapes or {}), set(exclude)).run()
