"""The verified back-off: run the lossy step, judge it, keep the most sensitive nodes in higher
precision — as few as the budget allows.

Round 0 runs the plan's lossy step (``fp16`` or ``int8``) on the whole model and judges it
(:class:`onnxfit.optimizer.gate.Judge`). If it fails:

1. **rank once**: the nodes are ranked by measured sensitivity on the round-0 candidate —
   ``fp16``: first every node whose float32 activations leave the float16 range
   (:func:`onnxfit.passes.activations.fp16_risk_nodes`; overflowing ones must stay float32),
   then by the float16 drift each adds (:func:`onnxfit.verify.per_node_sensitivity` on the
   float16-storage emulation, :func:`onnxfit.optimizer.emulate.emulate_fp16`); ``int8``: by
   measured sensitivity (:mod:`onnxfit.optimizer.int8_rank`: each compute node restored to
   float alone, the gain in distance to the float model measured);
2. **best round first**: the longest prefix allowed (``max_kept_share`` of the lossy step's
   compute nodes) is judged; when even it fails the budget, the search stops there with the
   distance it reached (no rounds wasted);
3. **bisection** on the prefix length between the last failing and the first passing length:
   the smallest prefix of the ranked list that meets the budget (each probe builds a fresh
   candidate: ``Fp16Pass(block_list=...)`` or ``nodes_to_exclude`` of the INT8 pass, ranges
   calibrated once), at most ``max_rounds`` probes after round 0.

:class:`~onnxfit.errors.VerificationError` says how close the best round came.
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
from onnxfit.optimizer.gate import GateResult, Judge
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import PlanStep, make_step_pass
from onnxfit.optimizer.stats import COMPUTE_OPS
from onnxfit.passes.base import PassReport
from onnxfit.verify import per_node_sensitivity

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
    groups: int = 0  # prefix length of the ranked list

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "groups": self.groups,
            "kept": list(self.kept),
            "gate": self.gate.to_dict(),
        }


@dataclass
class Outcome:
    """The accepted model, the reports of the steps run on it, and how it was judged."""

    model: ir.Model
    reports: list[PassReport]
    gate: GateResult
    attempts: list[Attempt] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    emulated: bool = False
    ranking: list[dict[str, Any]] = field(default_factory=list)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)


class _Fp16:
    """Builds fp16 candidates with a block list; judges them through float16 emulation;
    ranks the nodes to block."""

    emulated = True
    what = "float32"

    def __init__(self, base: ir.Model, step: PlanStep, feeds: list[dict[str, np.ndarray]]):
        self.base, self.step, self.feeds = base, step, feeds
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

    def rank(self, verified: ir.Model, say: Say) -> tuple[list[list[str]], list[Any]]:
        from onnxfit.passes.activations import activation_stats, fp16_risk_nodes

        say("ranking nodes: float32 activation ranges")
        risks = fp16_risk_nodes(self.base, activation_stats(self.base, self.feeds))
        self.urgent = sum(1 for r in risks if r.reason in ("overflow", "reads-overflow"))
        say("ranking nodes: float16 drift")
        drift = per_node_sensitivity(self.base, verified, self.feeds)
        groups = [[r.node] for r in risks] + [[d.node] for d in drift if d.added > 0 and d.node]
        out, seen = [], set()
        for group in groups:
            if group[0] not in seen and group[0] not in self.fp32_nodes:
                seen.add(group[0])
                out.append(group)
        return out, drift

    def model(self) -> ir.Model:
        return self.base


class _Int8:
    """Builds INT8 candidates from one prepared, calibrated model; ranks nodes to exclude."""

    emulated = False
    what = "float"

    def __init__(
        self,
        base: ir.Model,
        step: PlanStep,
        data: RunData,
        feeds: list[dict[str, np.ndarray]],
        say: Say,
    ):
        from onnxfit.optimizer.int8_rank import RANKING_SAMPLES
        from onnxfit.passes.int8 import prepare_for_quantization

        self.step, self.data, self.feeds = step, data, feeds
        self.rank_feeds = data.verify_feeds(base, limit=RANKING_SAMPLES)
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

    def verified(self, candidate: ir.Model) -> ir.Model:
        return candidate

    def rank(self, candidate: ir.Model, say: Say) -> tuple[list[list[str]], list[Any]]:
        from onnxfit.optimizer.int8_rank import measured_ranking, ranked_groups

        yolox = self.data.info is not None and self.data.info.decoder == "yolox"
        ranking = measured_ranking(candidate, self.prepared, self.rank_feeds, say=say, yolox=yolox)
        return ranked_groups(ranking), ranking

    def model(self) -> ir.Model:
        return self.prepared


def kept_nodes(ranked: Sequence[Sequence[str]], groups: int) -> list[str]:
    """The union of the first ``groups`` groups of ``ranked``, in order."""
    out: list[str] = []
    for group in ranked[:groups]:
        out += [n for n in group if n not in out]
    return out


def longest_prefix(
    ranked: Sequence[Sequence[str]], cap: int, counted: Callable[[Sequence[str]], int]
) -> int:
    """The most groups whose union holds at most ``cap`` counted nodes (0 when even the first
    group holds more)."""
    n = 0
    for i in range(1, len(ranked) + 1):
        if counted(kept_nodes(ranked, i)) > cap:
            break
        n = i
    return n


def _counter(model: ir.Model) -> tuple[int, Callable[[Sequence[str]], int]]:
    """(total, count): the compute nodes of ``model`` (all its nodes when it has none) and a
    function counting them among names."""
    compute = {n.name for n in model.graph if n.op_type in COMPUTE_OPS}
    pool = compute or {n.name for n in model.graph}
    return len(pool), lambda names: sum(1 for n in names if n in pool)


def run_lossy(
    *,
    base: ir.Model,
    judge: Judge,
    step: PlanStep | None,
    suffix: Sequence[PlanStep],
    data: RunData,
    options: OptimizeOptions,
    say: Say,
) -> Outcome:
    """Run ``step`` (+ ``suffix``) on copies of ``base`` and search the smallest kept set that
    meets the budget (module docstring)."""
    feeds = data.verify_feeds(base, limit=RANKING_FEEDS)
    strategy: _Fp16 | _Int8 | None = None
    if step is not None and step.name == "fp16":
        strategy = _Fp16(base, step, feeds)
    elif step is not None:
        strategy = _Int8(base, step, data, feeds, say)
    attempts: list[Attempt] = []
    built: dict[int, tuple[ir.Model, list[PassReport], GateResult]] = {}
    ranked: list[list[str]] = []

    def probe(groups: int) -> GateResult:
        kept = kept_nodes(ranked, groups)
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
        rnd = len(attempts)
        say(f"judging (round {rnd}, {len(kept)} node(s) kept)" if rnd else "judging")
        checked = strategy.verified(candidate) if strategy is not None else candidate
        emulated = strategy is not None and strategy.emulated
        gate = judge.judge(
            checked,
            reference=judge.reference_name + (", float16 storage emulated" if emulated else ""),
        )
        attempts.append(Attempt(rnd, kept, gate, groups))
        logger.info("round %d: %d nodes kept, %s", rnd, len(kept), gate.describe())
        built[groups] = (candidate, reports, gate)
        if groups == 0 and strategy is not None and not gate.passed:
            built[-1] = (checked, [], gate)  # the round-0 model the ranking reads
        return gate

    def outcome(groups: int) -> Outcome:
        candidate, reports, gate = built[groups]
        return Outcome(
            candidate,
            reports,
            gate,
            attempts,
            kept_nodes(ranked, groups),
            strategy is not None and strategy.emulated,
            ranking,
        )

    ranking: list[dict[str, Any]] = []
    if probe(0).passed:
        return outcome(0)
    if strategy is None or options.max_rounds == 0:
        raise _failure(attempts, step, stopped=False)
    ranked, drifts = strategy.rank(built[-1][0], say)
    ranking = [d.to_dict() for d in drifts[:50]]
    total, counted = _counter(strategy.model())
    cap = max(1, int(options.max_kept_share * total))
    cap = max(cap, counted(kept_nodes(ranked, strategy.urgent)))  # overflow must stay float32
    hi = longest_prefix(ranked, cap, counted)
    lo = min(max(strategy.urgent - 1, 0), hi - 1) if hi else 0
    if hi == 0:
        first = ", ".join(ranked[0]) if ranked else "none"
        what = step.name if step is not None else "the model"
        raise VerificationError(
            f"{what} fails the budget ({attempts[0].gate.describe()}) and the most "
            f"sensitive node group ({first}) holds more compute nodes than --max-kept-share "
            f"allows ({cap}); nothing written",
            hint="raise --max-kept-share or --max-accuracy-drop, or choose another --precision",
        )
    if not probe(hi).passed:
        raise _failure(attempts, step, stopped=True, cap=cap)
    while hi - lo > 1 and len(attempts) <= options.max_rounds:
        mid = (lo + hi) // 2
        if probe(mid).passed:
            hi = mid
        else:
            lo = mid
    return outcome(hi)


def _failure(
    attempts: list[Attempt], step: PlanStep | None, *, stopped: bool, cap: int | None = None
) -> VerificationError:
    last = attempts[-1]
    what = step.name if step is not None else "the optimized model"
    higher = {"fp16": "float32"}.get(step.name if step else "", "float")
    if step is None:
        msg = f"{what} fails verification: {last.gate.describe()}; nothing written"
    elif stopped:
        msg = (
            f"{what} cannot meet the budget: even the best round, {len(last.kept)} node(s) "
            f"kept in {higher}"
            + (f" (the most --max-kept-share allows: {cap} compute node(s))" if cap else "")
            + f", gives {last.gate.describe()}; stopped after {len(attempts)} round(s); "
            "nothing written"
        )
    else:
        msg = f"{what} does not meet the budget: {last.gate.describe()}; nothing written"
    hint = "raise --max-accuracy-drop"
    if last.gate.measure not in ("top1_drop", "map50_drop"):
        hint += ", give --eval DIR (labelled images) to measure the real accuracy drop"
    if step is not None:
        hint += ", allow more float nodes (--max-kept-share), or choose another --precision"
    return VerificationError(msg, hint=hint)
