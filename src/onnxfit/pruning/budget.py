"""Pruning under an accuracy budget: a per-layer sensitivity scan, then per-layer ratios.

Pruning here is **one-shot**: weights or channels are removed by magnitude and nothing is
retrained or fine-tuned afterwards, so the accuracy a ratio costs is what removal alone costs.
The budget mode therefore measures instead of guessing:

1. :func:`sensitivity_scan` prunes each layer *alone* (unstructured: one weight tensor; channels:
   one coupling group of :mod:`onnxfit.pruning.channels`) at each ratio of a grid and
   evaluates the model with a :class:`Metric` (top-1 accuracy on labelled images, mAP@0.5 on a
   detection set, or top-1 agreement with the original model), giving a table of drops;
2. :func:`fit_budget` turns the table into per-layer ratios: for a tolerance ``t``, each layer
   gets the largest ratio whose drop — and that of every smaller ratio — is ``<= t``; the
   combination is evaluated, and ``t`` goes from ``2 x budget`` down (x1, /2, /4, /8, 0) until
   the combined drop is within ``max_drop``. The first combination that holds is kept (the
   most aggressive one tried). Small errors compound (on YOLOX-Nano, layers each harmless
   alone broke the model together), so when every tolerance fails, a binary search finds the
   longest prefix of the least sensitive layers that holds, each at the smallest scanned
   ratio; when not even one layer holds, nothing is pruned.

Every figure is in points (percent): a drop is ``baseline - score``. Evaluating on a subset
during the scan and on the full set for the final check is the caller's choice (two metrics).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.pruning.metrics import Metric, agreement_metric, map50_metric, top1_metric

__all__ = [
    "BudgetAttempt",
    "BudgetResult",
    "Metric",
    "ScanRow",
    "SensitivityScan",
    "agreement_metric",
    "fit_budget",
    "layers",
    "map50_metric",
    "prune_copy",
    "ratios_for",
    "sensitivity_scan",
    "top1_metric",
]

logger = logging.getLogger(__name__)

Kind = Literal["unstructured", "channels"]
ProgressFn = Callable[[int, int, str], None]
#: default grids: fractions of the requested maximum ratio
GRID_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


# ---------------------------------------------------------------------------- layers / apply


def layers(model: ir.Model, kind: Kind, **options: Any) -> list[tuple[str, int]]:
    """(label, size) of every prunable layer: weight tensors (size: weights) for unstructured,
    coupling groups with removable channels (size: channel sets) for channels."""
    if kind == "unstructured":
        from onnxfit.pruning.unstructured import find_weights

        wanted = ("exclude_first", "exclude_last", "exclude")
        refs, _ = find_weights(model, **{k: v for k, v in options.items() if k in wanted})
        return [(r.name, r.size) for r in refs]
    if kind == "channels":
        from onnxfit.pruning.channels import plan_channels

        keys = ("norm", "exclude")
        plan = plan_channels(model, ratio=0.0, **{k: v for k, v in options.items() if k in keys})
        return [(g.label, int(g.sets.size)) for g in plan.groups if g.sets.size]
    raise InputError(f"unknown pruning kind {kind!r}", hint="use 'unstructured' or 'channels'")


def prune_copy(
    model: ir.Model,
    kind: Kind,
    *,
    ratio: float | None = None,
    ratios: Mapping[str, float] | None = None,
    stats: dict[str, Any] | None = None,
    **options: Any,
) -> ir.Model:
    """A pruned copy of ``model``: one ``ratio`` for all, or ``ratios`` per layer label
    (``stats``, when given, receives the pass's stats)."""
    copy = io.clone(model)
    p: Any
    if kind == "unstructured":
        from onnxfit.pruning.unstructured import PrunePass

        p = PrunePass(sparsity=ratio, ratios=ratios, **options)
    else:
        from onnxfit.pruning.channels import PruneChannelsPass

        p = PruneChannelsPass(ratio=ratio, ratios=ratios, **options)
    p(copy)
    if stats is not None:
        stats.update(p.stats)
    return copy


def removed_share(kind: Kind, stats: Mapping[str, Any]) -> float:
    """What a pass run removed, from its stats: the share of the eligible weights set to zero
    (unstructured) or of all Conv output channels removed (channels)."""
    if kind == "unstructured":
        total = stats.get("weights_eligible") or 0
        return float(stats.get("weights_pruned", 0)) / total if total else 0.0
    before = stats.get("channels_before") or 0
    return 1.0 - float(stats.get("channels_after", before)) / before if before else 0.0


# ---------------------------------------------------------------------------- scan


@dataclass
class ScanRow:
    """One layer: its size and the metric with it alone pruned at each grid ratio (None:
    skipped after an earlier ratio already cost more than the scan's stop drop)."""

    layer: str
    size: int
    scores: list[float | None] = field(default_factory=list)

    def drops(self, baseline: float) -> list[float | None]:
        return [None if s is None else baseline - s for s in self.scores]

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "size": self.size, "scores": list(self.scores)}


