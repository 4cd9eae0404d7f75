"""Compare an optimized model with its original on the same inputs: errors, agreement, accuracy.

Per output: max abs error, max error relative to the reference's largest magnitude, mean abs
error, and the cosine similarity of each sample (mean and worst). The top-1 agreement of a
classifier-like output ``[N, C]``, or the top-box agreement of a decoded detector output
``[N, boxes, 5 + classes]``. With labels, top-1 / top-5 accuracy of both and the drop in points.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from onnxfit.errors import InputError
from onnxfit.verify.distance import cosine_per_sample, top1_agreement
from onnxfit.verify.evalset import Task, check_labels
from onnxfit.verify.evaluator import classification_metrics
from onnxfit.verify.runner import Inputs, ModelArg, feeds_of, input_names, run_all

logger = logging.getLogger(__name__)


@dataclass
class OutputDiff:
    """Differences on one output (name and shape as the reference gives them)."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    cosine: float
    cosine_min: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class VerifyResult:
    """What :func:`compare_models` measured. Accuracies are fractions; the drop is in points."""

    samples: int
    synthetic: bool
    task: Task | None
    outputs: list[OutputDiff]
    agreement: float | None = None
    agreement_output: str | None = None
    reference_accuracy: dict[str, float] = field(default_factory=dict)
    candidate_accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((o.max_rel_error for o in self.outputs), default=0.0)

    @property
    def cosine_min(self) -> float:
        return min((o.cosine_min for o in self.outputs), default=1.0)

    @property
    def top1_agreement(self) -> float | None:
        """Top-1 agreement (classify) or top-box agreement (detect); None when neither applies."""
        return self.agreement

    @property
    def accuracy_drop(self) -> float | None:
        """Reference top-1 minus candidate top-1, in percentage points (None without labels)."""
        if "top1" not in self.reference_accuracy:
            return None
        return 100.0 * (self.reference_accuracy["top1"] - self.candidate_accuracy["top1"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "synthetic": self.synthetic,
            "task": self.task,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "cosine_min": self.cosine_min,
            "agreement": self.agreement,
            "agreement_output": self.agreement_output,
            "reference_accuracy": dict(self.reference_accuracy),
            "candidate_accuracy": dict(self.candidate_accuracy),
            "accuracy_drop_pts": self.accuracy_drop,
            "outputs": [o.to_dict() for o in self.outputs],
        }


def output_diff(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputDiff:
    """Error figures of one output; ``max_rel_error`` is ``max|ref - cand| / max|ref|``."""
    if ref.shape != cand.shape:
        raise InputError(
            f"output {name!r}: shapes differ ({list(ref.shape)} vs {list(cand.shape)})",
            hint="compare models with the same outputs",
        )
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(r - c)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    cos = cosine_per_sample(r, c) if r.ndim and r.shape[0] else np.ones(1)
    return OutputDiff(
        name,
        tuple(ref.shape),
        max_abs,
        max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
        float(diff.mean()) if diff.size else 0.0,
        float(cos.mean()),
        float(cos.min()),
    )


def _class_scores(arr: np.ndarray) -> np.ndarray | None:
    """``arr`` as [N, C] when it looks like per-class scores ([N, C] or [N, C, 1, 1], C > 1)."""
    if arr.ndim >= 2 and arr.shape[1] > 1 and all(d == 1 for d in arr.shape[2:]):
        return arr.reshape(arr.shape[0], arr.shape[1])
    return None


def top_box(arr: np.ndarray) -> np.ndarray:
    """Per sample, (box index, class) of the best box of a decoded detector output
    ``[N, boxes, 5 + classes]`` whose column 4 is objectness and columns 5: class scores (as
    YOLOX exports it, sigmoids applied); score = objectness x class score. Shape [N, 2]."""
    scores = arr[..., 4:5] * arr[..., 5:]
    flat = scores.reshape(arr.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, scores.shape[1:]), axis=1)


def _agreement(
    ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], task: Task | None
) -> tuple[float | None, str | None, Task | None]:
    for name, r in ref.items():
        if task in (None, "classify") and (rs := _class_scores(r)) is not None:
            cs = _class_scores(cand[name])
            assert cs is not None
            return top1_agreement(rs, cs), name, "classify"
        if task in (None, "detect") and r.ndim == 3 and r.shape[2] >= 6:
            same = np.all(top_box(r) == top_box(cand[name]), axis=1)
            return float(same.mean()), name, "detect"
    if task is not None:
        want = "[N, C] scores" if task == "classify" else "[N, boxes, 5 + classes]"
        raise InputError(
            f"task {task!r}: no output looks like {want}",
            hint="pass task=None to compare errors only",
        )
    return None, None, None


def compare_models(
    reference: ModelArg,
    candidate: ModelArg,
    inputs: Inputs,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    task: Task | None = None,
    synthetic: bool | None = None,
    batch: int = 8,
) -> VerifyResult:
    """Run both models on ``inputs`` and measure how far ``candidate`` is from ``reference``.

    ``inputs``: :class:`CalibrationData`, one array (single-input models; axis 0 = samples) or a
    list of feed dicts. Feeds larger than a model's fixed batch size are split. ``labels``: one
    class index per sample, for top-1/top-5 accuracy of both (a classifier output is needed).
    ``task``: ``None`` finds a classifier or detector output by shape; a named task that finds
    none raises :class:`InputError`. ``synthetic`` overrides the flag taken from ``inputs``.
    """
    feeds, is_synthetic = feeds_of(inputs, input_names(reference))
    if not feeds:
        raise InputError("no inputs to compare the models on", hint="give at least one sample")
    ref = run_all(reference, feeds, batch=batch)
    cand = run_all(candidate, feeds, batch=batch)
    missing = sorted(set(ref) - set(cand))
    if missing:
        raise InputError(f"the candidate lacks outputs {missing}", hint="outputs must keep names")
    diffs = [output_diff(name, ref[name], cand[name]) for name in ref]
    agreement, agree_out, found = _agreement(ref, cand, task)
    samples = next(iter(ref.values())).shape[0] if ref else 0
    result = VerifyResult(
        samples,
        bool(is_synthetic if synthetic is None else synthetic),
        found or task,
        diffs,
        agreement,
        agree_out,
    )
    if labels is not None:
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        scores = _class_scores(ref[agree_out]) if found == "classify" and agree_out else None
        if scores is None:
            raise InputError(
                "labels given, but no output looks like [N, C] class scores",
                hint="accuracy needs a classifier; drop the labels",
            )
        if len(lab) != samples:
            raise InputError(
                f"{len(lab)} labels for {samples} samples", hint="give one label per input sample"
            )
        check_labels(lab, scores.shape[1])
        cand_scores = _class_scores(cand[agree_out])  # type: ignore[index]
        assert cand_scores is not None
        result.reference_accuracy = classification_metrics(scores, lab)
        result.candidate_accuracy = classification_metrics(cand_scores, lab)
    logger.info(
        "verify: %d samples, max abs %.3g, cosine min %.5f, agreement %s",
        samples,
        result.max_abs_error,
        result.cosine_min,
        agreement,
    )
    return result
