"""The rewrite half of channel pruning: apply a :class:`~onnxfit.pruning.channels.ChannelPlan`.

Cuts the removed channels out of every constant the coupling analysis recorded (producer
filters and biases, consumer input channels, BatchNormalization parameters, per-channel
constants, Gemm / MatMul rows), rewrites depthwise ``group``, Split sizes, Slice bounds and
Reshape constants, and updates the shapes of every touched value. A constant shared with
another node is copied, never changed under the other node's feet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_ir as ir

if TYPE_CHECKING:
    from onnxfit.pruning.ids import ChannelPlan


def _set_input(node: ir.Node, index: int, array: np.ndarray) -> None:
    value = node.inputs[index]
    assert value is not None
    graph = node.graph
    assert graph is not None
    tensor = ir.tensor(array)
    if value.is_initializer() and len(value.uses()) == 1 and not value.is_graph_input():
        tensor.name = value.name
        value.const_value = tensor
        value.shape = ir.Shape(array.shape)
        return
    base, i, name = f"{value.name}.pruned", 0, f"{value.name}.pruned"
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    tensor.name = name
    new = ir.Value(
        name=name,
        const_value=tensor,
        shape=ir.Shape(array.shape),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
    )
    graph.register_initializer(new)
    node.replace_input_with(index, new)


def _const_or_attr_ints(node: ir.Node, attr: str, index: int) -> tuple[np.ndarray | None, bool]:
    if attr in node.attributes:
        return np.asarray(node.attributes[attr].value, np.int64), True
    if len(node.inputs) > index and node.inputs[index] is not None:
        t = ir.convenience.get_const_tensor(node.inputs[index])  # type: ignore[arg-type]
        return (None if t is None else np.asarray(t.numpy(), np.int64)), False
    return None, False


def apply_plan(model: ir.Model, plan: ChannelPlan) -> int:
    """Rewrite ``model`` to drop the planned channels; the number of values reshaped."""
    cg = plan.graph
    if not plan.removed:
        return 0
    roots = cg.uf.roots()
    gone = np.zeros(len(roots), bool)
    gone[list(plan.removed)] = True

    def keep(ids: np.ndarray) -> np.ndarray:
        return ~gone[roots[ids]]

    for s in cg.slices:
        k = keep(s.ids)
        if k.all():
            continue
        t = ir.convenience.get_const_tensor(s.node.inputs[s.index])  # type: ignore[arg-type]
        assert t is not None
        _set_input(s.node, s.index, np.take(np.asarray(t.numpy()), np.nonzero(k)[0], s.axis))
    for e in cg.edits:
        k = keep(e.ids)
        if k.all():
            continue
        node = e.node
        if e.kind == "group":
            node.attributes["group"] = ir.AttrInt64("group", int(k.sum()))
        elif e.kind == "split":
            sizes = np.array([int(keep(p).sum()) for p in e.parts], np.int64)
            if "split" in node.attributes:
                node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
            elif len(node.inputs) > 1 and node.inputs[1] is not None:
                _set_input(node, 1, sizes)
            else:  # equal split by num_outputs: make the sizes explicit
                node.attributes.pop("num_outputs", None)
                if model.opset_imports.get("", 13) >= 13:
                    shape = np.array(sizes)
                    graph = node.graph
                    assert graph is not None
                    name = f"{node.name}.split_sizes"
                    v = ir.Value(name=name, const_value=ir.tensor(shape, name=name))
                    graph.register_initializer(v)
                    node.resize_inputs(2)
                    node.replace_input_with(1, v)
                else:
                    node.attributes["split"] = ir.AttrInt64s("split", sizes.tolist())
        elif e.kind == "slice":
            start, stop = e.span
            new_start, new_stop = int(k[:start].sum()), int(k[:stop].sum())
            starts, _ = _const_or_attr_ints(node, "starts", 1)
            ends, _ = _const_or_attr_ints(node, "ends", 2)
            assert starts is not None and ends is not None
            starts, ends = starts.copy(), ends.copy()
            starts[e.pos], ends[e.pos] = new_start, new_stop
            _set_input(node, 1, starts)
            _set_input(node, 2, ends)
        elif e.kind == "reshape":
            target, _ = _const_or_attr_ints(node, "shape", 1)
            assert target is not None
            if target.size > 1 and target[1] > 0:
                target = target.copy()
                target[1] = int(k.sum()) * e.repeat
                _set_input(node, 1, target)
    changed = 0
    for value, ids in cg.values.items():
        k = keep(ids)
        if k.all() or value.shape is None or len(value.shape) < 2:
            continue
        dims = list(value.shape.dims)
        dims[1] = int(k.sum())
        value.shape = ir.Shape(dims)
        changed += 1
    return changed