@dataclass
class SensitivityScan:
    """The metric of the model with each layer alone pruned at each ratio of ``ratios``."""

    kind: Kind
    metric: str
    baseline: float
    ratios: tuple[float, ...]
    rows: list[ScanRow]
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "baseline": self.baseline,
            "ratios": list(self.ratios),
            "evaluations": self.evaluations,
            "rows": [{**r.to_dict(), "drops": r.drops(self.baseline)} for r in self.rows],
        }


def _check_grid(ratios: Sequence[float]) -> tuple[float, ...]:
    grid = tuple(sorted({float(r) for r in ratios}))
    if not grid or grid[0] <= 0 or grid[-1] >= 1:
        raise InputError(
            f"scan ratios must lie in (0, 1), got {list(ratios)}",
            hint="e.g. ratios=(0.25, 0.5, 0.75)",
        )
    return grid


def sensitivity_scan(
    model: ir.Model,
    metric: Metric,
    *,
    kind: Kind,
    ratios: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    only: Sequence[str] | None = None,
    stop_drop: float | None = None,
    baseline: float | None = None,
    on_progress: ProgressFn | None = None,
    **options: Any,
) -> SensitivityScan:
    """Prune each layer alone at each of ``ratios`` and evaluate (see the module docstring).

    ``only`` limits the scan to those layer labels; ``stop_drop`` skips a layer's larger
    ratios once one costs more than that many points; ``options`` go to the pass.
    """
    grid = _check_grid(ratios)
    base = metric.evaluate(model) if baseline is None else baseline
    todo = [(n, s) for n, s in layers(model, kind, **options) if only is None or n in only]
    rows = []
    total, done = len(todo) * len(grid), 0
    for name, size in todo:
        row = ScanRow(name, size)
        stopped = False
        for r in grid:
            if on_progress:
                on_progress(done, total, f"{name} @ {r:g}")
            done += 1
            if stopped:
                row.scores.append(None)
                continue
            score = metric.evaluate(prune_copy(model, kind, ratios={name: r}, **options))
            row.scores.append(score)
            logger.debug("scan: %s at %.2f -> %s %.2f", name, r, metric.name, score)
            stopped = stop_drop is not None and base - score > stop_drop
        rows.append(row)
    if on_progress:
        on_progress(total, total, "scan done")
    logger.info(
        "sensitivity scan: %d layers x %d ratios, baseline %s %.2f",
        len(rows),
        len(grid),
        metric.name,
        base,
    )
    return SensitivityScan(kind, metric.name, base, grid, rows, evaluations=done + 1)


# ---------------------------------------------------------------------------- budget


@dataclass
class BudgetAttempt:
    """One tolerance tried: the per-layer ratios it gives and what they cost together."""

    tolerance: float | None  # None: a prefix of the least sensitive layers (``prefix``)
    ratios: dict[str, float]
    score: float
    drop: float
    accepted: bool
    prefix: int | None = None
    removed: float = 0.0  # share actually removed (see :func:`removed_share`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "tolerance": self.tolerance,
            "prefix": self.prefix,
            "removed": self.removed,
            "layers": len(self.ratios),
            "score": self.score,
            "drop": self.drop,
            "accepted": self.accepted,
        }


@dataclass
class BudgetResult:
    """The per-layer ratios chosen under ``max_drop`` (empty: nothing could be pruned)."""

    kind: Kind
    metric: str
    baseline: float
    max_drop: float
    ratios: dict[str, float]
    score: float
    scan: SensitivityScan
    attempts: list[BudgetAttempt] = field(default_factory=list)

    @property
    def drop(self) -> float:
        return self.baseline - self.score

    @property
    def removed(self) -> float:
        """Share actually removed by the chosen ratios: eligible weights zeroed (unstructured)
        or Conv output channels removed, after rounding to ``multiple_of`` (channels)."""
        return next((a.removed for a in reversed(self.attempts) if a.ratios == self.ratios), 0.0)

    @property
    def pruned_share(self) -> float:
        """Size-weighted mean of the chosen ratios over the scanned layers (before rounding)."""
        sizes = {r.layer: r.size for r in self.scan.rows}
        total = sum(sizes.values())
        return (
            sum(sizes[k] * v for k, v in self.ratios.items() if k in sizes) / total
            if total
            else 0.0
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "metric": self.metric,
            "baseline": self.baseline,
            "max_drop": self.max_drop,
            "score": self.score,
            "drop": self.drop,
            "pruned_share": self.pruned_share,
            "removed": self.removed,
            "ratios": dict(self.ratios),
            "attempts": [a.to_dict() for a in self.attempts],
            "scan": self.scan.to_dict(),
        }


