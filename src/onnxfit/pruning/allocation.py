"""How many weights each layer loses for a global sparsity target (for reconstruction).

One global magnitude threshold over BatchNorm-*folded* weights is broken: the folded scales
differ per output channel and per layer, so it can prune one layer to 90 % and wreck a
trained detector. The scores here are scale-free and measured on calibration inputs:

* :func:`input_energy` — ``E[x_j^2]`` per input column of every layer (one pass of the dense
  model over the calibration feeds);
* :func:`row_share` — ``w_ij^2 E[x_j^2] / sum_j w_ij^2 E[x_j^2]``: the share of output row
  ``i``'s energy that weight ``ij`` carries (diagonal approximation). A global threshold over
  it equalises the relative output error each layer's rows take per weight removed; like a
  threshold over pre-BatchNorm weights it prunes wide layers (large fan-in) harder. Weights
  that are zero already rank first (a quantized model has many), so the counts stay exact;
* :func:`propagation` — sensitivity: how much a layer's relative output error shows in the
  network's outputs. Each layer alone is pruned (its smallest row shares, at its first-pass
  count but at least :data:`PROBE_SHARE` of its non-zero weights, no updates) and
  ``lambda = (relative output change of the model) / (relative error of the layer)``; the
  scores are multiplied by it and the threshold is drawn again
  (``allocation="sensitivity"``, one model run per layer);
* :func:`counts` — exact counts from scores: ``round(sparsity x N)`` in all, the globally
  smallest, with a per-tensor cap (:func:`onnxfit.pruning.scores.prune_counts`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.pruning import scores as sc
from onnxfit.pruning.activations import Layer, input_batches
from onnxfit.pruning.unstructured import Scope, WeightRef, _caps, _ratio_for
from onnxfit.verify.runner import run_all

logger = logging.getLogger(__name__)

Feeds = Sequence[Mapping[str, np.ndarray]]
#: share of a layer's non-zero weights :func:`propagation` prunes at least, so that a layer
#: whose first-pass count covers only weights already zero still shows its sensitivity
PROBE_SHARE = 0.05


def input_energy(model: ir.Model, layers: Sequence[Layer], feeds: Feeds) -> dict[str, np.ndarray]:
    """Tensor name -> ``E[x_j^2]`` per input column ``[G, C]`` of ``model`` on ``feeds``, one
    pass (a Conv's column gets its channel's mean square)."""
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
    energy = {}
    for layer in layers:
        ms = sums[str(layer.input.name)] / max(n, 1)
        g, _, c = layer.matrix().shape
        if layer.node.op_type == "Conv":
            energy[layer.name] = np.repeat(ms.reshape(g, -1), c // (ms.size // g), axis=1)
        else:
            energy[layer.name] = ms.reshape(1, c)
    return energy


def row_share(
    refs: Sequence[WeightRef], layers: Mapping[str, Layer], energy: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Per tensor, the row-share score of every weight (``[G, R, C]`` for a layer; a tensor
    without one — shared weights — uses ``w^2`` shares of its first axis)."""
    out = []
    for r in refs:
        layer = layers.get(r.name)
        if layer is None or r.name not in energy:
            w = r.array().astype(np.float64)
            w = w.reshape(1, w.shape[0], -1) if w.ndim > 1 else w.reshape(1, 1, -1)
            s = np.square(w)
        else:
            w = layer.matrix()
            s = np.square(w) * energy[r.name][:, None, :]
        share = s / np.maximum(s.sum(axis=2, keepdims=True), 1e-30)
        share[w == 0] = -1.0  # weights already zero go first: the counts stay exact
        out.append(share)
    return out


def counts(
    refs: Sequence[WeightRef],
    scores: Sequence[np.ndarray] | None,
    *,
    sparsity: float | None,
    scope: Scope,
    max_sparsity: float,
    ratios: Mapping[str, float] | None,
) -> dict[str, int]:
    """Tensor name -> weights to prune; exact (module docstring). ``scores`` are needed for
    ``scope="global"`` only."""
    sizes = [r.size for r in refs]
    caps = _caps(sizes, max_sparsity)
    if ratios is not None:
        return {
            r.name: min(sc.exact_count(_ratio_for(r, ratios) or 0.0, n), cap)
            for r, n, cap in zip(refs, sizes, caps, strict=True)
        }
    if sparsity is None or not 0.0 <= sparsity <= 1.0:
        raise InputError(f"sparsity must be in [0, 1], got {sparsity}", hint="e.g. sparsity=0.5")
    if scope == "layer" or scores is None:
        return {
            r.name: min(sc.exact_count(sparsity, n), cap)
            for r, n, cap in zip(refs, sizes, caps, strict=True)
        }
    flat = [s.reshape(-1) for s in scores]
    chosen = sc.prune_counts(flat, sc.exact_count(sparsity, sum(sizes)), caps)
    return {r.name: k for r, k in zip(refs, chosen, strict=True)}


def relative_change(base: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> float:
    """``sum ||now - base||^2 / sum ||base||^2`` over the outputs (inf when not finite)."""
    num = sum(float(np.sum(np.square(now[k] - base[k], dtype=np.float64))) for k in base)
    den = sum(float(np.sum(np.square(base[k], dtype=np.float64))) for k in base)
    if not np.isfinite(num):
        return float("inf")
    return num / den if den > 0 else 0.0


def propagation(
    model: ir.Model,
    refs: Sequence[WeightRef],
    layers: Mapping[str, Layer],
    scores: Sequence[np.ndarray],
    chosen: Mapping[str, int],
    feeds: Feeds,
) -> dict[str, float]:
    """Tensor name -> ``lambda`` (module docstring); the model is left as it was."""
    base = run_all(model, feeds)
    out: dict[str, float] = {}
    for ref, s in zip(refs, scores, strict=True):
        layer, k = layers.get(ref.name), chosen.get(ref.name, 0)
        if layer is None or k <= 0:
            continue
        zeros = int(np.count_nonzero(s < 0))
        probe = max(k, zeros + max(1, int(np.ceil(PROBE_SHARE * (s.size - zeros)))))
        idx = sc.smallest(s, min(probe, s.size))
        # weights already zero (score -1) change nothing: the probe goes past them
        own = float(np.clip(s.reshape(-1)[idx], 0.0, None).sum()) / (s.shape[0] * s.shape[1])
        w = layer.matrix().copy()
        w.reshape(-1)[idx] = 0.0
        saved = layer.weight.const_value
        layer.weight.const_value = ir.tensor(layer.from_matrix(w), name=layer.name)
        try:
            seen = relative_change(base, run_all(model, feeds))
        finally:
            layer.weight.const_value = saved
        out[ref.name] = seen / own if own > 0 else 1.0
        logger.debug("prune: %s propagation %.3g (layer %.3g -> model %.3g)", ref.name,
                     out[ref.name], own, seen)  # fmt: skip
    return out
