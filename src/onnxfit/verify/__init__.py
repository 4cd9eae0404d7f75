"""Measure models on data: run them, score them, compare them (the floor below pruning, the
optimizer, apps and profiling — they all measure through here).

* :mod:`~onnxfit.verify.runner` — the one "run a model over feeds" helper (:func:`run_all`):
  fixed batch sizes honoured, the last batch padded and trimmed;
* :mod:`~onnxfit.verify.evalset` — labelled folders (``labels.tsv``, or YOLO ``images/`` +
  ``labels/``) read into an :class:`EvalSet`; :func:`load_eval_set` for classification arrays;
* :mod:`~onnxfit.verify.evaluator` — the one evaluator: top-1/top-5, mAP@0.5 and @0.5:0.95
  (:class:`Evaluator`, :func:`evaluate_models`, :class:`Accuracy`);
* :mod:`~onnxfit.verify.distance` — distances between two models' outputs without labels:
  top-1 agreement, mean KL, expected top-1 drop, cosine, matched boxes;
* :func:`compare_models` — per-output error figures (max abs / rel error, cosine) of a candidate
  against a reference on the same inputs, agreement, and with labels both models' top-1/top-5;
* :func:`per_node_sensitivity` — nodes ranked by the error they *add* (their output's relative
  L2 error minus the worst of their inputs'): the layers to keep in higher precision.
"""

from __future__ import annotations

from onnxfit.verify.compare import (
    OutputDiff,
    VerifyResult,
    compare_models,
    output_diff,
    top_box,
)
from onnxfit.verify.distance import (
    box_agreement,
    cosine_per_sample,
    expected_top1_drop,
    mean_kl,
    top1_agreement,
)
from onnxfit.verify.evalset import (
    EvalSet,
    Task,
    check_labels,
    dataset_task,
    load_eval_set,
    load_labelled,
)
from onnxfit.verify.evaluator import (
    Accuracy,
    Evaluator,
    classification_metrics,
    evaluate_models,
)
from onnxfit.verify.runner import run_all
from onnxfit.verify.sensitivity import NodeDrift, per_node_sensitivity

__all__ = [
    "Accuracy",
    "EvalSet",
    "Evaluator",
    "NodeDrift",
    "OutputDiff",
    "Task",
    "VerifyResult",
    "box_agreement",
    "check_labels",
    "classification_metrics",
    "compare_models",
    "cosine_per_sample",
    "dataset_task",
    "evaluate_models",
    "expected_top1_drop",
    "load_eval_set",
    "load_labelled",
    "mean_kl",
    "output_diff",
    "per_node_sensitivity",
    "run_all",
    "top1_agreement",
    "top_box",
]
