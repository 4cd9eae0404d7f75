"""Detection agreement: how many of the reference model's detections the candidate keeps.

Top-box agreement is brittle for detectors: two anchors of the same object (IoU 0.94, scores
equal to four digits), or two objects whose scores differ by 1 %, swap places under float16
noise although every detection survives. Measured on YOLOX-Nano FP16 (float16 storage
emulated) over 64 COCO images: 2 top boxes "changed", both such near-ties. So for a decoded
detector output ``[N, boxes, 5 + classes]`` (YOLOX layout: objectness and class scores after
sigmoid) the budget is judged on the detections instead:

both outputs are decoded (:func:`onnxfit.data.detection.decode_yolox`), filtered at score
``0.3`` with class-aware NMS at IoU 0.45 (:func:`onnxfit.data.detection.detect`); a candidate
detection matches an unmatched reference detection of the same class with IoU >= 0.5 (greedy,
best score first); agreement = F1 = 2 x matches / (reference + candidate detections), pooled
over all images. A model whose output is not YOLOX-shaped gets None (top-box agreement stays).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError

logger = logging.getLogger(__name__)

SCORE_THRESHOLD = 0.3
MATCH_IOU = 0.5


def _matches(ref: object, cand: object) -> int:
    from onnxfit.data.detection import box_iou

    r_boxes, r_cls = ref.boxes, ref.classes  # type: ignore[attr-defined]
    c_boxes, c_cls = cand.boxes, cand.classes  # type: ignore[attr-defined]
    if len(r_boxes) == 0 or len(c_boxes) == 0:
        return 0
    iou = box_iou(c_boxes, r_boxes)
    iou[c_cls[:, None] != r_cls[None, :]] = 0.0
    used = np.zeros(len(r_boxes), bool)
    found = 0
    for i in range(len(c_boxes)):  # candidates come best first
        row = np.where(used, 0.0, iou[i])
        j = int(row.argmax())
        if row[j] >= MATCH_IOU:
            used[j] = True
            found += 1
    return found


def _input_size(model: ir.Model) -> tuple[int, int] | None:
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits or v.shape is None or len(v.shape) != 4:
            continue
        h, w = v.shape[2], v.shape[3]
        if isinstance(h, int) and isinstance(w, int):
            return h, w
    return None


def detection_agreement(
    reference: ir.Model,
    candidate: ir.Model,
    feeds: Sequence[Mapping[str, np.ndarray]],
    output: str,
) -> float | None:
    """F1 of the candidate's detections against the reference's (module docstring), or None
    when ``output`` does not decode as YOLOX."""
    from onnxfit.data.detection import decode_yolox, detect
    from onnxfit.runtime.session import Session

    size = _input_size(reference)
    if size is None:
        return None
    matched = total = 0
    with Session(reference, target="cpu") as rs, Session(candidate, target="cpu") as cs:
        for feed in feeds:
            r_out, c_out = rs.run(feed)[output], cs.run(feed)[output]
            for r, c in zip(r_out, c_out, strict=True):
                try:
                    rd = detect(*decode_yolox(r, input_size=size), score_threshold=SCORE_THRESHOLD)
                    cd = detect(*decode_yolox(c, input_size=size), score_threshold=SCORE_THRESHOLD)
                except InputError as exc:
                    logger.debug("detection agreement not available: %s", exc)
                    return None
                matched += _matches(rd, cd)
                total += len(rd.boxes) + len(cd.boxes)
    f1 = 1.0 if total == 0 else 2.0 * matched / total
    logger.info("detection agreement: F1 %.4f over %d detections", f1, total)
    return f1
