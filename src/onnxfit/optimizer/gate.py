"""The accuracy budget: when an optimized model is good enough.

``max_accuracy_drop`` (points) is checked on the strongest measure the data allows:

1. **accuracy drop** — with labels (``--eval``): top-1 of the original minus top-1 of the
   optimized model, in points; it passes when it is <= the budget (a gain always passes).
2. **disagreement** — real inputs without labels and a classifier output ([N, C]): the share
   of samples whose top-1 class changed, in percent. Each changed prediction can cost at most
   one correct answer, so the disagreement bounds the accuracy drop from above: this check is
   conservative. For a decoded detector output ([N, boxes, 5 + classes]) it is the share of
   the reference's detections the candidate loses or adds: 100 x (1 - F1) of
   :func:`onnxfit.optimizer.detections.detection_agreement` (top-box agreement when the output
   does not decode as YOLOX).
3. **cosine** — synthetic inputs (predictions on noise mean nothing) or no such output: the
   worst per-sample cosine similarity of every output must reach ``1 - budget / 100`` (0.99
   for the default 1.0 point), unless ``min_cosine`` sets the floor.

Non-finite candidate outputs (float16 overflow) always fail. When the plan dequantizes an INT8
input, checks 2 and 3 compare with the dequantized float model (the INT8 model's own
quantization noise is not a loss of the optimization); check 1 always uses the original.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from onnxfit.verify import VerifyResult

Metric = Literal["accuracy_drop", "disagreement", "detections", "cosine"]
#: slack for float rounding when the floor is exactly 1.0 (a zero budget)
_EPS = 1e-9


@dataclass(frozen=True)
class GateResult:
    """One check of the budget: which measure, its value, the limit, and the verdict."""

    metric: Metric
    value: float
    limit: float
    passed: bool
    reference: str  # e.g. "original model", "dequantized model, float16 storage emulated"
    finite: bool = True

    def describe(self) -> str:
        """e.g. ``accuracy drop 0.40 pt <= 1.00 pt``."""
        if not self.finite:
            return "optimized outputs hold inf/NaN (float16 overflow?)"
        ok = "<=" if self.passed else ">"
        if self.metric == "accuracy_drop":
            return f"top-1 drop {self.value:.2f} pt {ok} {self.limit:.2f} pt"
        if self.metric == "detections":
            return (
                f"detection disagreement {self.value:.2f} % {ok} {self.limit:.2f} % "
                f"(1 - F1 vs {self.reference})"
            )
        if self.metric == "disagreement":
            return (
                f"top-1 disagreement {self.value:.2f} % {ok} {self.limit:.2f} % "
                f"(vs {self.reference})"
            )
        ok = ">=" if self.passed else "<"
        return f"worst cosine {self.value:.6f} {ok} {self.limit:.6f} (vs {self.reference})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "reference": self.reference,
            "finite": self.finite,
            "text": self.describe(),
        }


def _finite(result: VerifyResult) -> bool:
    return all(math.isfinite(o.max_abs_error) for o in result.outputs)


def check(
    result: VerifyResult,
    *,
    max_drop: float,
    cosine_floor: float,
    reference: str = "original model",
    detections: float | None = None,
) -> GateResult:
    """Judge ``result`` (candidate vs reference) against the budget (module docstring);
    ``detections`` is the detection F1 when it was measured."""
    finite = _finite(result)
    drop = result.accuracy_drop
    if drop is not None:
        metric: Metric = "accuracy_drop"
        value, limit = float(drop), max_drop
        passed = value <= limit + _EPS
    elif detections is not None and not result.synthetic:
        metric = "detections"
        value, limit = 100.0 * (1.0 - detections), max_drop
        passed = value <= limit + _EPS
    elif result.agreement is not None and not result.synthetic:
        metric = "disagreement"
        value, limit = 100.0 * (1.0 - float(result.agreement)), max_drop
        passed = value <= limit + _EPS
    else:
        metric = "cosine"
        value, limit = float(result.cosine_min), cosine_floor
        passed = bool(value >= limit - _EPS)  # NaN compares False
    return GateResult(metric, value, limit, bool(passed and finite), reference, finite)
