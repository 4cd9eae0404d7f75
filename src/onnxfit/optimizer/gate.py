"""The accuracy budget: when an optimized (or pruned) model is good enough, and how that is told.

``max_accuracy_drop`` (points) is checked on the strongest measure the data allows; every
measure is scored by the one evaluator (:mod:`onnxfit.verify`), and the report names the
measure that ran and its rule (:data:`RULES`):

1. ``top1_drop`` — labelled classification images (``--eval``): top-1 of the reference minus
   top-1 of the candidate, in points.
2. ``map50_drop`` — labelled detection images (``--eval``, YOLO ``images/`` + ``labels/``):
   mAP@0.5 of the reference minus the candidate's, in points.
3. ``expected_top1_drop`` — real images without labels, a classifier: the mean over images of
   ``p_ref[top-1 of ref] - p_ref[top-1 of cand]`` (:func:`onnxfit.verify.expected_top1_drop`):
   the top-1 accuracy the candidate would lose if the labels followed the reference's own
   probabilities. Continuous: a flip at a near-tie costs its margin, not a whole image; mean
   KL and logit cosine are reported beside it.
4. ``box_disagreement`` — real images without labels, a detector: ``100 x (1 - F1)`` of the
   candidate's detections against the reference's, both decoded at the score threshold the
   model is used at (``onnxfit run``'s default 0.25), matched by class at IoU >= 0.5. A
   changed detection costs at most one true positive, so this bounds the mAP@0.5 drop from
   above (conservative).
5. ``cosine`` — synthetic inputs (predictions on noise mean nothing) or an output the evaluator
   cannot read: the worst per-sample cosine of every output must reach ``1 - budget / 100``
   (0.99 for the default 1.0 point), or ``min_cosine``.

Measures 1-4 pass when ``value <= budget``. The labelled top-1 drop is noisy on a few hundred
images (its paired standard error ``sqrt(images only one model gets right) / N`` is often
above a point); when the drop plus twice that exceeds the budget (the sample cannot vouch for
it), measure 3 must meet the budget as well.
A warning says when the sample cannot resolve the budget: one image of N labelled images is
``100 / N`` points (one ground-truth box of G, for mAP; one detection of D, for box
disagreement). Non-finite candidate outputs always fail.
When the plan dequantizes an INT8 input, measures 3-5 compare with the dequantized float model;
labelled measures always use the original.

:class:`Judge` is built once per run (the reference's outputs cached) and serves both the
precision back-off (:meth:`Judge.judge`) and the pruning budget (:meth:`Judge.score`, higher
is better, in the measure's points).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx_ir as ir

from onnxfit.verify import distance
from onnxfit.verify.runner import first_samples, run_all

if TYPE_CHECKING:
    from onnxfit.optimizer.data import RunData

Measure = Literal["top1_drop", "map50_drop", "expected_top1_drop", "box_disagreement", "cosine"]
#: The detection score threshold a model is used at (``onnxfit run --score-threshold``'s default).
USE_SCORE_THRESHOLD = 0.25
#: slack for float rounding when the floor is exactly 1.0 (a zero budget)
_EPS = 1e-9

RULES: dict[str, str] = {
    "top1_drop": "top-1 of the reference minus the candidate's on labelled images, in points; "
    "passes at <= the budget; when the drop plus twice its paired standard error exceeds the "
    "budget, the expected top-1 drop (label-free, lower variance) must meet the budget too",
    "map50_drop": "mAP@0.5 of the reference minus the candidate's on labelled images, in "
    "points; passes at <= the budget",
    "expected_top1_drop": "mean of p_ref[top-1 of ref] - p_ref[top-1 of cand] over the images, "
    "in points: the top-1 the candidate loses if labels follow the reference's probabilities; "
    "passes at <= the budget",
    "box_disagreement": "100 x (1 - F1) of the candidate's detections against the reference's "
    f"(score >= {USE_SCORE_THRESHOLD}, same class, IoU >= 0.5); a changed detection costs at "
    "most one true positive, so it bounds the mAP@0.5 drop; passes at <= the budget",
    "cosine": "worst per-sample output cosine >= 1 - budget / 100 (synthetic inputs)",
}
_LABELS = {
    "top1_drop": "top-1 drop",
    "map50_drop": "mAP@0.5 drop",
    "expected_top1_drop": "expected top-1 drop",
    "box_disagreement": "box disagreement",
    "cosine": "worst cosine",
}


@dataclass(frozen=True)
class GateResult:
    """One check of the budget: which measure, its value, the limit, and the verdict."""

    measure: Measure
    value: float
    limit: float
    passed: bool
    reference: str  # e.g. "original model", "dequantized model, float16 storage emulated"
    finite: bool = True
    details: dict[str, float] = field(default_factory=dict)

    @property
    def metric(self) -> Measure:
        return self.measure

    @property
    def rule(self) -> str:
        return RULES[self.measure]

    def describe(self) -> str:
        """e.g. ``top-1 drop 0.40 pt <= 1.00 pt (vs original model)``."""
        if not self.finite:
            return "optimized outputs hold inf/NaN (float16 overflow?)"
        if self.measure == "cosine":
            ok = ">=" if self.passed else "<"
            return f"worst cosine {self.value:.6f} {ok} {self.limit:.6f} (vs {self.reference})"
        unit = "%" if self.measure == "box_disagreement" else "pt"
        text = f"{_LABELS[self.measure]} {self.value:.2f} {unit}"
        if "standard_error_pts" in self.details:
            text += f" (± {self.details['standard_error_pts']:.2f})"
        ok = "<=" if self.value <= self.limit + _EPS else ">"
        text += f" {ok} {self.limit:.2f} {unit}"
        if self.details.get("guarded"):
            e = self.details["expected_top1_drop_pts"]
            ok = "<=" if e <= self.limit + _EPS else ">"
            text += f", expected top-1 drop {e:.2f} pt {ok} {self.limit:.2f} pt"
        return text + f" (vs {self.reference})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "value": self.value,
            "limit": self.limit,
            "passed": self.passed,
            "reference": self.reference,
            "finite": self.finite,
            "details": dict(self.details),
            "rule": self.rule,
            "text": self.describe(),
        }


def _is_classifier(out: np.ndarray) -> bool:
    return out.ndim >= 2 and out.shape[1] > 1 and all(d == 1 for d in out.shape[2:])


class Judge:
    """Judges candidates against a reference under the budget (module docstring).

    ``reference``: the model the candidate is judged against (measures 3-5); labelled
    measures always score ``data.evaluator`` against ``reference`` too — pass the original
    model there when labels are present. ``float_reference``: with labels, the model the
    expected-drop guard compares with (the dequantized float model when the original is INT8:
    its own quantization noise is not a loss of this run). ``samples`` keeps the first N
    samples only (the pruning scan's quicker judge).
    """

    def __init__(
        self,
        reference: ir.Model,
        data: RunData,
        *,
        budget: float,
        cosine_floor: float,
        reference_name: str = "original model",
        samples: int | None = None,
        score_threshold: float = USE_SCORE_THRESHOLD,
        float_reference: ir.Model | None = None,
    ) -> None:
        self.budget, self.cosine_floor = float(budget), float(cosine_floor)
        self.reference_name = reference_name
        self.score_threshold = score_threshold
        self.warnings: list[str] = []
        self.evaluator = data.evaluator
        if self.evaluator is not None and samples is not None:
            from onnxfit.verify.evaluator import Evaluator

            ev = self.evaluator
            self.evaluator = Evaluator(ev.data.take(samples), ev.info, batch=ev.batch)
        self.info = data.info
        self.feeds = data.verify_feeds(reference)
        if samples is not None:
            self.feeds = first_samples(self.feeds, samples)
        self.measure: Measure = self._choose(reference, data)
        self.reference_score = self._score_ref(reference)
        self._guard_outs = self._ref_outs if self.evaluator is not None else None
        if self.evaluator is not None and float_reference is not None:
            self._guard_outs = self.evaluator.outputs(float_reference)
        self._resolution()

    # -- setup --------------------------------------------------------------------------
    def _choose(self, reference: ir.Model, data: RunData) -> Measure:
        if self.evaluator is not None:
            return "top1_drop" if self.evaluator.task == "classify" else "map50_drop"
        self._ref = run_all(reference, self.feeds)
        if data.synthetic:
            return "cosine"
        first = next(iter(self._ref.values()))
        if self.info is not None and self.info.task == "detect":
            self._ref_dets = self._detections([self._ref[n] for n in self.info.outputs])
            return "box_disagreement"
        if self.info is not None or _is_classifier(first):
            return "expected_top1_drop"
        return "cosine"

    def _score_ref(self, reference: ir.Model) -> float:
        if self.evaluator is not None:
            self._ref_outs = self.evaluator.outputs(reference)
            self._ref_acc = self.evaluator.score(self._ref_outs)
            return 100.0 * self._ref_acc.metrics[self.evaluator.headline]
        return 100.0

    def _resolution(self) -> None:
        if self.measure == "top1_drop":
            n, what = len(self.evaluator.data), "labelled image"  # type: ignore[union-attr]
        elif self.measure == "map50_drop":
            n = self.evaluator.data.ground_truth_boxes  # type: ignore[union-attr]
            what = "ground-truth box"
        elif self.measure == "box_disagreement":
            n, what = sum(len(d) for d in self._ref_dets), "reference detection"
        else:
            return
        step = 100.0 / max(n, 1)
        if step > self.budget:
            self.warnings.append(
                f"the sample cannot resolve the budget: one {what} of {n} is {step:.2f} pt > "
                f"{self.budget:.2f} pt; give at least {math.ceil(100 / max(self.budget, 1e-9))}"
            )

    def _detections(self, outputs: list[np.ndarray]) -> list[Any]:
        from onnxfit.verify.evaluator import decode_detections

        assert self.info is not None
        return decode_detections(
            outputs, self.info, [None] * len(outputs[0]), score_threshold=self.score_threshold
        )

    # -- judging ------------------------------------------------------------------------
    @property
    def rule(self) -> str:
        return RULES[self.measure]

    @property
    def limit(self) -> float:
        """The budget in the measure's own terms (a cosine floor for ``cosine``)."""
        return self.cosine_floor if self.measure == "cosine" else self.budget

    @property
    def loss_budget(self) -> float:
        """The budget as a loss of :meth:`score` points."""
        return 100.0 * (1.0 - self.cosine_floor) if self.measure == "cosine" else self.budget

    def evaluate(self, model: ir.Model) -> tuple[float, bool, dict[str, float]]:
        """(score in points, higher is better; outputs finite; details)."""
        if self.evaluator is not None:
            outs = self.evaluator.outputs(model)
            finite = all(bool(np.all(np.isfinite(o))) for o in outs)
            acc = self.evaluator.score(outs)
            details = {f"reference_{k}": v for k, v in self._ref_acc.metrics.items()}
            details |= {f"candidate_{k}": v for k, v in acc.metrics.items()}
            if self.measure == "top1_drop" and finite:
                details |= self._paired(outs[0])
            return 100.0 * acc.metrics[self.evaluator.headline], finite, details
        out = run_all(model, self.feeds)
        finite = all(bool(np.all(np.isfinite(v))) for v in out.values())
        if self.measure == "cosine":
            cos = min(
                float(distance.cosine_per_sample(r, out[k]).min()) for k, r in self._ref.items()
            )
            return 100.0 * (cos if math.isfinite(cos) else -1.0), finite, {}
        if self.measure == "box_disagreement":
            if not finite:
                return 0.0, False, {}
            assert self.info is not None
            dets = self._detections([out[n] for n in self.info.outputs])
            f1, matched, total = distance.box_agreement(self._ref_dets, dets)
            return 100.0 * f1, finite, {"matched": matched, "detections": total}
        name = next(iter(self._ref))
        ref, cand = self._ref[name], out[name]
        drop = distance.expected_top1_drop(ref, cand)
        details = {
            "mean_kl": distance.mean_kl(ref, cand),
            "agreement": distance.top1_agreement(ref, cand),
            "logit_cosine_min": float(distance.cosine_per_sample(ref, cand).min())
            if finite
            else -1.0,
        }
        return 100.0 * (1.0 - drop), finite, details

    def _paired(self, cand: np.ndarray) -> dict[str, float]:
        """Standard error of the labelled top-1 drop, and the label-free expected drop."""
        assert self.evaluator is not None and self.evaluator.data.labels is not None
        assert self._guard_outs is not None
        y = self.evaluator.data.labels
        ref = self._ref_outs[0].reshape(len(y), -1)
        c = cand.reshape(len(y), -1)
        se = distance.paired_standard_error(ref.argmax(1) == y, c.argmax(1) == y)
        guard = self._guard_outs[0].reshape(len(y), -1)
        return {
            "standard_error_pts": 100.0 * se,
            "expected_top1_drop_pts": 100.0 * distance.expected_top1_drop(guard, c),
        }

    def score(self, model: ir.Model) -> float:
        """The candidate's score in points (higher is better; see :attr:`reference_score`)."""
        return self.evaluate(model)[0]

    def judge(self, model: ir.Model, *, reference: str | None = None) -> GateResult:
        """Check ``model`` against the budget."""
        score, finite, details = self.evaluate(model)
        if self.measure == "cosine":
            value = score / 100.0
            passed = value >= self.cosine_floor - _EPS
        else:
            value = self.reference_score - score
            passed = value <= self.budget + _EPS
            se = details.get("standard_error_pts", 0.0)
            if self.measure == "top1_drop" and value + 2.0 * se > self.budget + _EPS:
                # the labelled sample cannot tell the budget apart from noise: the label-free
                # expected drop (far lower variance) must meet the budget as well
                details["guarded"] = 1.0
                passed = passed and details["expected_top1_drop_pts"] <= self.budget + _EPS
        return GateResult(
            self.measure,
            value,
            self.limit,
            bool(passed and finite),
            reference or self.reference_name,
            finite,
            details,
        )
