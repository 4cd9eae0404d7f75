"""``prune`` with ``method="reconstruct"``: unstructured pruning with layer-wise reconstruction.

:class:`ReconstructPrunePass` is the registry's ``prune`` pass. With ``method="magnitude"`` it
is :class:`~onnxfit.pruning.unstructured.PrunePass` unchanged (zero the smallest ``|w|``). With
``method="reconstruct"`` and calibration ``feeds`` (inputs of the model, a few dozen images):

1. **Allocation** — how many weights each tensor loses, exactly ``round(sparsity x N)`` in all
   (``scope="global"``): the globally smallest of the *output-normalised* scores
   ``w_ij^2 E[x_j^2] / mean_layer(w^2 E[x^2])`` (each weight's contribution to its layer's output
   energy on the calibration inputs, relative to the layer's average), so that per-channel
   scales folded in from BatchNorm do not decide which layer is pruned; capped per tensor
   (``max_sparsity``). ``scope="layer"``: the same share in every tensor; ``ratios``: given.
2. **Reconstruction** — layer by layer in graph order, *sequentially*: each layer's input is
   computed by the model with the layers before it already pruned, unfolded
   (:mod:`~onnxfit.pruning.activations`), streamed into ``H = X^T X`` batch by batch, and
   the layer is pruned to its count with OBS weight updates (:mod:`~onnxfit.pruning.obs`).
3. **Bias correction** (``bias_correction=True``, off by default): a layer with a bias also gets
   ``(W - W') E[x]`` added, the mean output shift on the calibration inputs.

Without feeds ``method="reconstruct"`` is refused (it needs data). Stats as ``prune``, plus
``method``, ``calibration_samples`` and ``output_error`` (relative ``||(W-W')X||^2 /
||WX||^2`` per tensor, mean over tensors).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.pruning import obs
from onnxfit.pruning import scores as sc
from onnxfit.pruning.activations import Layer, accumulate, input_batches
from onnxfit.pruning.unstructured import (
    PrunePass,
    Scope,
    TensorSparsity,
    WeightRef,
    _caps,
    _ratio_for,
    find_weights,
    weight_input,
)

logger = logging.getLogger(__name__)

Method = Literal["magnitude", "reconstruct"]
METHODS = ("magnitude", "reconstruct")
#: rows (output positions) per image kept for a Hessian; more only add cost on large maps
ROWS_PER_SAMPLE = 2048
ALLOC = "row"


def _samples(feeds: Sequence[Mapping[str, np.ndarray]]) -> int:
    return sum(int(next(iter(f.values())).shape[0]) for f in feeds)


def layers_of(refs: Sequence[WeightRef]) -> dict[str, Layer]:
    """Tensor name -> :class:`Layer` for the tensors read by exactly one node."""
    out = {}
    for ref in refs:
        if len(ref.nodes) == 1:
            node = ref.nodes[0]
            i = weight_input(node)
            if i is not None:
                try:
                    out[ref.name] = Layer.of(node, i)
                except InputError as exc:
                    logger.debug("prune: %s falls back to magnitude (%s)", ref.name, exc)
    return out


def input_energy(
    model: ir.Model, layers: Sequence[Layer], feeds: Sequence[Mapping[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """Tensor name -> ``E[x_j^2]`` per input column ``[G, C]`` of the *unpruned* model, one
    pass over ``feeds`` (a Conv's column gets its channel's mean square)."""
    values = sorted({str(layer.input.name) for layer in layers})
    sums: dict[str, np.ndarray] = {}
    n = 0
    for out in input_batches(model, values, feeds):
        n += next(iter(out.values())).shape[0]
        for name, x in out.items():
            x = np.asarray(x, np.float64)
            axes = (0, *range(2, x.ndim)) if x.ndim > 2 else (0,)
            ms = np.square(x).mean(axis=axes) * x.shape[0]
            sums[name] = sums[name] + ms if name in sums else ms
    out_e = {}
    for layer in layers:
        ms = sums[str(layer.input.name)] / max(n, 1)
        g, _, c = layer.matrix().shape
        if layer.node.op_type == "Conv":
            k = c // (ms.size // g)
            out_e[layer.name] = np.repeat(ms.reshape(g, -1), k, axis=1)
        else:
            out_e[layer.name] = ms.reshape(1, c)
    return out_e


def allocate(
    refs: Sequence[WeightRef],
    layers: Mapping[str, Layer],
    energy: Mapping[str, np.ndarray],
    *,
    sparsity: float | None,
    scope: Scope,
    max_sparsity: float,
    ratios: Mapping[str, float] | None,
) -> dict[str, int]:
    """Tensor name -> weights to prune (module docstring, step 1); counts are exact."""
    sizes = [r.size for r in refs]
    caps = _caps(sizes, max_sparsity)
    if ratios is not None:
        return {
            r.name: min(sc.exact_count(_ratio_for(r, ratios) or 0.0, n), cap)
            for r, n, cap in zip(refs, sizes, caps, strict=True)
        }
    if sparsity is None or not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must be in [0, 1], got {sparsity}", hint="e.g. sparsity=0.5")
    if scope == "layer":
        return {
            r.name: min(sc.exact_count(sparsity, n), cap)
            for r, n, cap in zip(refs, sizes, caps, strict=True)
        }
    scores = []
    for r in refs:
        layer = layers.get(r.name)
        if layer is None:
            scores.append(sc.normalized(np.square(r.array().astype(np.float64))).reshape(-1))
            continue
        s = np.square(layer.matrix()) * energy[r.name][:, None, :]
        if ALLOC == "row":
            s = s / np.maximum(s.sum(axis=2, keepdims=True), 1e-30)
        else:
            s = sc.normalized(s)
        scores.append(s.reshape(-1))
    counts = sc.prune_counts(scores, sc.exact_count(sparsity, sum(sizes)), caps)
    return {r.name: k for r, k in zip(refs, counts, strict=True)}


def _bias(node: ir.Node) -> ir.Value | None:
    i = 2
    v = node.inputs[i] if len(node.inputs) > i else None
    return v if v is not None and v.const_value is not None and v.is_initializer() else None


def reconstruct_layer(
    model: ir.Model,
    layer: Layer,
    count: int,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    block: int = 128,
    damp: float = 0.01,
    bias_correction: bool = False,
) -> float:
    """Prune ``layer`` of ``model`` (in place) to ``count`` zeros with OBS updates on its inputs
    as ``model`` computes them now; returns the relative output error on those inputs."""
    h: np.ndarray | None = None
    total = np.zeros(0)
    rows = 0
    for out in input_batches(model, [str(layer.input.name)], feeds):
        x = next(iter(out.values()))
        p = layer.patches(x)
        h = accumulate(h, p, max_rows=ROWS_PER_SAMPLE * x.shape[0])
        if bias_correction:
            total = p.sum(axis=1, dtype=np.float64) + (total if total.size else 0.0)
            rows += p.shape[1]
    assert h is not None
    w = layer.matrix()
    w2, _ = obs.obs_prune(w, h, count, block=block, damp=damp)
    layer.weight.const_value = ir.tensor(layer.from_matrix(w2), name=layer.name)
    bias = _bias(layer.node)
    if bias_correction and bias is not None and rows:
        shift = np.einsum("grc,gc->gr", w - w2, total / rows).reshape(-1)
        b = np.asarray(bias.const_value.numpy())  # type: ignore[union-attr]
        bias.const_value = ir.tensor((b + shift).astype(b.dtype), name=str(bias.name))
    dense = obs.energy(w, h)
    return obs.output_error(w, w2, h) / dense if dense > 0 else 0.0


class ReconstructPrunePass(PrunePass):
    """The ``prune`` pass: magnitude (the base class) or layer-wise reconstruction (module
    docstring)."""

    def __init__(
        self,
        *,
        sparsity: float | None = 0.5,
        threshold: float | None = None,
        scope: Scope = "global",
        max_sparsity: float = 0.95,
        ratios: Mapping[str, float] | None = None,
        exclude_first: bool = True,
        exclude_last: bool = True,
        exclude: Sequence[str] = (),
        method: Method = "magnitude",
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        bias_correction: bool = False,
        block: int = 128,
        damp: float = 0.01,
    ) -> None:
        super().__init__(
            sparsity=sparsity, threshold=threshold, scope=scope, max_sparsity=max_sparsity,
            ratios=ratios, exclude_first=exclude_first, exclude_last=exclude_last,
            exclude=exclude,
        )  # fmt: skip
        if method not in METHODS:
            raise InputError(f"unknown prune method {method!r}", hint="magnitude or reconstruct")
        self.method = method
        self._feeds = list(feeds) if feeds is not None else None  # not shown in repr
        self.bias_correction = bias_correction
        self.block = block
        self.damp = damp

    def run(self, model: ir.Model) -> bool:
        if self.method == "magnitude":
            changed = super().run(model)
            self.stats["method"] = "magnitude"
            return changed
        if not self._feeds:
            raise InputError(
                "prune method 'reconstruct' needs calibration inputs",
                hint="give calibration images (--calibrate DIR or --eval DIR)",
            )
        if self.threshold is not None:
            raise InputError("prune method 'reconstruct' takes a sparsity, not a threshold")
        refs, excluded = find_weights(
            model, exclude_first=self.exclude_first, exclude_last=self.exclude_last,
            exclude=self.exclude,
        )  # fmt: skip
        layers = layers_of(refs)
        energy = (
            input_energy(model, list(layers.values()), self._feeds)
            if self.scope == "global" and self.ratios is None
            else {}
        )
        counts = allocate(
            refs, layers, energy, sparsity=self.sparsity, scope=self.scope,
            max_sparsity=self.max_sparsity, ratios=self.ratios,
        )  # fmt: skip
        self.tensors, errors = self._prune(model, refs, layers, counts)
        pruned = sum(t.pruned for t in self.tensors)
        size = sum(t.size for t in self.tensors)
        self.stats.update(
            tensors_pruned=len(self.tensors),
            weights_pruned=pruned,
            weights_eligible=sum(r.size for r in refs),
            sparsity=round(pruned / size if size else 0.0, 6),
            excluded=excluded,
            method="reconstruct",
            calibration_samples=_samples(self._feeds),
            output_error=round(float(np.mean(errors)), 5) if errors else 0.0,
        )
        return pruned > 0

    def _prune(
        self,
        model: ir.Model,
        refs: Sequence[WeightRef],
        layers: Mapping[str, Layer],
        counts: Mapping[str, int],
    ) -> tuple[list[TensorSparsity], list[float]]:
        assert self._feeds is not None
        out, errors = [], []
        for ref in refs:
            k = counts.get(ref.name, 0)
            if k <= 0:
                continue
            layer = layers.get(ref.name)
            if layer is None:  # shared or unsupported: magnitude on this tensor
                arr = ref.array().copy()
                arr.reshape(-1)[sc.smallest(sc.magnitude(arr), k)] = 0
                ref.value.const_value = ir.tensor(arr, name=ref.name)
            else:
                err = reconstruct_layer(
                    model, layer, k, self._feeds, block=self.block, damp=self.damp,
                    bias_correction=self.bias_correction,
                )  # fmt: skip
                errors.append(err)
                logger.debug("prune: %s reconstructed, relative output error %.4f", ref.name, err)
            zeros = int(np.count_nonzero(ref.array() == 0))
            out.append(TensorSparsity(ref.name, ref.size, zeros))
        return out, errors


def describe(stats: Mapping[str, Any]) -> str:
    """One line on what the sparsity saves: file size only (runtimes densify)."""
    return (
        f"{stats.get('method', 'magnitude')}: unstructured zeros save file size only "
        "(with sparse storage); ONNX Runtime and DirectML run them dense, so memory and time "
        "are unchanged"
    )
