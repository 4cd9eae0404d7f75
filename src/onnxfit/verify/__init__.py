"""Compare an optimized model with its original on the same inputs.

* :func:`compare_models` runs both models in onnxruntime (CPU) on the same feeds and returns a
  :class:`VerifyResult`: per output the max abs error, the max error relative to the reference
  output's largest magnitude, the mean abs error, and the cosine similarity of each sample
  (mean and worst); the top-1 agreement of a classifier-like output ``[N, C]``, or the top-box
  agreement of a decoded detector output ``[N, boxes, 5 + classes]``; and with ``labels`` the
  top-1 / top-5 accuracy of both models and the drop in points. ``synthetic`` says whether the
  inputs were made up (then the result says nothing about real accuracy).
* :func:`per_node_sensitivity` exposes every float tensor both models compute (same name) as an
  extra output, runs both, and ranks nodes by the error they *add* (their output's relative L2
  error minus the worst of their inputs'): the layers to keep in higher precision when backing
  off.
* :func:`load_eval_set` reads an evaluation folder (images + ``labels.tsv``, the format of
  ``../shared/data/imagenet-sample``).
"""

from __future__ import annotations

from onnxfit.verify.compare import (
    OutputDiff,
    Task,
    VerifyResult,
    check_labels,
    compare_models,
    cosine_per_sample,
    output_diff,
    top1_agreement,
    top_box,
)
from onnxfit.verify.evalset import load_eval_set
from onnxfit.verify.sensitivity import NodeDrift, per_node_sensitivity

__all__ = [
    "NodeDrift",
    "OutputDiff",
    "Task",
    "VerifyResult",
    "check_labels",
    "compare_models",
    "cosine_per_sample",
    "load_eval_set",
    "output_diff",
    "per_node_sensitivity",
    "top1_agreement",
    "top_box",
]
