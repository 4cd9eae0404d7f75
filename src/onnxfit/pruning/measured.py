"""Per-layer sparsity from measured model-output error (``allocation="measured"``).

A global score threshold (:mod:`~onnxfit.pruning.allocation`) compares weights of different
layers by a proxy; how much a layer's error shows in the network's outputs is not in it. Here
it is measured, as in OBC / SPDY (Frantar & Alistarh 2022):

1. **Curves** — for each layer alone, on the dense model: its input Hessian on the calibration
   feeds, OBS-pruned with weight updates (:mod:`~onnxfit.pruning.obs`) to each of
   :data:`LEVELS` (shares of its non-zero weights, up to the per-tensor cap), the model run on
   the scan samples and the relative squared change of its outputs recorded:
   ``D_l(count)``; ``D_l = 0`` at the weights already zero. A tensor that is not one layer's
   (shared) is magnitude-pruned for its curve.
2. **Allocation** — assuming the layers' errors add, the counts minimise ``sum D_l`` with
   ``sum count_l`` = the target: every curve's lower convex hull is cut into segments, the
   segments are taken cheapest error per weight first, and the last one is cut where the total
   is reached, so the counts are exact.

Cost: one Hessian pass and ``len(LEVELS)`` OBS runs + model runs per layer (ShuffleNetV2:
55 layers; YOLOv3-tiny: 11). The reconstruction that follows is sequential
(:mod:`~onnxfit.pruning.reconstruct`); the curves are of layers pruned alone.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxfit.pruning import obs
from onnxfit.pruning import scores as sc
from onnxfit.pruning.activations import Layer, layer_hessian
from onnxfit.pruning.allocation import relative_change
from onnxfit.pruning.unstructured import WeightRef
from onnxfit.verify.runner import run_all

logger = logging.getLogger(__name__)

Feeds = Sequence[Mapping[str, np.ndarray]]
#: shares of a layer's non-zero weights its curve is measured at
LEVELS = (0.1, 0.2, 0.35, 0.5, 0.65, 0.8, 0.9)
Curve = list[tuple[int, float]]


def curve_counts(size: int, zeros: int, cap: int) -> list[int]:
    """The counts a curve is measured at: ``zeros`` + each level's share of the non-zero
    weights, capped, increasing, without repeats."""
    out: list[int] = []
    for f in LEVELS:
        c = min(zeros + sc.exact_count(f, size - zeros), cap)
        if c > (out[-1] if out else zeros):
            out.append(c)
    return out


def _pruner(ref: WeightRef, layer: Layer | None, h: np.ndarray | None, damp: float,
            block: int) -> Callable[[int], np.ndarray]:  # fmt: skip
    """count -> the tensor as it is now pruned to ``count`` zeros (OBS with updates, or
    magnitude); every count starts from the same weights, whatever the tensor holds later."""
    w = ref.array()
    if layer is None or h is None:
        return lambda count: sc.magnitude_pruned(w, count)
    matrix, u = layer.matrix(w), obs.inverse_factor(h, damp)

    def prune(count: int) -> np.ndarray:
        w2, _ = obs.obs_prune(matrix, None, count, block=block, u=u)
        return layer.from_matrix(w2)

    return prune


def curves(
    model: ir.Model,
    refs: Sequence[WeightRef],
    layers: Mapping[str, Layer],
    caps: Mapping[str, int],
    feeds: Feeds,
    scan: Feeds,
    *,
    damp: float,
    block: int,
    max_rows_per_sample: int,
) -> dict[str, Curve]:
    """Tensor name -> ``[(count, D)]`` from the weights already zero (``D = 0``) up
    (module docstring); the model is left as it was."""
    base = run_all(model, scan)
    out: dict[str, Curve] = {}
    for ref in refs:
        layer = layers.get(ref.name)
        h = (
            layer_hessian(model, layer, feeds, max_rows_per_sample=max_rows_per_sample)
            if layer is not None
            else None
        )
        zeros = int(np.count_nonzero(ref.array() == 0))
        prune = _pruner(ref, layer, h, damp, block)
        points: Curve = [(zeros, 0.0)]
        saved = ref.value.const_value
        try:
            for count in curve_counts(ref.size, zeros, caps[ref.name]):
                ref.value.const_value = ir.tensor(prune(count), name=ref.name)
                points.append((count, relative_change(base, run_all(model, scan))))
        finally:
            ref.value.const_value = saved
        out[ref.name] = points
        logger.debug("prune: %s curve %s", ref.name, points)
    return out


def lower_hull(points: Curve) -> Curve:
    """The lower convex hull of a curve's points (sorted by count), from its first point."""
    hull: Curve = []
    for p in sorted(points):
        while len(hull) >= 2:
            (x1, y1), (x2, y2) = hull[-2], hull[-1]
            if (y2 - y1) * (p[0] - x1) >= (p[1] - y1) * (x2 - x1):
                hull.pop()  # hull[-1] lies on or above the chord hull[-2] -> p
            else:
                break
        if not hull or p[0] > hull[-1][0]:
            hull.append(p)
    return hull


def allocate(
    curves_by_name: Mapping[str, Curve], target: int, caps: Mapping[str, int]
) -> dict[str, int]:
    """Tensor name -> count, summing to ``target`` exactly, minimising the summed curve values
    (segments of the lower hulls, cheapest slope first; the last one cut). Past the curves'
    last counts the tensors fill up to their ``caps`` in the order of their last slopes.
    ``target`` must lie between the curves' first counts and the caps summed."""
    counts = {name: c[0][0] for name, c in curves_by_name.items()}
    left = target - sum(counts.values())
    segments = []
    last_slope = {}
    for order, (name, c) in enumerate(curves_by_name.items()):
        hull = lower_hull(c)
        last_slope[name] = (0.0, order)
        for (x1, y1), (x2, y2) in itertools.pairwise(hull):
            slope = (y2 - y1) / (x2 - x1)
            segments.append((slope, order, x1, name, x2 - x1))
            last_slope[name] = (slope, order)
    for _, _, _, name, width in sorted(segments):
        if left <= 0:
            break
        take = min(width, left)
        counts[name] += take
        left -= take
    for name in sorted(counts, key=last_slope.__getitem__):
        if left <= 0:
            break
        take = min(max(caps[name] - counts[name], 0), left)
        counts[name] += take
        left -= take
    if left > 0:
        raise ValueError(f"target {target} is past the caps")
    return counts
