"""Post-processing of the image pipeline: the raw outputs of one preprocessed chunk of images ->
one :class:`~onnxfit.apps.results.ImageResult` per path, in order.

Classification: top-k classes (:func:`onnxfit.data.tasks.classify`). Detection: decode the
YOLOX or YOLOv3 heads (:mod:`onnxfit.data.detection`), then score threshold, per-class NMS and
the letterbox undone into original-image pixels (:func:`onnxfit.data.detection.detect`). A path
that could not be preprocessed gets a result with its ``error`` (the reason, or "could not be
preprocessed") in its place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit.apps.results import ImageResult
from onnxfit.data.detection import YOLOV3_TINY_ANCHORS, decode_yolov3_tiny, decode_yolox, detect
from onnxfit.data.images import ImageMeta
from onnxfit.data.model_info import ModelInfo
from onnxfit.data.tasks import classify

__all__ = ["chunk_results"]


def chunk_results(
    start: int,
    paths: Sequence[Path],
    metas: Sequence[ImageMeta],
    errors: Mapping[str, str],
    outputs: Sequence[np.ndarray],
    *,
    info: ModelInfo,
    names: Sequence[str] | None,
    top_k: int,
    score_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> Iterator[ImageResult]:
    """Results for ``paths`` (input indices from ``start``): ``metas`` are the images that were
    preprocessed, in path order, and ``outputs`` the model's outputs for them (first ``len(metas)``
    rows); ``errors`` maps a path that was not to its reason."""
    n = len(metas)
    per_image: list[dict[str, Any]] = [{} for _ in range(n)]
    if n and info.task == "classify":
        logits = outputs[0][:n].reshape(n, -1)
        top = classify(logits, k=top_k, names=names)
        for d, c in zip(per_image, top, strict=True):
            d["classification"] = c
    elif n:
        size = info.preset.size
        for k, meta in enumerate(metas):
            if info.decoder == "yolox":
                boxes, scores = decode_yolox(outputs[0][k], input_size=size)
            else:
                heads = [o[k] for o in outputs]
                anchors = info.anchors or YOLOV3_TINY_ANCHORS
                boxes, scores = decode_yolov3_tiny(heads, input_size=size, anchors=anchors)
            per_image[k]["detections"] = detect(
                boxes,
                scores,
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                max_detections=max_detections,
                meta=meta,
            )
    k = 0
    for j, p in enumerate(paths):
        index = start + j
        if k < n and metas[k].path == str(p):
            meta = metas[k]
            yield ImageResult(index, str(p), size=meta.size, names=names, meta=meta, **per_image[k])
            k += 1
        else:
            reason = errors.get(str(p), "could not be preprocessed")
            yield ImageResult(index, str(p), error=reason, names=names)
