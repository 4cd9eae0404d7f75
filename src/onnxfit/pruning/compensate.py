"""Mean compensation for channel pruning: what a removed channel contributed on average goes into
the bias of the layer that consumed it (one-shot, data-driven; no training).

A channel removed from the input of a layer that sums over channels (Conv with group 1, Gemm,
MatMul) took away ``W[:, c] * x_c``. Replacing ``x_c`` by its mean over calibration data
``mu_c`` (over samples and positions) instead of by zero keeps the layer's output mean:
``bias += sum_c sum_k W[:, c, k] * mu_c`` (Conv: exact away from zero-padded borders; Gemm:
``C += alpha / beta * B[c] * mu_c``; MatMul: into the constant of the ``Add`` right after it,
if there is one). The literature calls it mean replacement / bias correction; it matters most
for networks whose BatchNormalization was folded into the convs, where a removed channel's
output is far from zero.

Statistics apart from transformation (DESIGN habit 3): :func:`channel_stats` measures,
:func:`activation_scores` ranks channels by what removing them costs, :func:`compensate`
rewrites (before :func:`onnxfit.pruning.channels.apply_plan` slices).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.pruning.ids import ChannelGraph, ConstSlice

if TYPE_CHECKING:
    from onnxfit.pruning.ids import ChannelPlan

logger = logging.getLogger(__name__)


def mixed_inputs(cg: ChannelGraph) -> list[str]:
    """Names of the tensors read by channel-mixing layers (where removed channels are felt)."""
    out = []
    for s in cg.slices:
        if s.mixes and s.node.inputs and s.node.inputs[0] is not None:
            name = str(s.node.inputs[0].name)
            if name not in out:
                out.append(name)
    return out


def channel_stats(
    model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel (mean, variance) — axis 1; over samples and every other axis — of the named
    tensors of ``model`` run on ``feeds`` (onnxruntime CPU)."""
    import onnxruntime as ort

    if not names or not feeds:
        return {}
    proto = io.to_proto(model)
    present = {o.name for o in proto.graph.output}
    dtypes = {str(v.name): v.dtype for n in model.graph for v in n.outputs}
    for name in names:
        if name not in present:
            dtype = dtypes.get(name) or ir.DataType.FLOAT
            proto.graph.output.append(onnx.helper.make_tensor_value_info(name, dtype.value, None))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for feed in feeds:
        outs = sess.run(list(names), dict(feed))
        for name, arr in zip(names, outs, strict=True):
            a = np.asarray(arr, np.float64)
            if a.ndim < 2:
                continue
            axes = tuple(i for i in range(a.ndim) if i != 1)
            sums[name] = sums.get(name, 0) + a.sum(axis=axes)
            squares[name] = squares.get(name, 0) + np.square(a).sum(axis=axes)
            counts[name] = counts.get(name, 0) + a.size // a.shape[1]
    out = {}
    for k, total in sums.items():
        mean = total / counts[k]
        out[k] = (mean, np.maximum(squares[k] / counts[k] - mean**2, 0.0))
    return out


def activation_scores(plan_graph: ChannelGraph, stats: Mapping[str, tuple[np.ndarray, np.ndarray]]
                      ) -> np.ndarray:  # fmt: skip
    """Per channel-set root: ``sqrt(sum over consuming layers of var(x_c) * ||W[:, c]||^2)``,
    the output energy a layer loses when channel c is replaced by its mean (NaN: not
    measured). The data-driven selection criterion."""
    roots = plan_graph.uf.roots()
    acc = np.zeros(len(roots))
    seen = np.zeros(len(roots), bool)
    for s in plan_graph.slices:
        x = s.node.inputs[0] if s.mixes and s.node.inputs else None
        st = stats.get(str(x.name)) if x is not None else None
        w = _const(s.node.inputs[s.index]) if st is not None else None
        if st is None or w is None or st[1].shape[0] != len(s.ids):
            continue
        wm = np.moveaxis(w.astype(np.float64), s.axis, 0).reshape(len(s.ids), -1)
        np.add.at(acc, roots[s.ids], st[1] * np.square(wm).sum(axis=1))
        seen[roots[s.ids]] = True
    return np.where(seen, np.sqrt(acc), np.nan)


def _const(value: ir.Value | None) -> np.ndarray | None:
    t = ir.convenience.get_const_tensor(value) if value is not None else None
    return None if t is None else np.asarray(t.numpy())


def _attr(node: ir.Node, name: str, default: float) -> float:
    a = node.attributes.get(name)
    return default if a is None else float(a.value)


def _new_const(graph: ir.Graph, base: str, array: np.ndarray) -> ir.Value:
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(name=name, const_value=ir.tensor(array, name=name),
                     shape=ir.Shape(array.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(array.dtype)))  # fmt: skip
    graph.register_initializer(value)
    return value


def _add_to_input(node: ir.Node, index: int, delta: np.ndarray, dtype: np.dtype) -> bool:
    graph = node.graph
    assert graph is not None
    old = _const(node.inputs[index]) if len(node.inputs) > index else None
    if len(node.inputs) > index and node.inputs[index] is not None and old is None:
        return False  # a computed bias: leave it
    new = (delta if old is None else old + delta.reshape(old.shape)).astype(dtype)
    value = _new_const(graph, f"{node.name}.compensated_bias", new)
    if len(node.inputs) <= index:
        node.resize_inputs(index + 1)
    node.replace_input_with(index, value)
    return True


def compensate(plan: ChannelPlan, stats: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> int:
    """Add each removed input channel's mean contribution to its consumer's bias; how many
    layers were compensated. Call before :func:`~onnxfit.pruning.channels.apply_plan`."""
    cg = plan.graph
    roots = cg.uf.roots()
    gone = np.zeros(len(roots), bool)
    gone[list(plan.removed)] = True
    done = 0
    for s in list(cg.slices):
        if not s.mixes:
            continue
        lost = np.nonzero(gone[roots[s.ids]])[0]
        x = s.node.inputs[0]
        st = stats.get(str(x.name)) if x is not None else None
        mu = st[0] if st is not None else None
        w = _const(s.node.inputs[s.index])
        if not lost.size or mu is None or w is None or mu.shape[0] != len(s.ids):
            continue
        node = s.node
        part = np.take(w.astype(np.float64), lost, axis=s.axis)
        if node.op_type == "Conv":
            delta = part.reshape(part.shape[0], lost.size, -1).sum(-1) @ mu[lost]
            had_bias = len(node.inputs) > 2 and node.inputs[2] is not None
            if _add_to_input(node, 2, delta, w.dtype) and not had_bias:
                out_ids = cg.values.get(node.outputs[0])
                if out_ids is not None:
                    cg.slices.append(ConstSlice(node, 2, 0, out_ids))
        elif node.op_type == "Gemm":
            alpha, beta = _attr(node, "alpha", 1.0), _attr(node, "beta", 1.0)
            delta = alpha * (part @ mu[lost] if s.axis == 1 else mu[lost] @ part)
            if beta == 0:
                continue
            _add_to_input(node, 2, delta / beta, w.dtype)
        else:  # MatMul: only into a constant Add right after it
            users = list(node.outputs[0].uses())
            add = users[0].node if len(users) == 1 else None
            if add is None or add.op_type != "Add":
                continue
            other = 1 - users[0].idx
            if _const(add.inputs[other]) is None:
                continue
            _add_to_input(add, other, mu[lost] @ part, w.dtype)
        done += 1
    logger.info("prune-channels: mean compensation in %d layers", done)
    return done