def ratios_for(scan: SensitivityScan, tolerance: float) -> dict[str, float]:
    """Per layer, the largest grid ratio whose drop and every smaller ratio's is <= tolerance."""
    out = {}
    for row in scan.rows:
        best = 0.0
        for r, d in zip(scan.ratios, row.drops(scan.baseline), strict=True):
            if d is None or d > tolerance:
                break
            best = r
        if best > 0:
            out[row.layer] = best
    return out


def fit_budget(
    model: ir.Model,
    metric: Metric,
    *,
    kind: Kind,
    max_drop: float,
    scan: SensitivityScan | None = None,
    check: Metric | None = None,
    tolerances: Sequence[float] | None = None,
    ratios: Sequence[float] = (0.3, 0.5, 0.7, 0.9),
    on_progress: ProgressFn | None = None,
    **options: Any,
) -> BudgetResult:
    """Per-layer ratios that keep the drop within ``max_drop`` points (module docstring).

    ``scan`` reuses a finished scan (else one runs with ``metric`` over ``ratios``); ``check``
    is the metric for the combined model (default ``metric``; e.g. the full evaluation set when
    the scan used a subset). Returns the result; ``result.ratios`` feeds the pass's ``ratios``.
    """
    if max_drop < 0:
        raise InputError(f"max_drop must be >= 0, got {max_drop}", hint="e.g. max_drop=1.0")
    if scan is None:
        scan = sensitivity_scan(
            model,
            metric,
            kind=kind,
            ratios=ratios,
            stop_drop=max(4 * max_drop, 1.0),
            on_progress=on_progress,
            **options,
        )
    final = check or metric
    baseline = scan.baseline if check is None else final.evaluate(model)
    steps = (
        tolerances
        if tolerances is not None
        else [max_drop * f for f in (2, 1, 0.5, 0.25, 0.125)] + [0.0]
    )
    attempts: list[BudgetAttempt] = []

    def attempt(chosen: dict[str, float], tol: float | None, prefix: int | None = None) -> bool:
        stats: dict[str, Any] = {}
        score = final.evaluate(prune_copy(model, kind, ratios=chosen, stats=stats, **options))
        ok = baseline - score <= max_drop + 1e-9
        share = removed_share(kind, stats)
        attempts.append(BudgetAttempt(tol, chosen, score, baseline - score, ok, prefix, share))
        logger.info(
            "budget: %d layers pruned (tolerance %s, prefix %s), %s drop %.2f (%s)",
            len(chosen),
            tol,
            prefix,
            final.name,
            baseline - score,
            "ok" if ok else "over",
        )
        return ok

    def result(chosen: dict[str, float]) -> BudgetResult:
        score = next((a.score for a in reversed(attempts) if a.ratios == chosen), baseline)
        return BudgetResult(kind, final.name, baseline, max_drop, chosen, score, scan, attempts)

    seen: list[dict[str, float]] = []
    for t in steps:
        chosen = ratios_for(scan, t)
        if not chosen or chosen in seen:
            continue
        seen.append(chosen)
        if attempt(chosen, t):
            return result(chosen)
    # Per-layer tolerances failed together (errors compound): binary search for the longest
    # prefix of the least sensitive layers, each at the smallest scanned ratio.
    r0 = scan.ratios[0]
    ranked = sorted(
        (d, row.layer)
        for row in scan.rows
        if (d := row.drops(scan.baseline)[0]) is not None and d <= max_drop
    )
    lo, hi, best = 0, len(ranked), {}
    while lo < hi:
        k = (lo + hi + 1) // 2
        chosen = {name: r0 for _, name in ranked[:k]}
        if attempt(chosen, None, k):
            lo, best = k, chosen
        else:
            hi = k - 1
    if not best:
        logger.warning("budget: nothing kept the drop within %.2f points; nothing pruned", max_drop)
    return result(best)
