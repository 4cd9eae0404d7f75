"""Data pipeline: async file loading, image preprocessing, task post-processing and metrics.

* :mod:`onnxfit.data.loader` — :class:`AsyncLoader` (bounded concurrency and prefetch, timeouts).
* :mod:`onnxfit.data.images` — presets, ``preprocess``/``preprocess_into``, :class:`Preprocessor`,
  ``list_images``, ``guess_preset`` (decoding in :mod:`onnxfit.data.decode`).
* :mod:`onnxfit.data.tasks` — softmax/top-k/accuracy; detection decode + NMS
  (:mod:`onnxfit.data.detection`) and mAP (:mod:`onnxfit.data.metrics`).

Names are re-exported lazily so ``import onnxfit.data`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from onnxfit._lazy import lazy_attr

_API: dict[str, str] = {
    "AsyncLoader": "onnxfit.data.loader",
    "LoadError": "onnxfit.data.loader",
    "PRESETS": "onnxfit.data.presets",
    "Preset": "onnxfit.data.presets",
    "ImageMeta": "onnxfit.data.presets",
    "ImageError": "onnxfit.data.images",
    "Preprocessor": "onnxfit.data.images",
    "get_preset": "onnxfit.data.presets",
    "guess_preset": "onnxfit.data.presets",
    "list_images": "onnxfit.data.images",
    "scan_images": "onnxfit.data.images",
    "preprocess": "onnxfit.data.images",
    "preprocess_into": "onnxfit.data.images",
    "preprocess_with_meta": "onnxfit.data.images",
    "Classification": "onnxfit.data.tasks",
    "classify": "onnxfit.data.tasks",
    "softmax": "onnxfit.data.tasks",
    "topk": "onnxfit.data.tasks",
    "topk_accuracy": "onnxfit.data.tasks",
    "read_class_names": "onnxfit.data.tasks",
    "read_labels_tsv": "onnxfit.data.tasks",
    "Detections": "onnxfit.data.detection",
    "decode_yolox": "onnxfit.data.detection",
    "decode_yolov3_tiny": "onnxfit.data.detection",
    "detect": "onnxfit.data.detection",
    "nms": "onnxfit.data.detection",
    "batched_nms": "onnxfit.data.detection",
    "DetectionEvaluator": "onnxfit.data.metrics",
    "DetectionMetrics": "onnxfit.data.metrics",
    "read_yolo_labels": "onnxfit.data.metrics",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, _API, name)
