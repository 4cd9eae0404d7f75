"""The one evaluator: a model's accuracy on labelled data, scored the same way everywhere.

``onnxfit eval`` (streaming, through :mod:`onnxfit.apps.evaluation`), ``compare --eval``, the
optimizer's accuracy gate and the pruning budget all score with the functions here:

* classification: :class:`TopKCounter` / :func:`classification_metrics` — top-1 and top-5
  accuracy (fractions 0-1) against class indices;
* detection: :func:`decode_detections` (YOLOX or darknet YOLOv3 heads -> per-image
  :class:`~onnxfit.data.detection.Detections` in original-image pixels, by
  :func:`onnxfit.data.detection.detect`) and :func:`detection_metrics` — mAP@0.5 and
  mAP@0.5:0.95 with :class:`onnxfit.data.metrics.DetectionEvaluator`, at score threshold
  :data:`EVAL_SCORE_THRESHOLD` and per-class NMS at IoU :data:`EVAL_IOU_THRESHOLD` (the method
  of ``../shared/data/SOURCES.md``);
* :class:`Evaluator` holds one preprocessed :class:`~onnxfit.verify.evalset.EvalSet` and the
  model's kind (task, decoder, input size from :func:`onnxfit.data.model_info.describe_model`),
  runs a model over it (:func:`onnxfit.verify.runner.run_all`) and scores the outputs;
* :func:`evaluate_models` scores several models on one folder, images preprocessed once per
  preset (``compare --eval``).

Distances between two models' outputs (agreement, KL, cosine, matched boxes) live in
:mod:`onnxfit.verify.distance`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from onnxfit.data.detection import Detections
from onnxfit.data.metrics import DetectionEvaluator, DetectionMetrics
from onnxfit.data.model_info import ModelInfo, describe_model
from onnxfit.errors import InputError
from onnxfit.verify.evalset import EvalSet, Task, dataset_task, load_labelled
from onnxfit.verify.runner import DEFAULT_BATCH, ModelArg, run_all

if TYPE_CHECKING:
    from onnxfit.data.images import ImageMeta

__all__ = [
    "EVAL_IOU_THRESHOLD",
    "EVAL_SCORE_THRESHOLD",
    "Accuracy",
    "Evaluator",
    "TopKCounter",
    "classification_metrics",
    "decode_detections",
    "detection_metrics",
    "evaluate_models",
    "model_info",
]

EVAL_SCORE_THRESHOLD = 0.01
EVAL_IOU_THRESHOLD = 0.45
MAX_DETECTIONS = 300


@dataclass(frozen=True)
class Accuracy:
    """Metrics (fractions 0-1) of one model on one labelled set."""

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
    def from_dict(cls, d: Mapping[str, Any]) -> Accuracy:
        return cls(d["task"], dict(d["metrics"]), d["samples"], d["dataset"], d.get("preset", ""))


# ---------------------------------------------------------------------------- classification


class TopKCounter:
    """Top-k hits counted image by image (or batch by batch): :meth:`result` gives
    ``{"top1": ..., "top5": ...}`` as fractions of the images added."""

    def __init__(self, ks: Sequence[int] = (1, 5)) -> None:
        self.ks = tuple(int(k) for k in ks)
        self.hits = np.zeros(len(self.ks), np.int64)
        self.count = 0

    def add(self, top: np.ndarray, labels: int | np.ndarray) -> None:
        """``top``: class indices best first, ``[k]`` for one image or ``[N, k]``."""
        t = np.asarray(top).reshape(-1, np.shape(top)[-1])
        y = np.asarray(labels, np.int64).reshape(-1, 1)
        hit = t == y
        self.hits += [int(hit[:, :k].any(axis=1).sum()) for k in self.ks]
        self.count += t.shape[0]

    def result(self) -> dict[str, float]:
        n = max(1, self.count)
        return {f"top{k}": float(h) / n for k, h in zip(self.ks, self.hits, strict=True)}


def classification_metrics(
    scores: np.ndarray, labels: Sequence[int] | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[str, float]:
    """Top-k accuracy (fractions) of ``scores [N, C]`` against ``labels [N]``; ``ks`` larger
    than C are left out."""
    from onnxfit.data.tasks import topk

    x = np.asarray(scores).reshape(len(np.asarray(labels).reshape(-1)), -1)
    keep = [k for k in ks if k <= x.shape[1]]
    counter = TopKCounter(keep)
    if x.shape[0]:
        counter.add(topk(x, max(keep))[0], np.asarray(labels))
    return counter.result()


# ---------------------------------------------------------------------------- detection


def decode_detections(
    outputs: Sequence[np.ndarray],
    info: ModelInfo,
    metas: Sequence[ImageMeta | None],
    *,
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    iou_threshold: float = EVAL_IOU_THRESHOLD,
    max_detections: int = MAX_DETECTIONS,
) -> list[Detections]:
    """Per image (row ``k`` of every output, one ``meta`` per image; ``None``: boxes stay in
    network-input pixels), the decoded, thresholded, NMS-ed detections."""
    from onnxfit.data.detection import decode_yolov3_tiny, decode_yolox, detect

    size = info.preset.size
    out = []
    for k, meta in enumerate(metas):
        if info.decoder == "yolox":
            boxes, scores = decode_yolox(outputs[0][k], input_size=size)
        elif info.decoder == "yolov3":
            boxes, scores = decode_yolov3_tiny([o[k] for o in outputs], input_size=size)
        else:
            raise InputError(f"{info.decoder} outputs are not detections", hint="a detector")
        out.append(
            detect(
                boxes,
                scores,
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                max_detections=max_detections,
                meta=meta,
            )
        )
    return out


def detection_metrics(
    detections: Sequence[Detections], truth: Sequence[tuple[np.ndarray, np.ndarray]]
) -> DetectionMetrics:
    """mAP@0.5 and mAP@0.5:0.95 of per-image ``detections`` against ``(boxes, classes)``."""
    ev = DetectionEvaluator()
    for dets, (boxes, classes) in zip(detections, truth, strict=True):
        ev.add(dets, boxes, classes)
    return ev.result()


# ---------------------------------------------------------------------------- evaluator


def model_info(
    model: ModelArg | Any, *, preset: str | None = None, task: str | None = None
) -> ModelInfo:
    """Task, decoder and preprocessing of an image model (:func:`describe_model` on its
    session's input / output specs)."""
    from onnxfit.runtime.session import Session

    if isinstance(model, Session):
        return describe_model(model.inputs, model.outputs, task=task, preset=preset)
    with Session(model, target="cpu") as sess:
        return describe_model(sess.inputs, sess.outputs, task=task, preset=preset)


class Evaluator:
    """Scores models on one labelled :class:`EvalSet` (module docstring).

    ``info`` says how to read the outputs (task, decoder, input size); ``batch`` is the run
    batch for a model with a symbolic batch axis; ``session_args`` go to the session
    (``target``, ``providers``, ``threads``).
    """

    def __init__(
        self,
        data: EvalSet,
        info: ModelInfo,
        *,
        batch: int = DEFAULT_BATCH,
        **session_args: Any,
    ) -> None:
        if data.task != info.task:
            raise InputError(
                f"a {data.task} evaluation set for a {info.task} model",
                hint="classifiers take labels.tsv folders, detectors images/ + labels/",
            )
        self.data, self.info, self.batch = data, info, batch
        self.session_args = session_args

    @classmethod
    def for_folder(
        cls,
        model: ModelArg | Any,
        folder: str | os.PathLike[str],
        *,
        preset: str | None = None,
        limit: int | None = None,
        exclude: Sequence[str | os.PathLike[str]] = (),
        **session_args: Any,
    ) -> Evaluator:
        """An evaluator for ``model`` on the labelled ``folder`` (preprocessed with the model's
        preset; ``exclude`` leaves files out, e.g. the calibration images)."""
        info = model_info(model, preset=preset, task=dataset_task(folder))
        data = load_labelled(
            folder, info.preset, limit=limit, exclude=exclude, num_classes=info.num_classes
        )
        return cls(data, info, **session_args)

    @property
    def task(self) -> Task:
        return self.data.task

    @property
    def headline(self) -> str:
        """``top1`` or ``map50``: the metric a budget is judged on."""
        return "top1" if self.task == "classify" else "map50"

    def outputs(self, model: ModelArg | Any) -> list[np.ndarray]:
        """The model's outputs on the set, in :attr:`ModelInfo.outputs` order."""
        out = run_all(model, self.data.x, batch=self.batch, **self.session_args)
        return [out[name] for name in self.info.outputs]

    def detections(
        self, outputs: Sequence[np.ndarray], *, score_threshold: float = EVAL_SCORE_THRESHOLD
    ) -> list[Detections]:
        """Per-image detections (original-image pixels) from a detector's ``outputs``."""
        assert self.data.metas is not None
        return decode_detections(
            outputs, self.info, self.data.metas, score_threshold=score_threshold
        )

    def score(self, outputs: Sequence[np.ndarray]) -> Accuracy:
        """The :class:`Accuracy` of ``outputs`` (from :meth:`outputs`)."""
        if self.task == "classify":
            assert self.data.labels is not None
            metrics = classification_metrics(outputs[0], self.data.labels)
        else:
            assert self.data.truth is not None
            m = detection_metrics(self.detections(outputs), self.data.truth)
            metrics = {"map50": m.map50, "map50_95": m.map50_95}
        return Accuracy(self.task, metrics, len(self.data), self.data.source, self.data.preset)

    def accuracy(self, model: ModelArg | Any) -> Accuracy:
        """Run ``model`` on the set and score it."""
        return self.score(self.outputs(model))


def evaluate_models(
    models: Sequence[ModelArg],
    folder: str | os.PathLike[str],
    *,
    limit: int | None = None,
    preset: str | None = None,
    **session_args: Any,
) -> list[Accuracy]:
    """The accuracy of each model on ``folder`` (same images, same order; images preprocessed
    once per preset and shared). ``session_args``: ``target``, ``providers``, ``threads``."""
    task = dataset_task(folder)
    cache: dict[Any, EvalSet] = {}
    out = []
    for m in models:
        info = model_info(m, preset=preset, task=task)
        key = info.preset
        if key not in cache:
            cache[key] = load_labelled(
                folder, info.preset, limit=limit, num_classes=info.num_classes
            )
        out.append(Evaluator(cache[key], info, **session_args).accuracy(m))
    return out
