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
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir

from onnxfit import io
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


def _all_outputs(model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    from onnxfit.runtime.session import Session

    with Session(model, target="cpu") as sess:
        names = [o.name for o in sess.outputs]
        runs = [sess.run(dict(f)) for f in feeds]
    return [np.concatenate([np.asarray(r[n]) for r in runs]) for n in names]


def _outputs(model: ir.Model, feeds: Sequence[Mapping[str, np.ndarray]]) -> np.ndarray:
    return _all_outputs(model, feeds)[0]


def _limit(feeds: Feeds, samples: int) -> Feeds:
    out, n = [], 0
    for f in feeds:
        if n >= samples:
            break
        out.append(f)
        n += next(iter(f.values())).shape[0]
    return out


def _judge(
    reference: ir.Model, feeds: Feeds, labels: np.ndarray | None, synthetic: bool
) -> tuple[str, Callable[[ir.Model], float]]:
    """(measure, score function in points, higher is better) on ``feeds``."""
    refs = _all_outputs(reference, feeds)
    ref = refs[0]
    classifier = ref.ndim >= 2 and ref.shape[1] > 1 and all(d == 1 for d in ref.shape[2:])
    if labels is not None and classifier:
        lab = np.asarray(labels)[: ref.shape[0]]
        return (
            "top1",
            lambda m: (
                100.0 * float(np.mean(_outputs(m, feeds).reshape(len(lab), -1).argmax(1) == lab))
            ),
        )
    if classifier and not synthetic:
        top = ref.reshape(ref.shape[0], -1).argmax(1)
        return (
            "agreement",
            lambda m: (
                100.0 * float(np.mean(_outputs(m, feeds).reshape(len(top), -1).argmax(1) == top))
            ),
        )

    def cosine(m: ir.Model) -> float:  # worst sample of the worst output
        from onnxfit.verify import cosine_per_sample

        outs = _all_outputs(m, feeds)
        return 100.0 * min(
            float(cosine_per_sample(r, o).min()) for r, o in zip(refs, outs, strict=True)
        )

    return "cosine", cosine


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
    feeds = data.verify_feeds(model)
    budget = options.max_accuracy_drop * (SHARE_BEFORE_PRECISION if lossy_follows else 1.0)
    measure, score = _judge(model, feeds, data.labels, data.synthetic)
    if measure == "cosine":
        budget = 100.0 * (1.0 - options.cosine_floor) * (0.5 if lossy_follows else 1.0)
    baseline = score(model)
    say("pruning as requested")
    candidate = io.clone(model)
    reports = _run_steps(candidate, steps, calib)
    loss = baseline - score(candidate)
    logger.info("pruning as requested: %s loss %.2f pts (budget %.2f)", measure, loss, budget)
    if loss <= budget + 1e-9:
        for r in reports:
            r.stats.update(budget="requested ratios hold", loss_pts=round(loss, 3),
                           measure=measure)  # fmt: skip
        return candidate, reports
    scan_feeds = _limit(feeds, SCAN_SAMPLES)
    scan_labels = data.labels[:SCAN_SAMPLES] if data.labels is not None else None
    _, scan_score = _judge(model, scan_feeds, scan_labels, data.synthetic)
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
        pruned = io.clone(current)
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
