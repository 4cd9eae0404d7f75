"""Pruning statistics: importance scores, and exact "k smallest" selection (no model changes).

DESIGN habit 3 (scores -> mask -> pass): this module only *measures*;
:mod:`onnxfit.pruning.unstructured` turns scores into masks and applies them,
:mod:`onnxfit.pruning.channels` removes channels.

* :func:`magnitude` — ``|w|`` per weight (float64, whatever the weight dtype), the score of
  unstructured magnitude pruning (Han et al. 2015, "Learning both Weights and Connections",
  arXiv:1506.02626).
* :func:`channel_norms` — the L1 or L2 norm of each output channel's filter (Li et al. 2017,
  "Pruning Filters for Efficient ConvNets", arXiv:1608.08710), optionally times a per-channel
  scale (a following BatchNormalization's ``|gamma| / sqrt(var + eps)``, so that the score
  measures what the channel contributes after the normalization).
* :func:`smallest` — the indices of the ``k`` smallest scores, ties broken by position (lower
  index first), so a request for ``k`` always selects exactly ``k``.
* :func:`prune_counts` — how many entries to remove from each of several score arrays so that
  exactly ``k`` are removed in all, the ``k`` globally smallest, with a cap per array
  (water-filling: arrays that would pass their cap are fixed at it and the rest is spread over
  the others).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

from onnxfit.errors import InputError

Norm = Literal["l1", "l2"]


def magnitude(weight: np.ndarray) -> np.ndarray:
    """``|w|``, same shape: float32 for weights of 32 bits or less (exact), float64 above.
    NaN counts as the largest magnitude (never pruned)."""
    w = np.asarray(weight)
    wide = w.dtype.itemsize > 4 and w.dtype.kind == "f"
    mag = np.abs(w.astype(np.float64 if wide else np.float32))
    mag[np.isnan(mag)] = np.inf
    return mag


def magnitude_pruned(weight: np.ndarray, k: int) -> np.ndarray:
    """A copy of ``weight`` with its ``k`` smallest ``|w|`` set to zero (:func:`smallest`)."""
    out = np.array(weight, copy=True)
    out.reshape(-1)[smallest(magnitude(out), k)] = 0
    return out


def channel_norms(
    weight: np.ndarray,
    *,
    norm: Norm = "l1",
    axis: int = 0,
    scale: np.ndarray | None = None,
) -> np.ndarray:
    """Per-channel norm of ``weight`` along ``axis`` (the output channels: 0 for Conv).

    ``scale`` (one value per channel) multiplies the norm by ``|scale|``. Returns float64 [C].
    """
    w = np.moveaxis(np.asarray(weight).astype(np.float64), axis, 0)
    flat = w.reshape(w.shape[0], -1)
    if norm == "l1":
        out = np.abs(flat).sum(axis=1)
    elif norm == "l2":
        out = np.sqrt(np.square(flat).sum(axis=1))
    else:
        raise InputError(f"unknown norm {norm!r}", hint="use 'l1' or 'l2'")
    if scale is not None:
        out = out * np.abs(np.asarray(scale, np.float64).reshape(-1))
    return out


def normalized(scores: np.ndarray) -> np.ndarray:
    """``scores / mean(scores)`` (unchanged when the mean is 0): comparable across layers."""
    mean = float(np.mean(scores)) if scores.size else 0.0
    return scores / mean if mean > 0 and math.isfinite(mean) else scores


def smallest(scores: np.ndarray, k: int) -> np.ndarray:
    """Sorted flat indices of the ``k`` smallest entries of ``scores``; ties at the boundary:
    the lower index first (what a stable sort would pick), in O(n)."""
    flat = np.asarray(scores).reshape(-1)
    if k <= 0:
        return np.zeros(0, np.int64)
    if k >= flat.size:
        return np.arange(flat.size, dtype=np.int64)
    t = np.partition(flat, k - 1)[k - 1]
    below = np.flatnonzero(flat < t)
    ties = np.flatnonzero(flat == t)[: k - below.size]
    return np.sort(np.concatenate([below, ties])).astype(np.int64)


def exact_count(ratio: float, n: int) -> int:
    """``round(ratio * n)`` with halves rounded up: the number a ratio asks for, exactly."""
    return math.floor(ratio * n + 0.5)


def prune_counts(scores: Sequence[np.ndarray], k: int, caps: Sequence[int]) -> list[int]:
    """How many of each array's entries fall among the ``k`` globally smallest scores, when
    array ``i`` may lose at most ``caps[i]``; the counts always sum to ``k`` exactly.

    Ties across arrays are broken by array order, then position. Raises :class:`InputError`
    when ``k`` exceeds the sum of the caps.
    """
    if len(scores) != len(caps):
        raise ValueError("one cap per score array")
    if k > sum(caps):
        raise InputError(
            f"cannot remove {k} entries: the per-layer caps allow {sum(caps)}",
            hint="ask for less, or raise the per-layer cap (max_sparsity / max_ratio)",
        )
    flat = np.concatenate([np.asarray(s).reshape(-1) for s in scores])
    owner = np.concatenate([np.full(np.asarray(s).size, i) for i, s in enumerate(scores)])
    fixed: dict[int, int] = {}
    while True:
        active = np.ones(len(scores), bool)
        active[list(fixed)] = False
        rest = k - sum(fixed.values())
        counts = np.zeros(len(scores), np.int64)
        if rest > 0:
            sel = active[owner]
            vals, own = flat[sel], owner[sel]
            t = np.partition(vals, rest - 1)[rest - 1]
            less = vals < t
            counts += np.bincount(own[less], minlength=len(scores))
            ties = np.flatnonzero(vals == t)[: rest - int(less.sum())]
            counts += np.bincount(own[ties], minlength=len(scores))
        over = [int(i) for i in np.nonzero(active)[0] if counts[i] > caps[int(i)]]
        if not over:
            for j, c in fixed.items():
                counts[j] = c
            return [int(c) for c in counts]
        for i in over:
            fixed[i] = int(caps[i])
