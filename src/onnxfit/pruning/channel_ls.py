"""``prune-channels`` with ``method="reconstruct"``: least-squares refit of the next layers.

:class:`ReconstructChannelsPass` is the registry's ``prune-channels`` pass. With
``method="magnitude"`` it is :class:`~onnxfit.pruning.channels.PruneChannelsPass` unchanged
(filter norms; with feeds the data-driven ranking and mean compensation). With
``method="reconstruct"`` and calibration ``feeds`` (He et al. 2017, "Channel Pruning for
Accelerating Very Deep Neural Networks"; Luo et al. 2017, ThiNet):

1. the channel sets to remove come from :func:`~onnxfit.pruning.channels.plan_channels` with
   the feeds: every coupling group (residual Adds, Concat, depthwise, route / upsample) is
   respected, sets are ranked by the output energy their consuming layers lose
   (``var(x_c) ||W[:, c]||^2``), and every group keeps a multiple of ``multiple_of`` channels;
2. the model is rewritten (:func:`~onnxfit.pruning.channels.apply_plan`), no mean compensation;
3. every consuming layer that lost input channels (Conv with ``group=1``, Gemm) is refitted, in
   graph order and sequentially: its weights on the kept inputs and its bias are the
   least-squares solution of ``W' x_pruned + b' ~= W x_dense + b`` over the calibration inputs
   (``x_pruned`` as the already refitted model computes it, ``x_dense`` from the model before
   pruning; im2col rows for convs, at most ``ROWS_PER_SAMPLE`` positions per image), with a
   ridge of ``damp`` x the mean diagonal. Stats add ``method``, ``refitted`` and
   ``output_error`` (mean relative ``||Y' - Y||^2 / ||Y||^2`` of the refitted layers on the
   calibration inputs).

:func:`least_squares` is the solver on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.pruning import scores as sc
from onnxfit.pruning.activations import Layer, input_batches
from onnxfit.pruning.channels import PruneChannelsPass, Scope
from onnxfit.pruning.reconstruct import Method, check_method
from onnxfit.pruning.unstructured import weight_input

logger = logging.getLogger(__name__)

#: output positions per image used for a layer's least-squares fit
ROWS_PER_SAMPLE = 1024


def least_squares(gram: np.ndarray, cross: np.ndarray, *, damp: float = 0.01) -> np.ndarray:
    """``cross @ (gram + damp x mean(diag) I)^-1`` (``gram`` symmetric ``[C, C]``, ``cross``
    ``[R, C]``): the rows ``w`` minimising ``||w A - Y||^2 + ridge`` given ``gram = A A^T`` and
    ``cross = Y A^T``."""
    g = np.array(gram, np.float64, copy=True)
    diag = np.einsum("ii->i", g)
    diag[diag <= 0] = 1.0
    diag += damp * float(diag.mean())
    return np.linalg.solve(g, np.asarray(cross, np.float64).T).T


def _rows(n: int, cap: int) -> np.ndarray | slice:
    return slice(None) if n <= cap else np.linspace(0, n - 1, cap).astype(np.int64)


def _set_bias(node: ir.Node, bias: np.ndarray, dtype: np.dtype) -> None:
    graph = node.graph
    assert graph is not None
    old = node.inputs[2] if len(node.inputs) > 2 else None
    name = str(old.name) if old is not None else f"{node.name}.refit_bias"
    while old is None and name in graph.initializers:
        name += "_"
    value = ir.Value(name=name, const_value=ir.tensor(bias.astype(dtype), name=name),
                     shape=ir.Shape(bias.shape),
                     type=ir.TensorType(ir.DataType.from_numpy(np.dtype(dtype))))  # fmt: skip
    if old is not None:
        old.const_value = value.const_value
        return
    graph.register_initializer(value)
    node.resize_inputs(3)
    node.replace_input_with(2, value)


def _bias_of(node: ir.Node, rows: int) -> np.ndarray:
    v = node.inputs[2] if len(node.inputs) > 2 else None
    if v is None:
        return np.zeros(rows)
    t = ir.convenience.get_const_tensor(v)
    if t is None:
        raise InputError(f"{node.name}: a computed bias cannot be refitted")
    return np.asarray(t.numpy(), np.float64).reshape(-1)


def refit_layer(
    dense: ir.Model,
    pruned: ir.Model,
    name: str,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    removed_rows: Sequence[int] = (),
    damp: float = 0.01,
) -> float:
    """Refit the node ``name`` of ``pruned`` (in place) to reproduce its output in ``dense`` on
    ``feeds`` (module docstring, step 3): its kept outputs (all but ``removed_rows``, the output
    channels pruning took from it); the relative output error left."""
    nd = next(n for n in dense.graph if n.name == name)
    npr = next(n for n in pruned.graph if n.name == name)
    ld, lp = Layer.of(nd, 1), Layer.of(npr, 1)
    wd, bd = ld.matrix()[0], _bias_of(nd, ld.matrix().shape[1])
    keep = np.setdiff1d(np.arange(wd.shape[0]), np.asarray(removed_rows, np.int64))
    wd, bd = wd[keep], bd[keep]
    value = str(ld.input.name)
    gram: np.ndarray | float = 0.0
    cross: np.ndarray | float = 0.0
    ty = 0.0
    for xd, xp in zip(
        input_batches(dense, [value], feeds), input_batches(pruned, [value], feeds), strict=True
    ):
        pd, pp = ld.patches(xd[value])[0], lp.patches(xp[value])[0]
        idx = _rows(pd.shape[0], ROWS_PER_SAMPLE * xd[value].shape[0])
        y = pd[idx] @ wd.T.astype(np.float32) + bd.astype(np.float32)  # [N, R] float32
        a = np.concatenate([pp[idx], np.ones((y.shape[0], 1), np.float32)], axis=1)
        gram = gram + (a.T @ a).astype(np.float64)
        cross = cross + (y.T @ a).astype(np.float64)
        ty += float(np.sum(np.square(y, dtype=np.float64)))
    assert isinstance(gram, np.ndarray) and isinstance(cross, np.ndarray)
    sol = least_squares(gram, cross, damp=damp)
    w2, b2 = sol[:, :-1], sol[:, -1]
    lp.weight.const_value = ir.tensor(lp.from_matrix(w2[None]), name=lp.name)
    _set_bias(npr, b2, lp.array().dtype)
    # ||sol A - Y||^2 = sol G sol^T - 2 sol C^T + Y Y^T, summed over rows
    left = float(np.sum((sol @ gram) * sol) - 2 * np.sum(sol * cross) + ty)
    return max(left, 0.0) / ty if ty > 0 else 0.0


def _shrunk_consumers(dense: ir.Model, pruned: ir.Model) -> list[str]:
    """Names of the Conv (group 1) / Gemm nodes whose weight lost input columns, graph order."""
    before = {n.name: n for n in dense.graph}
    out = []
    for node in pruned.graph:
        old = before.get(node.name)
        if old is None or node.op_type not in ("Conv", "Gemm") or weight_input(node) != 1:
            continue
        if node.op_type == "Conv" and Layer.of(node, 1).groups != 1:
            continue
        try:
            shape_new, shape_old = Layer.of(node, 1).matrix().shape, Layer.of(old, 1).matrix().shape
        except InputError:
            continue
        if shape_new[2] < shape_old[2]:
            out.append(str(node.name))
    return out


class ReconstructChannelsPass(PruneChannelsPass):
    """The ``prune-channels`` pass: filter norms (the base class) or least-squares
    reconstruction of the consuming layers (module docstring)."""

    def __init__(
        self,
        *,
        ratio: float | None = 0.3,
        scope: Scope = "layer",
        ratios: Mapping[str, float] | None = None,
        norm: sc.Norm = "l1",
        max_ratio: float = 0.9,
        min_channels: int = 1,
        multiple_of: int = 8,
        exclude: Sequence[str] = (),
        exclude_first: bool = False,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        compensate: bool = True,
        method: Method = "magnitude",
        damp: float = 0.01,
    ) -> None:
        check_method(method, [{}], what="prune-channels")
        super().__init__(
            ratio=ratio, scope=scope, ratios=ratios, norm=norm, max_ratio=max_ratio,
            min_channels=min_channels, multiple_of=multiple_of, exclude=exclude,
            exclude_first=exclude_first, feeds=feeds,
            compensate=compensate and method == "magnitude",
        )  # fmt: skip
        self.method = method
        self.damp = damp

    def run(self, model: ir.Model) -> bool:
        if not check_method(self.method, self._feeds, what="prune-channels"):
            changed = super().run(model)
            self.stats["method"] = "magnitude"
            return changed
        assert self._feeds is not None  # check_method refuses none
        dense = io.clone(model)
        changed = super().run(model)
        names = _shrunk_consumers(dense, model) if changed else []
        removed = self.plan.removed_channels() if self.plan is not None else {}
        errors = []
        for name in names:
            gone = removed.get(name, [])
            errors.append(
                refit_layer(dense, model, name, self._feeds, removed_rows=gone, damp=self.damp)
            )
            logger.debug("prune-channels: %s refitted, relative error %.4f", name, errors[-1])
        self.stats.update(
            method="reconstruct",
            refitted=len(names),
            output_error=round(float(np.mean(errors)), 5) if errors else 0.0,
        )
        return changed
