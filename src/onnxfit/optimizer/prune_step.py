"""Pruning inside ``onnxfit optimize``: what was asked is what is delivered, or it says why not.

:func:`run_budgeted` runs the plan's ``prune-channels`` / ``prune`` steps on the float model
(after cleanup, dequantize, BN folding; before the precision step), judged by the optimizer's
gate (:class:`onnxfit.optimizer.gate.Judge`: the accuracy drop with labels, else a distance
between the pruned and the unpruned model's outputs), in points:

* **exact** (``--prune S``, ``--prune-channels R``): pruned at exactly the requested ratio
  (``--prune-channels`` with up to 16 calibration images, when they are real, for its
  data-driven choice and mean compensation). When that alone loses more than
  ``--max-accuracy-drop``, it is **refused** (:class:`~onnxfit.errors.VerificationError`) with
  the accuracy it would cost; nothing is changed silently.
* **auto** (``--prune auto[:MAX]``, ``--prune-channels auto[:MAX]``): the budget mode of
  :mod:`onnxfit.pruning.budget` — each layer alone is pruned at 1/4, 1/2, 3/4 and all of MAX on
  up to 128 verification samples, and per-layer ratios are chosen so that the whole set stays
  within the pruning's share of the budget: all of it, or half when a lossy precision step
  (FP16 / INT8) follows, so that it keeps room (channels take half of that share when both
  kinds are asked for). The share is written in the report.

Each step's report carries ``requested`` (the ratio, or ``auto (max R)``), ``achieved`` (the
share actually removed: of the eligible weights for ``prune``, of all Conv output channels for
``prune-channels``), the measure and the loss, and for auto the scan as text lines (``scan``).
Pruning is one-shot: nothing is fine-tuned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError, VerificationError
from onnxfit.optimizer.gate import Judge
from onnxfit.passes.base import PassReport
from onnxfit.pruning import budget as pruning
from onnxfit.verify.runner import first_samples

if TYPE_CHECKING:
    from onnxfit.optimizer.data import RunData
    from onnxfit.optimizer.options import OptimizeOptions
    from onnxfit.optimizer.plan import PlanStep

logger = logging.getLogger(__name__)

PRUNE_STEPS = frozenset({"prune-channels", "prune"})
SCAN_SAMPLES = 128
CALIB_FEEDS = 16
#: calibration samples layer-wise reconstruction uses (at most)
RECONSTRUCT_SAMPLES = 128
#: share of --max-accuracy-drop pruning may use in auto mode when a lossy precision step follows
SHARE_BEFORE_PRECISION = 0.5
Feeds = list[dict[str, np.ndarray]]
#: what each kind of pruning saves, written next to every result
SAVES = {
    "prune": "file size only (with sparse storage): ONNX Runtime and DirectML densify the "
    "zeros, so memory and time stay those of the dense model",
    "prune-channels": "memory and time: the layers are smaller dense layers",
}


def _kind(step: PlanStep) -> pruning.Kind:
    return "channels" if step.name == "prune-channels" else "unstructured"


def _ratio_key(step: PlanStep) -> str:
    return "ratio" if step.name == "prune-channels" else "sparsity"


def _pass_options(step: PlanStep, feeds: Feeds) -> dict[str, Any]:
    """The pass options of ``step``: the method resolved (``auto``: reconstruct with real
    calibration feeds, else magnitude) and the feeds the method uses."""
    opts = {k: v for k, v in step.options.items() if k != "auto"}
    method = opts.get("method", "magnitude")
    if method == "reconstruct" and not feeds:
        flag = "--prune-channels-method" if step.name == "prune-channels" else "--prune-method"
        raise InputError(
            f"{flag} reconstruct needs real calibration images",
            hint=f"give --calibrate DIR or --eval DIR, or use {flag} magnitude",
        )
    if method == "auto":
        opts["method"] = "reconstruct" if feeds else "magnitude"
    reconstruct = opts.get("method") == "reconstruct"
    if feeds and (reconstruct or step.name == "prune-channels"):
        opts.setdefault(
            "feeds", first_samples(feeds, RECONSTRUCT_SAMPLES if reconstruct else CALIB_FEEDS)
        )
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


def requested_text(step: PlanStep) -> str:
    """``0.7`` or ``auto (max 0.9)``."""
    ratio = float(step.options.get(_ratio_key(step)) or 0.0)
    return f"auto (max {ratio:g})" if step.options.get("auto") else f"{ratio:g}"


def _record(report: PassReport, step: PlanStep, **extra: Any) -> None:
    achieved = pruning.removed_share(_kind(step), report.stats)
    report.stats.update(
        requested=requested_text(step),
        achieved=round(achieved, 4),
        of="eligible weights" if step.name == "prune" else "Conv output channels",
        saves=SAVES[step.name],
        **extra,
    )


def run_budgeted(
    model: ir.Model,
    steps: Sequence[PlanStep],
    data: RunData,
    options: OptimizeOptions,
    *,
    lossy_follows: bool,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[ir.Model, list[PassReport]]:
    """Prune ``model`` (not changed) by ``steps`` (module docstring): the pruned copy and the
    reports. Raises :class:`VerificationError` when an exact request breaks the budget."""
    # real calibration images drive the channel choice and compensation; noise would mislead
    calib = [] if data.calibration.synthetic else [dict(f) for f in data.calibration.feeds]
    judge = Judge(
        model, data, budget=options.max_accuracy_drop, cosine_floor=options.cosine_floor,
        reference_name="model before pruning",
    )  # fmt: skip
    scan_judge: Judge | None = None
    share = SHARE_BEFORE_PRECISION if lossy_follows else 1.0
    current, reports = model, []
    auto_steps = [s for s in steps if s.options.get("auto")]
    left = judge.loss_budget * share
    for step in steps:
        if not step.options.get("auto"):
            say(f"{step.name}: exactly {requested_text(step)} as requested")
            candidate = io.clone(current)
            [report] = _run_steps(candidate, [step], calib)
            loss = judge.reference_score - judge.score(candidate)
            _record(report, step, mode="exact", measure=judge.measure, loss_pts=round(loss, 3))
            _check_delivered(step, report)
            if loss > judge.loss_budget + 1e-9:
                raise _refused(step, report, loss, judge)
            current = candidate
            reports.append(report)
            continue
        if scan_judge is None:
            scan_judge = Judge(
                model, data, budget=options.max_accuracy_drop, cosine_floor=options.cosine_floor,
                samples=SCAN_SAMPLES, reference_name="model before pruning",
            )  # fmt: skip
        this = left if step is auto_steps[-1] else left / 2
        current, report = _auto(current, step, judge, scan_judge, this, calib, say)
        report.stats.update(budget_share=f"{this:.3g} of {judge.loss_budget:g} pt" + (
            " (half: a precision step follows)" if lossy_follows else ""))  # fmt: skip
        spent = float(report.stats.get("loss_pts", 0.0))  # type: ignore[arg-type]
        left = max(0.0, left - max(spent, 0.0))
        reports.append(report)
    return current, reports


def _auto(
    model: ir.Model,
    step: PlanStep,
    judge: Judge,
    scan_judge: Judge,
    budget: float,
    calib: Feeds,
    say: Callable[[str], None],
) -> tuple[ir.Model, PassReport]:
    """The budget mode for one step: per-layer ratios up to the step's maximum."""
    from onnxfit.optimizer.plan import PlanStep as Step

    kind, key = _kind(step), _ratio_key(step)
    maximum = float(step.options.get(key) or 0.0)
    say(f"{step.name}: scanning per-layer sensitivity (auto, max {maximum:g})")
    # the scan prunes by magnitude; the chosen ratios are then applied with the step's method
    scan_only = (key, "scope", "method", "feeds")
    opts = {k: v for k, v in _pass_options(step, calib).items() if k not in scan_only}
    if step.name == "prune-channels" and calib:
        opts["feeds"] = first_samples(calib, CALIB_FEEDS)
    result = pruning.fit_budget(
        model,
        pruning.Metric(judge.measure, scan_judge.score),
        kind=kind,
        max_drop=budget,
        ratios=[f * maximum for f in pruning.GRID_FRACTIONS],
        check=pruning.Metric(judge.measure, judge.score),
        **opts,
    )
    pruned = io.clone(model)
    step_opts = {**step.options, key: None, "ratios": result.ratios}
    [report] = _run_steps(pruned, [Step(step.name, step_opts, step.why)], calib)
    _record(
        report,
        step,
        mode="auto",
        measure=judge.measure,
        loss_pts=round(result.drop, 3),
        layers_pruned=len(result.ratios),
        scan=scan_lines(result),
    )
    return pruned, report


