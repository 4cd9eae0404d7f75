"""Pruning inside ``onnxfit optimize``: the requested ratios first, per-layer ratios when they
break the accuracy budget.

:func:`run_budgeted` runs the plan's ``prune-channels`` / ``prune`` steps on the float model
(after cleanup, dequantize, BN folding; before the precision step):

1. as requested (``--prune-channels R`` with up to 16 calibration images, when they are real,
   for its data-driven choice and mean compensation; ``--prune S``), then judged on the
   verification data against the model before pruning — top-1 accuracy drop with labels
   (``--eval``), else top-1 agreement for a classifier on real inputs, else
   ``100 x (1 - worst cosine)`` — the measures of :mod:`onnxfit.optimizer.gate`, in points;
2. if that loses more than the pruning budget (``--max-accuracy-drop``, half of it when a lossy
   precision step follows, so that FP16 / INT8 keep room), the **budget mode** of
   :mod:`onnxfit.pruning`: each layer alone is pruned at 1/4, 1/2, 3/4 and all of the
   requested ratio on up to 128 verification samples, and per-layer ratios are chosen so that
   the whole set stays within the budget (channels first, with half of it when both kinds are
   asked for; then unstructured with what is left).

Pruning is one-shot: nothing is fine-tuned. Each step's report carries the scan as text lines
(``scan``) for the optimize report.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxfit.optimizer.gate import Judge
from onnxfit.passes.base import PassReport
from onnxfit.pruning import budget as pruning

if TYPE_CHECKING:
    from onnxfit.optimizer.data import RunData
    from onnxfit.optimizer.options import OptimizeOptions
    from onnxfit.optimizer.plan import PlanStep

logger = logging.getLogger(__name__)

PRUNE_STEPS = frozenset({"prune-channels", "prune"})
SCAN_SAMPLES = 128
CALIB_FEEDS = 16
#: share of --max-accuracy-drop pruning may use when a lossy precision step follows
SHARE_BEFORE_PRECISION = 0.5
Feeds = list[dict[str, np.ndarray]]


def _pass_options(step: PlanStep, feeds: Feeds) -> dict[str, Any]:
    opts = dict(step.options)
    if step.name == "prune-channels" and feeds:
        opts.setdefault("feeds", feeds)
    return opts


def _run_steps(model: ir.Model, steps: Sequence[PlanStep], feeds: Feeds) -> list[PassReport]:
    from onnxfit.optimizer.plan import make_step_pass

    reports = []
    for step in steps:
        p = make_step_pass(step, **_pass_options(step, feeds))
        p(model)
        reports.append(p.report())
    return reports


def scan_lines(result: pruning.BudgetResult) -> list[str]:
    """The scan as text lines: ``layer (size): drop@ratio ... -> chosen``."""
    lines = []
    for row in result.scan.rows:
        drops = row.drops(result.scan.baseline)
        cells = " ".join(
            f"{r:g}:{'-' if d is None else f'{d:.2f}'}"
            for r, d in zip(result.scan.ratios, drops, strict=True)
        )
        lines.append(f"{row.layer} ({row.size}): {cells} -> {result.ratios.get(row.layer, 0):g}")
    return lines


def run_budgeted(
    model: ir.Model,
    steps: Sequence[PlanStep],
    data: RunData,
    options: OptimizeOptions,
    *,
    lossy_follows: bool,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[ir.Model, list[PassReport]]:
    """Prune ``model`` (not changed) by ``steps`` within the budget; the pruned copy + reports."""
    from onnxfit.optimizer.plan import PlanStep as Step

    # real calibration images drive the channel choice and compensation; noise would mislead
    calib = [] if data.calibration.synthetic else [dict(f) for f in data.calibration.feeds]
    calib = calib[:CALIB_FEEDS]
    share = SHARE_BEFORE_PRECISION if lossy_follows else 1.0
    judge = Judge(
        model, data, budget=options.max_accuracy_drop, cosine_floor=options.cosine_floor,
        reference_name="model before pruning",
    )  # fmt: skip
    measure, score = judge.measure, judge.score
    budget = judge.loss_budget * share
    baseline = judge.reference_score
    say("pruning as requested")
    candidate = pruning.clone(model)
    reports = _run_steps(candidate, steps, calib)
    loss = baseline - score(candidate)
    logger.info("pruning as requested: %s loss %.2f pts (budget %.2f)", measure, loss, budget)
    if loss <= budget + 1e-9:
        for r in reports:
            r.stats.update(budget="requested ratios hold", loss_pts=round(loss, 3),
                           measure=measure)  # fmt: skip
        return candidate, reports
    scan_score = Judge(
        model, data, budget=options.max_accuracy_drop, cosine_floor=options.cosine_floor,
        samples=SCAN_SAMPLES,
    ).score  # fmt: skip
    current, reports, left = model, [], budget
    for i, step in enumerate(steps):
        kind: pruning.Kind = "channels" if step.name == "prune-channels" else "unstructured"
        key = "ratio" if kind == "channels" else "sparsity"
        requested = float(step.options.get(key) or 0.0)
        share = left if i == len(steps) - 1 else left / 2
        say(f"pruning budget: scanning {kind} sensitivity")
        opts = {k: v for k, v in _pass_options(step, calib).items()
                if k not in (key, "scope")}  # fmt: skip
        result = pruning.fit_budget(
            current,
            pruning.Metric(measure, scan_score),
            kind=kind,
            max_drop=share,
            ratios=[f * requested for f in pruning.GRID_FRACTIONS],
            check=pruning.Metric(measure, score),
            **opts,
        )
        pruned = pruning.clone(current)
        step_opts = {**step.options, key: None, "ratios": result.ratios}
        [report] = _run_steps(pruned, [Step(step.name, step_opts, step.why)], calib)
        report.stats.update(
            budget=f"per-layer ratios (requested {requested:g} lost {loss:.2f} > {budget:.2f} pts)",
            loss_pts=round(result.drop, 3),
            measure=measure,
            removed_share=round(result.removed, 4),
            scan=scan_lines(result),
        )
        reports.append(report)
        left = max(0.0, left - max(result.drop, 0.0))
        current = pruned
    return current, reports
