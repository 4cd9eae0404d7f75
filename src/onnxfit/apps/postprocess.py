"""Post-processing of the image pipeline: the raw outputs of one preprocessed chunk of images ->
one :class:`~onnxfit.apps.results.ImageResult` per path, in order.

Classification: top-k classes (:func:`onnxfit.data.tasks.classify`). Detection: the
evaluator's decode (:func:`onnxfit.verify.evaluator.decode_detections`: YOLOX or YOLOv3 heads,
score threshold, per-class NMS, the letterbox undone into original-image pixels). A path
that could not be preprocessed gets a result with its ``error`` (the reason, or "could not be
preprocessed") in its place.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit.apps.results import ImageResult
from onnxfit.data.images import ImageMeta
from onnxfit.data.model_info import ModelInfo
from onnxfit.data.tasks import classify
from onnxfit.verify.evaluator import decode_detections

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
        dets = decode_detections(
            outputs,
            info,
            metas,
            score_threshold=score_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )
        for d, det in zip(per_image, dets, strict=True):
            d["detections"] = det
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
