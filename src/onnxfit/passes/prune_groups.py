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

from onnxfit.passes.prune_ids import (
    ChannelGraph,
    ConstSlice,
    Edit,
    IdTracker,
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


class _Walker(IdTracker):
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

    def op_Concat(self, node: ir.Node) -> None:
        out_dims = self.dims(node.outputs[0])
        if out_dims is None:
            self.lock_node(node, "rank unknown")
            return
        axis = int(attr_value(node, "axis", 1)) % len(out_dims)  # type: ignore[call-overload]
        parts = []
        for v in node.inputs:
            ids = self.ids(v)
            if ids is None and v is not None:
                ids = self.fresh(v)  # a constant or untracked part: locked ids
            if ids is None:
                self.lock_node(node, "untracked input")
                return
            parts.append(ids)
        if axis == 1:
            self.g.values[node.outputs[0]] = np.concatenate(parts)
            return
        for other in parts[1:]:
            if len(other) != len(parts[0]):
                self.lock_node(node, "inputs differ in channels")
                return
            for a, b in zip(parts[0], other, strict=True):
                self.uf.union(int(a), int(b))
        self.g.values[node.outputs[0]] = parts[0]

    def op_Split(self, node: ir.Node) -> None:
        ids = self.ids(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if ids is None or dims is None:
            self.lock_node(node, "untracked")
            return
        axis = int(attr_value(node, "axis", 0)) % len(dims)  # type: ignore[call-overload]
        if axis != 1:
            for out in node.outputs:
                self.g.values[out] = ids
            return
        sizes = [self.dims(o) for o in node.outputs]
        if any(s is None or len(s) != len(dims) or s[1] < 0 for s in sizes):
            self.lock_node(node, "split sizes unknown")
            return
        bounds = np.cumsum([0] + [int(s[1]) for s in sizes if s is not None])
        parts = [ids[bounds[i] : bounds[i + 1]] for i in range(len(sizes))]
        for out, part in zip(node.outputs, parts, strict=True):
            self.g.values[out] = part
        self.g.edits.append(Edit(node, "split", ids, parts=parts))

    def op_Slice(self, node: ir.Node) -> None:
        ids = self.ids(node.inputs[0])
        dims = self.dims(node.inputs[0])
        if ids is None or dims is None:
            self.fresh(node.outputs[0])
            return
        if self.opset < 10:
            self.lock_node(node, "Slice-1 attributes")
            return
        starts, ends = const_array(node.inputs[1]), const_array(node.inputs[2])
        axes = const_array(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        steps = const_array(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4] else None
        if starts is None or ends is None:
            self.lock_node(node, "slice bounds not constant")
            return
        axes_l = [int(a) % len(dims) for a in (axes if axes is not None else range(len(starts)))]
        if 1 not in axes_l:
            self.passthrough(node, ids)
            return
        k = axes_l.index(1)
        if steps is not None and int(steps[k]) != 1:
            self.lock_node(node, "strided channel slice")
            return
        start, stop, _ = slice(int(starts[k]), int(ends[k])).indices(len(ids))
        self.g.values[node.outputs[0]] = ids[start:stop]
        self.g.edits.append(Edit(node, "slice", ids, span=(start, stop), pos=k))

    def _reshape_like(self, node: ir.Node, *, shape_input: bool) -> None:
        x, out = node.inputs[0], node.outputs[0]
        ids, din, dout = self.ids(x), self.dims(x), self.dims(out)
        if ids is None:
            self.fresh(out)
            return
        if din is None or dout is None or min(din + dout) < 0 or len(din) < 2 or len(dout) < 2:
            self.lock_node(node, "shapes unknown")
            return
        spatial_in = int(np.prod(din[2:], dtype=np.int64))
        if shape_input and const_array(node.inputs[1]) is None:
            self.lock_node(node, "shape not constant")
            return
        if din[0] == dout[0] and dout[1] == din[1] and int(np.prod(dout[2:])) == spatial_in:
            new = ids
            repeat = 1
        elif din[0] == dout[0] and len(dout) == 2 and dout[1] == din[1] * spatial_in:
            new = np.repeat(ids, spatial_in)
            repeat = spatial_in
        else:
            self.lock_node(node, "reshape mixes channels")
            return
        self.g.values[out] = new
        if shape_input:
            self.g.edits.append(Edit(node, "reshape", ids, repeat=repeat))

    def op_Reshape(self, node: ir.Node) -> None:
        self._reshape_like(node, shape_input=True)

    def op_Flatten(self, node: ir.Node) -> None:
        if int(attr_value(node, "axis", 1)) != 1:  # type: ignore[call-overload]
            self.lock_node(node, "flatten axis")
            return
        self._reshape_like(node, shape_input=False)

    def _keeps_axis01(self, node: ir.Node, axes: list[int] | None, rank: int) -> bool:
        return axes is not None and all(a % rank not in (0, 1) for a in axes)

    def op_Squeeze(self, node: ir.Node) -> None:
        dims = self.dims(node.inputs[0])
        axes = axes_of(node, 1)
        if dims is None or not axes or not self._keeps_axis01(node, axes, len(dims)):
            self.lock_node(node, "squeeze moves the channel axis")
            return
        self.passthrough(node)

    def op_Unsqueeze(self, node: ir.Node) -> None:
        dims = self.dims(node.outputs[0])
        axes = axes_of(node, 1)
        if dims is None or not axes or not self._keeps_axis01(node, axes, len(dims)):
            self.lock_node(node, "unsqueeze moves the channel axis")
            return
        self.passthrough(node)

    def op_Transpose(self, node: ir.Node) -> None:
        perm = attr_value(node, "perm", None)
        if perm is None or list(perm)[:2] != [0, 1]:  # type: ignore[call-overload]
            self.lock_node(node, "transpose moves the channel axis")
            return
        self.passthrough(node)

    def _leaves_axis1(self, arr: np.ndarray | None, rank: int, *, pads: bool) -> bool:
        if arr is None:
            return False
        flat = arr.reshape(-1)
        if pads:
            return len(flat) == 2 * rank and flat[1] == 0 and flat[1 + rank] == 0
        return len(flat) == rank and float(flat[1]) == 1.0

    def op_Pad(self, node: ir.Node) -> None:
        dims = self.dims(node.inputs[0])
        pads = (
            np.asarray(node.attributes["pads"].value)
            if "pads" in node.attributes
            else const_array(node.inputs[1])
            if len(node.inputs) > 1
            else None
        )
        axes = node.inputs[3] if len(node.inputs) > 3 else None
        if dims is None or axes is not None or not self._leaves_axis1(pads, len(dims), pads=True):
            self.lock_node(node, "pads the channel axis")
            return
        self.passthrough(node)

    def op_Resize(self, node: ir.Node) -> None:
        dims = self.dims(node.inputs[0])
        scale_i = 2 if self.opset >= 11 else 1
        scales = const_array(node.inputs[scale_i]) if len(node.inputs) > scale_i else None
        has_sizes = len(node.inputs) > 3 and node.inputs[3] is not None
        ok = (
            dims is not None
            and not has_sizes
            and scales is not None
            and scales.size
            and self._leaves_axis1(scales, len(dims), pads=False)
        )
        if not ok:
            self.lock_node(node, "resizes the channel axis (or sizes given)")
            return
        self.passthrough(node)

    op_Upsample = op_Resize


def analyze(
    model: ir.Model,
    *,
    shapes: dict[str, list[int]] | None = None,
    exclude: Sequence[str] = (),
) -> ChannelGraph:
    """The channel coupling of ``model`` (not changed). ``shapes``: value name -> static dims
    (from :func:`onnxfit.analysis.shapes.infer_shapes`; the model's own shapes otherwise)."""
    return _Walker(model, dict(shapes or {}), set(exclude)).run()
