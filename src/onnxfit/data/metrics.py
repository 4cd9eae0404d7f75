"""Detection metrics: COCO-style mAP@0.5 and mAP@0.5:0.95 against YOLO-format label files.

Method (the one SOURCES.md's reference figures use, written out):

* Per image and class, detections are taken best score first; each is matched to the
  *unmatched* ground-truth box of its class with the highest IoU, if that IoU >= the threshold
  (true positive), else it is a false positive (COCO's greedy matching; no crowd regions, YOLO
  label files carry none).
* Per class, all detections over all images are sorted by score; precision/recall are
  accumulated and AP is the area under the precision envelope at every recall step
  ("all-point" interpolation, VOC 2010+; not COCO's 101-point sampling).
* mAP averages AP over the classes *present in the ground truth* (a class with detections but
  no ground truth is not counted); mAP@0.5:0.95 averages mAP over IoU 0.50, 0.55, ..., 0.95.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit.data.detection import Detections, box_iou
from onnxfit.errors import InputError

IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def read_yolo_labels(
    path: str | os.PathLike[str], image_size: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(boxes [G, 4] xyxy pixels, classes [G])`` from a YOLO label file.

    Each line is ``class cx cy w h`` normalized to [0, 1] by the image (width, height) given.
    An empty file means an image with no objects. A bad line raises :class:`InputError` with
    the line number.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{p}: cannot read label file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{p}: label file is not UTF-8 text (byte {exc.start})") from None
    w, h = image_size
    boxes, classes = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        try:
            if len(parts) != 5:
                raise ValueError(f"{len(parts)} fields")
            c = int(parts[0])
            cx, cy, bw, bh = (float(v) for v in parts[1:])
        except ValueError as exc:
            raise InputError(
                f"{p}:{n}: not a YOLO label line ({exc})", hint="expected 'class cx cy w h'"
            ) from None
        boxes.append(((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h))
        classes.append(c)
    return (
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(classes, np.int64).reshape(-1),
    )


def average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    """All-point interpolated AP: area under the monotone precision envelope over recall.

    ``recall`` must be non-decreasing (detections sorted by score). Empty input gives 0.
    """
    r = np.asarray(recall, np.float64)
    p = np.asarray(precision, np.float64)
    if r.size == 0:
        return 0.0
    mrec = np.concatenate(([0.0], r, [1.0]))
    mpre = np.concatenate(([0.0], p, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass
class DetectionMetrics:
    """mAP figures (0-1) and their parts. ``ap`` maps class -> AP at each IoU threshold."""

    map50: float
    map50_95: float
    ap: dict[int, list[float]]
    iou_thresholds: tuple[float, ...]
    images: int
    ground_truth: int
    detections: int
    classes_present: int = 0
    per_class_gt: dict[int, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "map50": self.map50,
            "map50_95": self.map50_95,
            "images": self.images,
            "ground_truth": self.ground_truth,
            "detections": self.detections,
            "classes_present": self.classes_present,
            "iou_thresholds": list(self.iou_thresholds),
            "ap50_per_class": {str(c): v[0] for c, v in sorted(self.ap.items())},
        }


class DetectionEvaluator:
    """Accumulate detections and ground truth image by image, then compute mAP (see module doc)."""

    def __init__(self, *, iou_thresholds: tuple[float, ...] = IOU_THRESHOLDS) -> None:
        self.iou_thresholds = tuple(float(t) for t in iou_thresholds)
        self._t = np.asarray(self.iou_thresholds)
        self._scores: dict[int, list[np.ndarray]] = defaultdict(list)
        self._tp: dict[int, list[np.ndarray]] = defaultdict(list)
        self._n_gt: dict[int, int] = defaultdict(int)
        self.images = 0
        self.detections = 0

    def add(self, detections: Detections, gt_boxes: np.ndarray, gt_classes: np.ndarray) -> None:
        """One image: its detections and its ground truth (xyxy pixels, same frame)."""
        gt_boxes = np.asarray(gt_boxes, np.float32).reshape(-1, 4)
        gt_classes = np.asarray(gt_classes, np.int64).reshape(-1)
        self.images += 1
        self.detections += len(detections)
        for c in np.unique(gt_classes):
            self._n_gt[int(c)] += int((gt_classes == c).sum())
        for c in np.unique(detections.classes):
            dm = detections.classes == c
            scores = detections.scores[dm]
            order = np.argsort(-scores, kind="stable")
            scores = scores[order]
            dboxes = detections.boxes[dm][order]
            gboxes = gt_boxes[gt_classes == c]
            self._scores[int(c)].append(scores)
            self._tp[int(c)].append(self._match(dboxes, gboxes))

    def _match(self, dboxes: np.ndarray, gboxes: np.ndarray) -> np.ndarray:
        """``[D, T]`` true-positive flags, greedy best-unmatched-IoU matching per threshold."""
        nt = self._t.size
        tp = np.zeros((dboxes.shape[0], nt), bool)
        if gboxes.shape[0] == 0 or dboxes.shape[0] == 0:
            return tp
        iou = box_iou(dboxes, gboxes)
        matched = np.zeros((nt, gboxes.shape[0]), bool)
        for d in np.nonzero(iou.max(axis=1) >= self._t.min())[0]:
            cand = np.where(matched, -1.0, iou[d][None, :])  # [T, G]
            best = cand.argmax(axis=1)
            ok = cand[np.arange(nt), best] >= self._t
            tp[d] = ok
            matched[np.nonzero(ok)[0], best[ok]] = True
        return tp

    def result(self) -> DetectionMetrics:
        """mAP@0.5 and mAP@0.5:0.95 over the classes present in the ground truth."""
        ap: dict[int, list[float]] = {}
        for c, n_gt in sorted(self._n_gt.items()):
            if n_gt == 0:
                continue
            if self._scores.get(c):
                scores = np.concatenate(self._scores[c])
                tp = np.concatenate(self._tp[c])
                order = np.argsort(-scores, kind="stable")
                tpc = np.cumsum(tp[order], axis=0)
                fpc = np.cumsum(~tp[order], axis=0)
                recall = tpc / n_gt
                precision = tpc / np.maximum(tpc + fpc, 1)
                ap[c] = [
                    average_precision(recall[:, t], precision[:, t]) for t in range(tp.shape[1])
                ]
            else:
                ap[c] = [0.0] * self._t.size
        per_t = np.asarray(list(ap.values())).mean(axis=0) if ap else np.zeros(self._t.size)
        i50 = self.iou_thresholds.index(0.5) if 0.5 in self.iou_thresholds else 0
        return DetectionMetrics(
            map50=float(per_t[i50]),
            map50_95=float(per_t.mean()),
            ap=ap,
            iou_thresholds=self.iou_thresholds,
            images=self.images,
            ground_truth=int(sum(self._n_gt.values())),
            detections=self.detections,
            classes_present=len(ap),
            per_class_gt=dict(self._n_gt),
        )
