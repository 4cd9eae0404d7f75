"""Channel-coupling rules for the ops that move, cut or join the channel axis (Concat, Split,
Slice, Reshape/Flatten, Squeeze/Unsqueeze, Transpose, Pad, Resize/Upsample): the layout half of
the walk in :mod:`onnxfit.pruning.groups`, kept apart so each module holds one concept.

Each rule either passes the input's channel ids on (re-mapped through offsets or slices), or
locks them when the op touches the channel axis in a way channel removal cannot follow.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfit.pruning.ids import Edit, IdTracker, attr_value, axes_of, const_array


class LayoutRules(IdTracker):
    """Per-op rules (``op_<OpType>``) for the layout ops; the walker in ``groups`` inherits them."""

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
