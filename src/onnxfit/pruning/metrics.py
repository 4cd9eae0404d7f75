"""Metrics for the pruning budget: a model -> a score in points (higher is better).

* :func:`top1_metric` — top-1 accuracy (%) on preprocessed, labelled images;
* :func:`agreement_metric` — top-1 agreement (%) with a reference model (no labels needed);
* :func:`map50_metric` — mAP@0.5 (%) of a YOLOX / YOLOv3 detector on a YOLO-format folder.

Models run in onnxruntime's CPU provider (:class:`onnxfit.runtime.session.Session`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError


@dataclass(frozen=True)
class Metric:
    """A named score of a model in points, higher is better (e.g. top-1 in %)."""

    name: str
    evaluate: Callable[[ir.Model], float]


def run_batches(model: ir.Model, x: np.ndarray, batch: int) -> np.ndarray:
    from onnxfit.runtime.session import Session

    with Session(model, target="cpu") as sess:
        spec = sess.inputs[0]
        fixed = spec.shape[0] if spec.shape and isinstance(spec.shape[0], int) else None
        step = fixed or batch
        outs = []
        for i in range(0, len(x), step):
            chunk = x[i : i + step]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate(
                    [chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)]
                )
            out = sess.run({spec.name: chunk})[sess.outputs[0].name]
            outs.append(np.asarray(out)[:n])
    return np.concatenate(outs)


def top1_metric(images: np.ndarray, labels: np.ndarray, *, batch: int = 16) -> Metric:
    """Top-1 accuracy (%) of a classifier on preprocessed ``images`` [N, 3, H, W]."""
    lab = np.asarray(labels).reshape(-1)

    def evaluate(model: ir.Model) -> float:
        scores = run_batches(model, images, batch).reshape(len(images), -1)
        return 100.0 * float(np.mean(scores.argmax(axis=1) == lab))

    return Metric("top1", evaluate)


def agreement_metric(reference: ir.Model, images: np.ndarray, *, batch: int = 16) -> Metric:
    """Top-1 agreement (%) with ``reference``'s predictions (no labels needed)."""
    ref = run_batches(reference, images, batch).reshape(len(images), -1).argmax(axis=1)

    def evaluate(model: ir.Model) -> float:
        pred = run_batches(model, images, batch).reshape(len(images), -1).argmax(axis=1)
        return 100.0 * float(np.mean(pred == ref))

    return Metric("agreement", evaluate)


def map50_metric(
    folder: str | os.PathLike[str], *, preset: str = "yolox", limit: int | None = None
) -> Metric:
    """mAP@0.5 (%) of a YOLOX / YOLOv3 detector on a YOLO-format folder (``images/``,
    ``labels/``), decode + per-class NMS as :mod:`onnxfit.profiling.accuracy` does."""
    from onnxfit.data.detection import decode_yolov3_tiny, decode_yolox, detect
    from onnxfit.data.images import list_images, preprocess_with_meta
    from onnxfit.data.metrics import DetectionEvaluator, read_yolo_labels
    from onnxfit.data.presets import get_preset

    root = Path(folder)
    pre = get_preset(preset)
    items = []
    for img in list_images(root / "images", recursive=True)[: limit or None]:
        label = (root / "labels" / img.relative_to(root / "images")).with_suffix(".txt")
        if label.is_file():
            arr, meta = preprocess_with_meta(img, pre)
            items.append((arr, meta, read_yolo_labels(label, meta.size)))
    if not items:
        raise InputError(f"{root}: no image under images/ has a label file under labels/")
    size = (int(pre.size[0]), int(pre.size[1]))

    def evaluate(model: ir.Model) -> float:
        from onnxfit.runtime.session import Session

        ev = DetectionEvaluator()
        with Session(model, target="cpu") as sess:
            name = sess.inputs[0].name
            for arr, meta, (gt_boxes, gt_classes) in items:
                outs = list(sess.run({name: arr[None]}).values())
                if len(outs) == 1 and outs[0].ndim == 3:
                    boxes, scores = decode_yolox(outs[0], input_size=size)
                else:
                    boxes, scores = decode_yolov3_tiny(outs, input_size=size)
                ev.add(detect(boxes, scores, meta=meta), gt_boxes, gt_classes)
        return 100.0 * ev.result().map50

    return Metric("map50", evaluate)
