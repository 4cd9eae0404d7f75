"""Detection post-processing: decode YOLOX and YOLOv3-tiny heads, undo the letterbox, NMS.

Box convention everywhere: ``[x1, y1, x2, y2]`` float32 pixels (network-input pixels after
decoding, original-image pixels after :func:`detect` with an :class:`ImageMeta`).

* YOLOX (SOURCES.md, the Megvii reference): output ``[A, 5 + C]`` with A = sum over strides
  8/16/32 of (H/s)(W/s) anchor points, stride by stride, row-major in each grid. Each row is
  ``[dx, dy, log_w, log_h, objectness, C class scores]`` with sigmoid already applied to
  objectness and classes; ``x = (dx + grid_x) * s``, ``w = exp(log_w) * s``; score =
  objectness x class score.
* YOLOv3-tiny (darknet ``yolov3-tiny.cfg``): two heads ``[3 * (5 + C), h, w]``, channel
  ``a * (5 + C) + k``; anchors (pixels at 416) 13x13 head: (81,82), (135,169), (344,319); 26x26
  head: (10,14), (23,27), (37,58) (masks 3,4,5 and 0,1,2; AlexeyAB's fork of the cfg uses
  1,2,3 for the fine head — pass ``anchors=`` for such weights); ``x = (sigmoid(tx) + cx) * W / w``,
  ``w = exp(tw) * anchor_w``, sigmoid on objectness and classes (independent logistic classes).
* NMS: greedy, per class (boxes of different classes never suppress each other), vectorized
  over the remaining boxes at each step.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfit.data.presets import ImageMeta
from onnxfit.errors import InputError

#: darknet yolov3-tiny.cfg anchors, coarse head (13x13 at 416) first.
YOLOV3_TINY_ANCHORS: tuple[tuple[tuple[float, float], ...], ...] = (
    ((81, 82), (135, 169), (344, 319)),
    ((10, 14), (23, 27), (37, 58)),
)
YOLOX_STRIDES = (8, 16, 32)


@dataclass
class Detections:
    """Boxes ``[M, 4]`` xyxy (float32), ``scores [M]`` and ``classes [M]`` (int64), best first."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def to_dict(self, names: Sequence[str] | None = None) -> dict[str, Any]:
        dets = []
        for box, score, c in zip(self.boxes, self.scores, self.classes, strict=True):
            d: dict[str, Any] = {
                "box": [round(float(v), 2) for v in box],
                "score": round(float(score), 5),
                "class": int(c),
            }
            if names is not None and 0 <= c < len(names):
                d["name"] = names[int(c)]
            dets.append(d)
        return {"detections": dets}


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix ``[N, M]`` of xyxy boxes ``a [N, 4]``, ``b [M, 4]`` (0 where both are empty)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clip(0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Greedy NMS: indices of the boxes kept, best score first.

    A box is dropped when its IoU with a better-scored kept box is *greater than*
    ``iou_threshold`` (the torchvision / YOLOX convention). Equal scores keep the lower index.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    if boxes.shape[0] != scores.shape[0]:
        raise InputError(f"nms: {boxes.shape[0]} boxes but {scores.shape[0]} scores")
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = (boxes[:, i].astype(np.float64) for i in range(4))
    areas = (x2 - x1).clip(0) * (y2 - y1).clip(0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(0)
        h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(0)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, np.int64)


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float = 0.45
) -> np.ndarray:
    """Per-class NMS in one pass: each class's boxes are shifted to their own far-away region
    (offset ``class * (max coordinate + 1)``) so boxes of different classes never overlap."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        return np.zeros(0, np.int64)
    classes = np.asarray(classes, np.int64).reshape(-1)
    span = float(np.abs(boxes).max()) + 1.0
    shifted = boxes.astype(np.float64) + (classes.astype(np.float64) * 2 * span)[:, None]
    return nms(shifted, scores, iou_threshold)


@functools.cache
def _yolox_grid(height: int, width: int, strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    grids, steps = [], []
    for s in strides:
        hs, ws = height // s, width // s
        yv, xv = np.meshgrid(np.arange(hs), np.arange(ws), indexing="ij")
        grids.append(np.stack((xv, yv), -1).reshape(-1, 2))
        steps.append(np.full((hs * ws, 1), s))
    return np.concatenate(grids).astype(np.float32), np.concatenate(steps).astype(np.float32)


def decode_yolox(
    output: np.ndarray,
    *,
    input_size: tuple[int, int] = (416, 416),
    strides: Sequence[int] = YOLOX_STRIDES,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's YOLOX output ``[A, 5 + C]`` (or ``[1, A, 5 + C]``) -> ``(boxes [A, 4] xyxy in
    input pixels, scores [A, C] = objectness x class)``. ``input_size`` is (height, width)."""
    out = np.asarray(output, np.float32)
    if out.ndim == 3 and out.shape[0] == 1:
        out = out[0]
    grid, step = _yolox_grid(int(input_size[0]), int(input_size[1]), tuple(int(s) for s in strides))
    if out.ndim != 2 or out.shape[0] != grid.shape[0] or out.shape[1] < 6:
        raise InputError(
            f"YOLOX output has shape {list(np.shape(output))}, expected [{grid.shape[0]}, 5 + C] "
            f"for a {input_size[0]}x{input_size[1]} input with strides {list(strides)}",
            hint="check the input size and that the model is a YOLOX detector",
        )
    xy = (out[:, :2] + grid) * step
    wh = np.exp(out[:, 2:4]) * step
    boxes = np.concatenate((xy - wh / 2, xy + wh / 2), axis=1)
    scores = out[:, 4:5] * out[:, 5:]
    return boxes, scores


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode_yolov3_tiny(
    heads: Sequence[np.ndarray],
    *,
    input_size: tuple[int, int] = (416, 416),
    anchors: Sequence[Sequence[tuple[float, float]]] = YOLOV3_TINY_ANCHORS,
) -> tuple[np.ndarray, np.ndarray]:
    """One image's darknet heads (each ``[3 * (5 + C), h, w]`` or ``[1, ...]``) -> ``(boxes
    [A, 4] xyxy in input pixels, scores [A, C] = sigmoid(obj) x sigmoid(class))``.

    Heads may come in any order: they are matched to ``anchors`` (coarse head first) by grid
    size, coarsest grid to the first anchor group.
    """
    arrays = [np.asarray(h, np.float32) for h in heads]
    arrays = [a[0] if a.ndim == 4 and a.shape[0] == 1 else a for a in arrays]
    if len(arrays) != len(anchors) or any(a.ndim != 3 for a in arrays):
        raise InputError(
            f"YOLOv3 decode: got heads {[list(a.shape) for a in arrays]} for "
            f"{len(anchors)} anchor groups",
            hint="pass one [3*(5+C), h, w] array per detection head",
        )
    arrays.sort(key=lambda a: a.shape[1] * a.shape[2])  # coarsest first
    in_h, in_w = input_size
    all_boxes, all_scores = [], []
    for head, group in zip(arrays, anchors, strict=True):
        na = len(group)
        ch, gh, gw = head.shape
        if ch % na != 0 or ch // na < 6:
            raise InputError(f"YOLOv3 head with {ch} channels does not hold {na} anchors x (5+C)")
        t = head.reshape(na, ch // na, gh, gw).transpose(0, 2, 3, 1)  # [a, y, x, 5+C]
        cy, cx = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
        anc = np.asarray(group, np.float32)[:, None, None, :]
        x = (_sigmoid(t[..., 0]) + cx) * (in_w / gw)
        y = (_sigmoid(t[..., 1]) + cy) * (in_h / gh)
        w = np.exp(t[..., 2]) * anc[..., 0]
        h = np.exp(t[..., 3]) * anc[..., 1]
        boxes = np.stack((x - w / 2, y - h / 2, x + w / 2, y + h / 2), -1).reshape(-1, 4)
        scores = (_sigmoid(t[..., 4:5]) * _sigmoid(t[..., 5:])).reshape(-1, ch // na - 5)
        all_boxes.append(boxes)
        all_scores.append(scores)
    return (
        np.concatenate(all_boxes).astype(np.float32),
        np.concatenate(all_scores).astype(np.float32),
    )


def detect(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    score_threshold: float = 0.01,
    iou_threshold: float = 0.45,
    max_detections: int | None = 300,
    multi_label: bool = True,
    meta: ImageMeta | None = None,
) -> Detections:
    """Score filter + per-class NMS (+ undo the letterbox/crop with ``meta``, clipped to the
    original image).

    ``multi_label=True`` keeps every (box, class) pair above ``score_threshold`` (a box may carry
    several classes, as YOLOX's ``multiclass_nms_class_aware``); ``False`` keeps only each
    box's best class. At most ``max_detections`` are returned, best first.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if scores.ndim != 2 or boxes.shape != (scores.shape[0], 4):
        raise InputError(f"detect: boxes {list(boxes.shape)} and scores {list(scores.shape)}")
    if multi_label:
        bi, ci = np.nonzero(scores > score_threshold)
        sc = scores[bi, ci]
    else:
        ci = scores.argmax(axis=1)
        sc = scores[np.arange(scores.shape[0]), ci]
        bi = np.nonzero(sc > score_threshold)[0]
        ci, sc = ci[bi], sc[bi]
    if bi.size == 0:
        return Detections.empty()
    cand = boxes[bi]
    keep = batched_nms(cand, sc, ci, iou_threshold)
    if max_detections is not None:
        keep = keep[:max_detections]
    out_boxes = cand[keep]
    if meta is not None:
        out_boxes = meta.to_original(out_boxes)
        w, h = meta.size
        out_boxes[:, 0::2] = out_boxes[:, 0::2].clip(0, w)
        out_boxes[:, 1::2] = out_boxes[:, 1::2].clip(0, h)
    return Detections(
        boxes=out_boxes.astype(np.float32),
        scores=sc[keep].astype(np.float32),
        classes=ci[keep].astype(np.int64),
    )
