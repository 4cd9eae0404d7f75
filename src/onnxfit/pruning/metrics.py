"""Metrics for the pruning budget: a model -> a score in points (higher is better).

Thin adapters over the one evaluator (:mod:`onnxfit.verify.evaluator`); nothing here runs or
scores a model itself:

* :func:`top1_metric` — top-1 accuracy (%) on preprocessed, labelled images;
* :func:`agreement_metric` — top-1 agreement (%) with a reference model (no labels needed);
* :func:`map50_metric` — mAP@0.5 (%) of a YOLOX / YOLOv3 detector on a YOLO-format folder.

The optimizer builds its pruning metric from its accuracy gate instead
(:class:`onnxfit.optimizer.gate.Judge`), so pruning and precision are judged alike.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfit.verify.distance import top1_agreement
from onnxfit.verify.evalset import load_labelled
from onnxfit.verify.evaluator import Evaluator, classification_metrics, model_info
from onnxfit.verify.runner import run_all


@dataclass(frozen=True)
class Metric:
    """A named score of a model in points, higher is better (e.g. top-1 in %)."""

    name: str
    evaluate: Callable[[ir.Model], float]


def _scores(model: ir.Model, images: np.ndarray, batch: int) -> np.ndarray:
    out = run_all(model, images, batch=batch)
    return next(iter(out.values())).reshape(len(images), -1)


def top1_metric(images: np.ndarray, labels: np.ndarray, *, batch: int = 16) -> Metric:
    """Top-1 accuracy (%) of a classifier on preprocessed ``images`` [N, 3, H, W]."""
    lab = np.asarray(labels).reshape(-1)

    def evaluate(model: ir.Model) -> float:
        return 100.0 * classification_metrics(_scores(model, images, batch), lab, ks=(1,))["top1"]

    return Metric("top1", evaluate)


def agreement_metric(reference: ir.Model, images: np.ndarray, *, batch: int = 16) -> Metric:
    """Top-1 agreement (%) with ``reference``'s predictions (no labels needed)."""
    ref = _scores(reference, images, batch)
    return Metric("agreement", lambda m: 100.0 * top1_agreement(ref, _scores(m, images, batch)))


def map50_metric(
    folder: str | os.PathLike[str],
    *,
    preset: str = "yolox",
    limit: int | None = None,
    model: ir.Model | None = None,
) -> Metric:
    """mAP@0.5 (%) of a YOLOX / YOLOv3 detector on a YOLO-format folder (``images/``,
    ``labels/``). ``model`` (any model of the family) tells the decoder; without it the
    decoder follows ``preset`` (``yolox``, else darknet YOLOv3)."""
    data = load_labelled(folder, preset, limit=limit)
    holder: dict[str, Evaluator] = {}

    def evaluate(m: ir.Model) -> float:
        if "ev" not in holder:
            info = model_info(model if model is not None else m, preset=preset, task="detect")
            holder["ev"] = Evaluator(data, info)
        return 100.0 * holder["ev"].accuracy(m).metrics["map50"]

    return Metric("map50", evaluate)
