"""The verified back-off loop: run the lossy step, verify, keep the worst layers, retry.

Round 0 runs the plan's lossy step (``fp16`` or ``int8``) on the whole model. While the budget
(:mod:`onnxfit.optimizer.gate`) fails and rounds are left (``max_rounds``, default 4), the
nodes hurting most are kept in higher precision and the step runs again on a fresh copy:

* ``fp16``: candidates are verified through :func:`onnxfit.optimizer.emulate.emulate_fp16`
  (float16 storage made visible on ORT's CPU provider, which otherwise computes float16 graphs
  in float32). To keep: first every node whose float32 activations leave the float16 range on
  the data (:func:`onnxfit.passes.activations.fp16_risk_nodes`: overflow, then underflow), then
  the nodes adding the most float16 drift (:func:`onnxfit.verify.per_node_sensitivity` on the
  emulated candidate); they go into ``Fp16Pass(block_list=...)``;
* ``int8``: the nodes adding the most quantization error
  (:func:`onnxfit.verify.per_node_sensitivity` against the prepared float model) go into
  ``nodes_to_exclude``; the model is prepared and calibrated once, the ranges are reused.

Each round at least doubles the kept set (and takes all overflowing nodes at once). When no
round meets the budget, :class:`~onnxfit.errors.VerificationError` says how close it came.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import VerificationError
from onnxfit.optimizer.data import RunData
from onnxfit.optimizer.gate import GateResult, check
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import PlanStep, make_step_pass
from onnxfit.passes.base import PassReport
from onnxfit.verify import VerifyResult, compare_models, per_node_sensitivity

logger = logging.getLogger(__name__)

Say = Callable[[str], None]
#: Feeds used to rank nodes (activation ranges, drift): enough to see outliers, quick to run.
RANKING_FEEDS = 16


@dataclass
class Attempt:
    """One round: the nodes kept in higher precision and the verdict."""

    round: int
    kept: list[str]
    gate: GateResult

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "kept": list(self.kept), "gate": self.gate.to_dict()}


@dataclass
class Outcome:
    """The accepted model, the reports of the steps run on it, and how it was verified."""

    model: ir.Model
    reports: list[PassReport]
    verification: VerifyResult
    gate: GateResult
    attempts: list[Attempt] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    emulated: bool = False


class _Fp16:
    """Builds fp16 candidates with a block list; verifies them through float16 emulation;
    ranks the nodes to block next."""

    emulated = True

    def __init__(self, base: ir.Model, step: PlanStep, feeds: list[dict[str, np.ndarray]]):
        self.base, self.step, self.feeds = base, step, feeds
        self._risks: list[str] | None = None
        self.urgent = 0
        self.fp32_nodes: set[str] = set()

    def build(self, kept: Sequence[str]) -> tuple[ir.Model, PassReport]:
        model = io.clone(self.base)
        opts = {"block_list": sorted(set(kept) | set(self.step.options.get("block_list", ())))}
        p = make_step_pass(self.step, **opts)
        p(model)
        self.fp32_nodes = set(p.report().stats.get("nodes_fp32", []))  # type: ignore[arg-type]
        return model, p.report()

    def verified(self, candidate: ir.Model) -> ir.Model:
        from onnxfit.optimizer.emulate import emulate_fp16

        return emulate_fp16(candidate)

    def rank(self, verified: ir.Model, say: Say) -> list[list[str]]:
        from onnxfit.passes.activations import activation_stats, fp16_risk_nodes

        if self._risks is None:
            say("ranking nodes: float32 activation ranges")
            risks = fp16_risk_nodes(self.base, activation_stats(self.base, self.feeds))
            self._risks = [r.node for r in risks]
            self.urgent = sum(1 for r in risks if r.reason in ("overflow", "reads-overflow"))
        say("ranking nodes: float16 drift")
        drift = per_node_sensitivity(self.base, verified, self.feeds)
        groups = [[name] for name in self._risks]
        groups += [[d.node] for d in drift if d.added > 0 and d.node]
        out, seen = [], set()
        for group in groups:
            name = group[0]
            if name not in seen and name not in self.fp32_nodes:
                seen.add(name)
                out.append(group)
        return out


class _Int8:
    """Builds INT8 candidates from one prepared, calibrated model; ranks nodes to exclude."""

    def __init__(
        self,
        base: ir.Model,
        step: PlanStep,
        data: RunData,
        feeds: list[dict[str, np.ndarray]],
        say: Say,
    ):
        from onnxfit.passes.int8 import prepare_for_quantization

        self.step, self.data, self.feeds = step, data, feeds
        say("preparing for INT8 (shape inference, opset >= 13)")
        self.prepared = prepare_for_quantization(base)
        self.ranges: Any = None
        self.calibration_stats: dict[str, Any] = {}
        self.urgent = 0
        self._say = say

    def build(self, kept: Sequence[str]) -> tuple[ir.Model, PassReport]:
        model = io.clone(self.prepared)
        extra: dict[str, Any] = {"prepare": False, "nodes_to_exclude": list(kept)}
        if self.step.name == "int8":
            if self.ranges is None:
                self._say(f"calibrating INT8 ranges on {self.data.calibration.samples} samples")
                extra["calibration"] = self.data.calibration
            else:
                extra["ranges"] = self.ranges
        p = make_step_pass(self.step, **extra)
        p(model)
        report = p.report()
        if self.step.name == "int8":
            if self.ranges is None:
                self.ranges = p.ranges  # type: ignore[attr-defined]
                self.calibration_stats = {
                    k: report.stats[k]
                    for k in ("calibration", "calibration_skipped")
                    if k in report.stats
                }
            report.stats.update(self.calibration_stats)
        return model, report

    emulated = False

    def verified(self, candidate: ir.Model) -> ir.Model:
        return candidate

    def rank(self, candidate: ir.Model, say: Say) -> list[list[str]]:
        say("ranking nodes: per-node INT8 sensitivity")
        drifts = per_node_sensitivity(self.prepared, candidate, self.feeds)
        return [list(d.nodes) for d in drifts if d.added > 0 and d.nodes]


def _grow(kept: list[str], ranked: list[list[str]], urgent: int) -> list[str]:
    """``kept`` plus the next groups of ``ranked``: at least double, and all ``urgent`` ones."""
    want = max(len(kept), 1, urgent if not kept else 0)
    out = list(kept)
    added = 0
    for group in ranked:
        new = [n for n in group if n not in out]
        if not new:
            continue
        out += new
        added += 1
        if added >= want:
            break
    return out


def run_lossy(
    *,
    base: ir.Model,
    gate_ref: ir.Model,
    gate_ref_name: str,
    step: PlanStep | None,
    suffix: Sequence[PlanStep],
    data: RunData,
    options: OptimizeOptions,
    say: Say,
) -> Outcome:
    """Run ``step`` (+ ``suffix``) on copies of ``base`` until the budget holds (module doc)."""
    feeds = data.verify_feeds(base, limit=RANKING_FEEDS)
    all_feeds = data.verify_feeds(base)
    strategy: _Fp16 | _Int8 | None = None
    if step is not None and step.name == "fp16":
        strategy = _Fp16(base, step, feeds)
    elif step is not None:
        strategy = _Int8(base, step, data, feeds, say)
    attempts: list[Attempt] = []
    kept: list[str] = []
    rounds = options.max_rounds if strategy is not None else 0
    for rnd in range(rounds + 1):
        reports: list[PassReport] = []
        if strategy is not None:
            candidate, report = strategy.build(kept)
            reports.append(report)
        else:
            candidate = io.clone(base)
        for extra in suffix:
            p = make_step_pass(extra)
            p(candidate)
            reports.append(p.report())
        say(f"verifying (round {rnd})" if rnd else "verifying")
        checked = strategy.verified(candidate) if strategy is not None else candidate
        result = compare_models(
            gate_ref,
            checked,
            data.verify_inputs,
            labels=data.labels,
            synthetic=data.synthetic,
        )
        emulated = strategy is not None and strategy.emulated
        f1 = None
        if result.task == "detect" and data.labels is None and not data.synthetic:
            from onnxfit.optimizer.detections import detection_agreement

            assert result.agreement_output is not None
            f1 = detection_agreement(gate_ref, checked, all_feeds, result.agreement_output)
        gate = check(
            result,
            detections=f1,
            max_drop=options.max_accuracy_drop,
            cosine_floor=options.cosine_floor,
            reference=gate_ref_name
            + (" model, float16 storage emulated" if emulated else " model"),
        )
        attempts.append(Attempt(rnd, list(kept), gate))
        logger.info("round %d: %d nodes kept, %s", rnd, len(kept), gate.describe())
        if gate.passed:
            return Outcome(candidate, reports, result, gate, attempts, kept, emulated)
        if strategy is None or rnd == rounds:
            break
        grown = _grow(kept, strategy.rank(checked, say), strategy.urgent)
        if len(grown) == len(kept):
            logger.info("nothing left to keep in higher precision")
            break
        kept = grown
    raise _failure(attempts, step)


def _failure(attempts: list[Attempt], step: PlanStep | None) -> VerificationError:
    last = attempts[-1].gate
    what = step.name if step is not None else "the optimized model"
    higher = {"fp16": "float32", "int8": "float"}.get(step.name if step else "", "float")
    rounds = len(attempts) - 1
    if step is None:
        msg = f"{what} fails verification: {last.describe()}; nothing written"
    else:
        msg = (
            f"{what} could not be kept within the budget: {last.describe()} after {rounds} "
            f"back-off round(s) with {len(attempts[-1].kept)} node(s) kept in {higher}; "
            "nothing written"
        )
    hint = "raise --max-accuracy-drop"
    if last.metric != "accuracy_drop":
        hint += ", give --eval DIR (images + labels.tsv) to measure the real accuracy drop"
    if step is not None:
        hint += ", or choose another --precision"
    return VerificationError(msg, hint=hint)
