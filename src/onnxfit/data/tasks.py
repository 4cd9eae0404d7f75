"""Classification post-processing and metrics: softmax, top-k with class names, top-k accuracy.

Detection lives in :mod:`onnxfit.data.detection` (decode, NMS) and :mod:`onnxfit.data.metrics`
(mAP); both are re-exported here so ``onnxfit.data.tasks`` is the one place to look.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit.data.detection import (
    Detections,
    batched_nms,
    box_iou,
    decode_yolov3_tiny,
    decode_yolox,
    detect,
    nms,
)
from onnxfit.data.metrics import (
    DetectionEvaluator,
    DetectionMetrics,
    average_precision,
    read_yolo_labels,
)
from onnxfit.errors import InputError

__all__ = [
    "Classification",
    "DetectionEvaluator",
    "DetectionMetrics",
    "Detections",
    "average_precision",
    "batched_nms",
    "box_iou",
    "classify",
    "decode_yolov3_tiny",
    "decode_yolox",
    "detect",
    "labels_for",
    "nms",
    "read_class_names",
    "read_labels_tsv",
    "read_yolo_labels",
    "softmax",
    "topk",
    "topk_accuracy",
]

log = logging.getLogger(__name__)

_WNID = re.compile(r"^n\d{8}\s+")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax along ``axis`` (float32 in, float32 out)."""
    x = np.asarray(logits, np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, values)`` of the ``k`` largest scores along the last axis, best first.

    Works on ``[C]`` or ``[N, C]``; ``k`` is clipped to ``C``. Ties keep the lower index first.
    """
    x = np.asarray(scores)
    if x.ndim not in (1, 2):
        raise InputError(f"topk expects [C] or [N, C] scores, got shape {list(x.shape)}")
    if k < 1:
        raise InputError(f"k must be >= 1, got {k}")
    c = x.shape[-1]
    k = min(k, c)
    if k < c:
        part = np.argpartition(-x, k - 1, axis=-1)[..., :k]
    else:
        part = np.broadcast_to(np.arange(c), x.shape).copy()
    vals = np.take_along_axis(x, part, axis=-1)
    # best first; a stable sort on (-value, index) keeps the lower index first on ties
    order = np.lexsort((part, -vals), axis=-1)
    idx = np.take_along_axis(part, order, axis=-1)
    return idx, np.take_along_axis(x, idx, axis=-1)


def topk_accuracy(
    logits: np.ndarray, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction (0-1) of rows whose label is among the top-k scores, for each ``k`` in ``ks``.

    ``logits`` is ``[N, C]`` (scores or probabilities: the ranking is the same); ``labels`` is
    ``[N]`` class indices. An empty set gives 0.0.
    """
    x = np.asarray(logits)
    y = np.asarray(labels, np.int64).reshape(-1)
    if x.ndim != 2 or x.shape[0] != y.shape[0]:
        raise InputError(
            f"topk_accuracy: {list(x.shape)} scores for {y.shape[0]} labels",
            hint="scores must be [N, C] with one label per row",
        )
    if y.size and (y.min() < 0 or y.max() >= x.shape[1]):
        raise InputError(f"labels outside 0..{x.shape[1] - 1}")
    if not ks:
        return {}
    idx, _ = topk(x, max(ks))
    hit = idx == y[:, None]
    n = max(1, y.shape[0])
    return {int(k): float(hit[:, :k].any(axis=1).sum()) / n for k in ks}


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line (line i = class i).

    ``synset.txt`` lines (``n01440764 tench, Tinca tinca``) lose their WordNet id; plain name
    files (``coco80_names.txt``) are taken as they are. Blank trailing lines are ignored.
    """
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise InputError(f"{p}: cannot read label file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise InputError(f"{p}: label file is not UTF-8 text") from None
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise InputError(f"{p}: label file is empty")
    return [_WNID.sub("", line.strip()) for line in lines]


def read_labels_tsv(path: str | os.PathLike[str]) -> dict[str, int]:
    """``file name -> class index`` from a tab-separated file with ``file`` and ``class_index``
    columns (``imagenet-sample/labels.tsv``). Keys are base names (``n01440764_tench.JPEG``)."""
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh, delimiter="\t"))
    except OSError as exc:
        raise InputError(f"{p}: cannot read labels ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: not UTF-8 text (byte {exc.start})") from None
    except csv.Error as exc:
        raise InputError(f"{p}: not a tab-separated table ({exc})") from None
    if not rows or not {"file", "class_index"} <= set(rows[0]):
        raise InputError(
            f"{p}: not a labels table",
            hint="expected a tab-separated header with 'file' and 'class_index' columns",
        )
    out: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        try:
            out[Path(row["file"]).name] = int(row["class_index"])
        except (TypeError, ValueError):
            raise InputError(f"{p}:{n}: bad class_index {row.get('class_index')!r}") from None
    return out


def labels_for(
    paths: Sequence[str | os.PathLike[str]], labels: Mapping[str, int]
) -> tuple[np.ndarray, list[str]]:
    """Class index per path (by base name), and the paths that have no label (index -1)."""
    idx = np.full(len(paths), -1, np.int64)
    missing: list[str] = []
    for i, p in enumerate(paths):
        name = Path(p).name
        if name in labels:
            idx[i] = labels[name]
        else:
            missing.append(str(p))
    if missing:
        log.warning("%d image(s) have no label, e.g. %s", len(missing), missing[0])
    return idx, missing


@dataclass(frozen=True)
class Classification:
    """Top-k result for one image: class indices, names (when known) and probabilities."""

    indices: tuple[int, ...]
    probabilities: tuple[float, ...]
    names: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["indices"] = list(self.indices)
        d["probabilities"] = list(self.probabilities)
        d["names"] = list(self.names) if self.names is not None else None
        return d


def classify(
    logits: np.ndarray,
    *,
    k: int = 5,
    names: Sequence[str] | None = None,
    apply_softmax: bool | None = None,
) -> list[Classification]:
    """Top-k classes per row of ``[N, C]`` (or ``[C]``) model output.

    ``apply_softmax=None`` decides from the data: rows that already lie in [0, 1] and sum to 1
    are taken as probabilities, anything else as logits.
    """
    x = np.asarray(logits, np.float32)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise InputError(f"classify expects [N, C] scores, got shape {list(x.shape)}")
    if names is not None and len(names) != x.shape[1]:
        raise InputError(
            f"{len(names)} class names for a model with {x.shape[1]} outputs",
            hint="use the label file that belongs to this model",
        )
    if apply_softmax is None:
        sums = x.sum(axis=1)
        apply_softmax = not (x.min() >= 0 and x.max() <= 1 and np.allclose(sums, 1, atol=1e-3))
    probs = softmax(x) if apply_softmax else x
    idx, vals = topk(probs, k)
    out = []
    for row_i, row_v in zip(idx, vals, strict=True):
        out.append(
            Classification(
                indices=tuple(int(i) for i in row_i),
                probabilities=tuple(float(v) for v in row_v),
                names=tuple(names[int(i)] for i in row_i) if names is not None else None,
            )
        )
    return out
