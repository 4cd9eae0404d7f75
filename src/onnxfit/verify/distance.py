"""How far a candidate model's outputs are from a reference's, without labels.

* :func:`cosine_per_sample` — cosine similarity of each sample's output vectors;
* :func:`top1_agreement` — the share of samples whose arg-max class is the same;
* :func:`probabilities` — class scores as probabilities (softmax of logits; rows already on the
  simplex are kept);
* :func:`mean_kl` — mean over samples of KL(p_ref || p_cand) in nats;
* :func:`expected_top1_drop` — mean over samples of ``p_ref[a] - p_ref[b]`` where ``a`` is the
  reference's top-1 class and ``b`` the candidate's: the top-1 accuracy the candidate loses
  **if the labels were drawn from the reference's own probabilities** (a calibrated
  reference). A flipped near-tie costs its small margin, not a whole image, so the measure
  resolves budgets far below ``1 / N``;
* :func:`paired_standard_error` — how precisely a sample of N labelled images measures the
  accuracy difference of two models on them;
* :func:`box_agreement` — detections matched between two models (same class, IoU >= 0.5,
  greedy, best score first): F1 = 2 x matches / (reference + candidate detections), pooled
  over images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxfit.data.detection import Detections, box_iou

__all__ = [
    "MATCH_IOU",
    "box_agreement",
    "cosine_per_sample",
    "expected_top1_drop",
    "match_count",
    "mean_kl",
    "paired_standard_error",
    "probabilities",
    "top1_agreement",
]

MATCH_IOU = 0.5
_TINY = 1e-12


def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0) of two equal-shape arrays, in float64.

    Two all-zero samples count as identical (1.0); one all-zero sample as orthogonal (0.0).
    An output whose first axis is data-dependent (detections after an in-graph NMS, ``[N, 7]``)
    gives one value: 1.0 when both are empty, 0.0 when their shapes differ.
    """
    if ref.shape != cand.shape:
        return np.zeros(1)
    if ref.ndim == 0 or ref.shape[0] == 0:
        return np.ones(1) if ref.size == 0 else cosine_per_sample(ref.reshape(1), cand.reshape(1))
    width = int(np.prod(ref.shape[1:], dtype=np.int64))
    r = ref.reshape(ref.shape[0], width).astype(np.float64)
    c = cand.reshape(cand.shape[0], width).astype(np.float64)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    dot = np.einsum("ij,ij->i", r, c)
    out = np.where((nr > 0) & (nc > 0), dot / np.maximum(nr * nc, 1e-300), 0.0)
    return np.where((nr == 0) & (nc == 0), 1.0, np.clip(out, -1.0, 1.0))


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Fraction of samples whose argmax class is the same in both [N, C] score arrays; 0.0 when
    their shapes differ (a data-dependent first axis), NaN when there are no samples."""
    r, c = _rows(ref), _rows(cand)
    if r.shape != c.shape:
        return 0.0 if len(r) or len(c) else math.nan
    return float(np.mean(r.argmax(axis=1) == c.argmax(axis=1))) if len(r) else math.nan


def _rows(x: np.ndarray) -> np.ndarray:
    """``x`` as [N, rest]; ``[0, ...]`` arrays too (numpy cannot infer -1 from size 0)."""
    a = np.asarray(x)
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], int(np.prod(a.shape[1:], dtype=np.int64)))


def probabilities(scores: np.ndarray) -> np.ndarray:
    """``scores [N, C]`` as probabilities, float64: kept when every row is already a
    distribution (values in [0, 1] summing to 1 within 1e-3), else softmax."""
    x = _rows(scores).astype(np.float64)
    if x.size and x.min() >= 0.0 and x.max() <= 1.0 and np.allclose(x.sum(axis=1), 1.0, atol=1e-3):
        return x
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def mean_kl(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean over samples of KL(p_ref || p_cand), nats (0 for identical outputs); infinite
    when the candidate's outputs are not finite."""
    c = _rows(cand)
    if not np.all(np.isfinite(c)):
        return math.inf
    p, q = probabilities(ref), probabilities(c)
    kl = np.sum(p * (np.log(p + _TINY) - np.log(q + _TINY)), axis=1)
    return float(np.mean(np.maximum(kl, 0.0))) if len(kl) else 0.0


def expected_top1_drop(ref: np.ndarray, cand: np.ndarray) -> float:
    """Mean of ``p_ref[argmax ref] - p_ref[argmax cand]`` (a fraction; module docstring).
    1.0 when the candidate's outputs are not finite."""
    c = _rows(cand)
    if not np.all(np.isfinite(c)):
        return 1.0
    p = probabilities(ref)
    rows = np.arange(p.shape[0])
    a, b = p.argmax(axis=1), c.argmax(axis=1)
    return float(np.mean(p[rows, a] - p[rows, b])) if len(p) else 0.0


def paired_standard_error(ref_correct: np.ndarray, cand_correct: np.ndarray) -> float:
    """Standard error (a fraction) of the accuracy difference of two models scored on the same
    images: ``sqrt(discordant) / N``, discordant = images exactly one of them gets right (the
    paired, McNemar-style estimate; 0 when they agree everywhere)."""
    r = np.asarray(ref_correct, bool).reshape(-1)
    c = np.asarray(cand_correct, bool).reshape(-1)
    return float(np.sqrt(np.sum(r != c)) / len(r)) if len(r) else 0.0


def match_count(ref: Detections, cand: Detections, *, iou: float = MATCH_IOU) -> int:
    """Candidate detections that match an unmatched reference detection of the same class with
    IoU >= ``iou`` (greedy, candidates best score first)."""
    if len(ref) == 0 or len(cand) == 0:
        return 0
    m = box_iou(cand.boxes, ref.boxes)
    m[cand.classes[:, None] != ref.classes[None, :]] = 0.0
    used = np.zeros(len(ref), bool)
    found = 0
    for i in np.argsort(-cand.scores, kind="stable"):
        row = np.where(used, 0.0, m[i])
        j = int(row.argmax())
        if row[j] >= iou:
            used[j] = True
            found += 1
    return found


def box_agreement(
    ref: Sequence[Detections], cand: Sequence[Detections], *, iou: float = MATCH_IOU
) -> tuple[float, int, int]:
    """(F1, matches, reference + candidate detections) pooled over images; F1 is 1.0 when
    neither model detects anything."""
    matched = total = 0
    for r, c in zip(ref, cand, strict=True):
        matched += match_count(r, c, iou=iou)
        total += len(r) + len(c)
    return (1.0 if total == 0 else 2.0 * matched / total), matched, total