#: An exact request is delivered when the achieved share is within this of the requested one
#: (channel counts move in steps of --channel-multiple per layer, coupled layers together).
DELIVERY_TOLERANCE = 0.05


def _check_delivered(step: PlanStep, report: PassReport) -> None:
    """Refuse (VerificationError) an exact request the pass could not deliver (e.g. layers too
    small for the channel rounding), rather than write a model that is not what was asked."""
    wanted = float(step.options.get(_ratio_key(step)) or 0.0)
    achieved = float(report.stats.get("achieved", 0.0))  # type: ignore[arg-type]
    if abs(achieved - wanted) <= DELIVERY_TOLERANCE:
        return
    flag = "--prune-channels" if step.name == "prune-channels" else "--prune"
    multiple = step.options.get("multiple_of")
    why = f" (kept counts rounded to multiples of {multiple})" if multiple else ""
    raise VerificationError(
        f"{flag} {wanted:g}: only {achieved:.1%} could be removed{why}, not {wanted:.0%}; "
        "refused, nothing written",
        hint="--channel-multiple 1 for exact channel counts, or another ratio"
        if multiple
        else "another ratio",
    )


def _refused(step: PlanStep, report: PassReport, loss: float, judge: Judge) -> VerificationError:
    flag = "--prune-channels" if step.name == "prune-channels" else "--prune"
    ratio = requested_text(step)
    return VerificationError(
        f"{flag} {ratio} costs {loss:.2f} pt ({judge.measure}, vs the model before pruning) > "
        f"the budget of {judge.loss_budget:.2f} pt; refused, nothing written",
        hint=f"use {flag} auto:{ratio} to let the budget choose per-layer ratios, a smaller "
        f"ratio, or raise --max-accuracy-drop",
    )
