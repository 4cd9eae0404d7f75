"""Accuracy of models on an evaluation folder, for ``compare --eval``.

Two folder layouts are understood (those of ``../shared/data``):

* **classification** — images anywhere under the folder and a ``labels.tsv`` with ``file`` and
  ``class_index`` columns (``imagenet-sample``): top-1 and top-5 accuracy
  (:func:`onnxfit.verify.load_eval_set`, :func:`onnxfit.data.tasks.topk_accuracy`).
* **detection** — ``images/**.jpg`` with YOLO-format ``labels/**.txt`` mirroring them
  (``coco-sample``): mAP@0.5 and mAP@0.5:0.95 (:class:`onnxfit.data.metrics.DetectionEvaluator`),
  after the YOLOX (one ``[1, A, 5 + C]`` output) or darknet YOLOv3 (``[1, 255, h, w]`` heads)
  decode, score threshold 0.01 and per-class NMS at IoU 0.45 — the method of SOURCES.md.

The preprocessing preset is guessed from the input shape (:func:`onnxfit.data.images.guess_preset`);
images are preprocessed once per preset and shared by every model.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onnxfit.errors import InputError

logger = logging.getLogger(__name__)

Task = Literal["classify", "detect"]
_EVAL_BATCH = 16


@dataclass(frozen=True)
class Accuracy:
    """Metrics (fractions 0-1) of one model on one folder."""

    task: Task
    metrics: dict[str, float]
    samples: int
    dataset: str
    preset: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def headline(self) -> tuple[str, float]:
        """The main metric: ("top1", x) or ("map50", x)."""
        key = "top1" if self.task == "classify" else "map50"
        return key, self.metrics[key]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "metrics": dict(self.metrics),
            "samples": self.samples,
            "dataset": self.dataset,
            "preset": self.preset,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Accuracy:
        return cls(d["task"], dict(d["metrics"]), d["samples"], d["dataset"], d.get("preset", ""))


def detect_task(folder: str | os.PathLike[str]) -> Task:
    """``classify`` for a folder with labels.tsv, ``detect`` for images/ + labels/ (YOLO)."""
    root = Path(folder)
    if not root.is_dir():
        raise InputError(f"--eval {root}: no such folder", hint="give an evaluation folder")
    if (root / "labels.tsv").is_file():
        return "classify"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "detect"
    raise InputError(
        f"--eval {root}: neither labels.tsv (classification) nor images/ + labels/ (detection)",
        hint="see ../shared/data/imagenet-sample and coco-sample for the two layouts",
    )


def _session(path: str, *, target: str, providers: Sequence[str] | None, threads: int | None):
    from onnxfit.runtime.session import Session

    return Session(
        path, target=target, providers=list(providers) if providers else None, threads=threads
    )


def _preset_for(sess: Any) -> tuple[str, Any]:
    from onnxfit.data.images import get_preset, guess_preset

    spec = sess.inputs[0]
    name = getattr(sess, "metadata", {}).get("onnxfit.preset")  # the model's own, when it says
    name = name or guess_preset(spec.shape, output_shapes=[o.shape for o in sess.outputs])
    preset = get_preset(name)
    h, w = spec.shape[2], spec.shape[3]
    if isinstance(h, int) and isinstance(w, int) and (h, w) != preset.size:
        preset = preset.with_size(h, w)
    return name, preset


def evaluate(
    models: Sequence[str | os.PathLike[str]],
    folder: str | os.PathLike[str],
    *,
    target: str = "cpu",
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    limit: int | None = None,
) -> list[Accuracy]:
    """The accuracy of each model on ``folder`` (same images, same order, for every model)."""
    task = detect_task(folder)
    cache: dict[Any, Any] = {}
    out = []
    for m in models:
        with _session(str(m), target=target, providers=providers, threads=threads) as sess:
            if task == "classify":
                out.append(_classify(sess, Path(folder), limit, cache))
            else:
                out.append(_detect(sess, Path(folder), limit, cache))
    return out


def _classify(sess: Any, folder: Path, limit: int | None, cache: dict) -> Accuracy:
    from onnxfit.data.tasks import topk_accuracy
    from onnxfit.verify import load_eval_set

    name, preset = _preset_for(sess)
    key = ("classify", preset)
    if key not in cache:
        cache[key] = load_eval_set(folder, preset, limit=limit)  # type: ignore[arg-type]
    images, labels = cache[key]
    spec = sess.inputs[0]
    step = spec.shape[0] if isinstance(spec.shape[0], int) else _EVAL_BATCH
    logits = []
    for i in range(0, len(images), step):
        chunk = images[i : i + step]
        if isinstance(spec.shape[0], int) and len(chunk) < step:  # fixed batch: pad the tail
            pad = np.zeros((step - len(chunk), *chunk.shape[1:]), chunk.dtype)
            logits.append(
                sess.run({spec.name: np.concatenate([chunk, pad])})[sess.outputs[0].name][
                    : len(chunk)
                ]
            )
        else:
            logits.append(sess.run({spec.name: chunk})[sess.outputs[0].name])
    scores = np.concatenate(logits).reshape(len(images), -1)
    acc = topk_accuracy(scores, labels, ks=(1, 5))
    return Accuracy("classify", {"top1": acc[1], "top5": acc[5]}, len(labels), str(folder), name)


def _label_path(folder: Path, image: Path) -> Path:
    rel = image.relative_to(folder / "images")
    return (folder / "labels" / rel).with_suffix(".txt")


def _detect(sess: Any, folder: Path, limit: int | None, cache: dict) -> Accuracy:
    from onnxfit.data.detection import YOLOV3_TINY_ANCHORS as YOLO_ANCHORS
    from onnxfit.data.detection import decode_yolov3_tiny, decode_yolox, detect
    from onnxfit.data.images import list_images, preprocess_with_meta
    from onnxfit.data.metrics import DetectionEvaluator, read_yolo_labels
    from onnxfit.data.model_info import parse_anchors

    name, preset = _preset_for(sess)
    key = ("detect", preset)
    if key not in cache:
        items = []
        for img in list_images(folder / "images", recursive=True)[: limit or None]:
            label = _label_path(folder, img)
            if not label.is_file():
                continue
            arr, meta = preprocess_with_meta(img, preset)
            gt = read_yolo_labels(label, meta.size)
            items.append((arr, meta, gt))
        if not items:
            raise InputError(f"--eval {folder}: no image under images/ has a label file")
        cache[key] = items
    spec = sess.inputs[0]
    size = (int(preset.size[0]), int(preset.size[1]))
    evaluator = DetectionEvaluator()
    anchors = parse_anchors(getattr(sess, "metadata", {}).get("onnxfit.anchors")) or YOLO_ANCHORS
    for arr, meta, (gt_boxes, gt_classes) in cache[key]:
        outs = sess.run({spec.name: arr[None]})
        values = [outs[o.name] for o in sess.outputs]
        if len(values) == 1 and values[0].ndim == 3:
            boxes, scores = decode_yolox(values[0], input_size=size)
        elif all(v.ndim == 4 for v in values):
            boxes, scores = decode_yolov3_tiny(values, input_size=size, anchors=anchors)
        else:
            raise InputError(
                "--eval detection: outputs are neither YOLOX [1, A, 5+C] nor YOLOv3 heads",
                hint="detection accuracy supports YOLOX and darknet YOLOv3 outputs",
            )
        evaluator.add(detect(boxes, scores, meta=meta), gt_boxes, gt_classes)
    res = evaluator.result()
    return Accuracy(
        "detect",
        {"map50": res.map50, "map50_95": res.map50_95},
        res.images,
        str(folder),
        name,
    )
