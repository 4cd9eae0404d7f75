"""Roofline charts (Williams, Waterman & Patterson, CACM 2009): operators placed by arithmetic
intensity (FLOP/byte, across) and performance (FLOP/s, up) under the target's roofs,
``min(peak(precision), intensity x bandwidth)``, one roof per precision present.

Points come from a measured ORT profile (:func:`points_from_profile`: achieved FLOP/s of each
operator on the device that ran it) or from the cost model (:func:`points_from_cost`: where each
node would sit on the target), coloured by bound, sized by share of time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.report.figures import BOUND_COLORS, figure
from onnxfit.targets import Target, get_target

_PREC_STYLE: dict[str, Any] = {"fp32": "-", "fp16": "--", "int8": ":"}


@dataclass(frozen=True)
class RooflinePoint:
    """One operator on a roofline chart: intensity (FLOP/byte) and performance (FLOP/s)."""

    label: str
    intensity: float
    flops_s: float
    weight: float  # marker size: share of time
    bound: str | None
    precision: str = "fp32"


def points_from_profile(profile: OrtProfile) -> list[RooflinePoint]:
    """Measured points: every matched operator with FLOPs (achieved FLOP/s per call)."""
    return [
        RooflinePoint(
            o.node, o.intensity, o.achieved_flops_s, o.share, o.bound, o.precision or "fp32"
        )
        for o in profile.ops
        if o.flops and o.intensity and o.achieved_flops_s
    ]


def points_from_cost(cost: Any) -> list[RooflinePoint]:
    """Projected points from a :class:`~onnxfit.analysis.cost.CostReport`: where each node
    would sit on the target (FLOPs / projected time without the dispatch overhead)."""
    total = cost.time_s or 1.0
    out = []
    for n in cost.nodes:
        if n.flops and n.bytes and n.time_s > 0:
            out.append(
                RooflinePoint(
                    n.name, n.intensity, n.flops / n.time_s, n.time_s / total, n.bound, n.precision
                )
            )
    return out


def roofline_figure(
    points: Sequence[RooflinePoint],
    target: str | Target,
    *,
    title: str | None = None,
    labels: int = 6,
) -> Any:
    """Log-log roofline of ``target`` (one roof per precision present) with ``points``."""
    import numpy as np
    from matplotlib.lines import Line2D

    tgt = get_target(target)
    fig = figure(9, 6)
    ax = fig.add_subplot()
    xs = [p.intensity for p in points] or [1.0]
    lo = min(min(xs) / 3, 0.1)
    ridge = max(tgt.peak(p) for p in ("fp32", "fp16", "int8")) / tgt.memory_bandwidth
    hi = max(max(xs) * 3, ridge * 4)
    grid = np.logspace(np.log10(lo), np.log10(hi), 200)
    precisions = sorted({p.precision for p in points} | {"fp32"}, key=list(_PREC_STYLE).index)
    handles = []
    for prec in precisions:
        roof = np.minimum(tgt.peak(prec), grid * tgt.memory_bandwidth)
        ax.plot(grid, roof, color="black", linestyle=_PREC_STYLE[prec], linewidth=1.2)
        handles.append(
            Line2D(
                [],
                [],
                color="black",
                linestyle=_PREC_STYLE[prec],
                label=f"{prec} roof: {tgt.peak(prec) / 1e12:.2f} TFLOP/s",
            )
        )
    for bound in ("compute", "memory"):
        sel = [p for p in points if p.bound == bound]
        if sel:
            ax.scatter(
                [p.intensity for p in sel],
                [p.flops_s for p in sel],
                s=[20 + 600 * p.weight for p in sel],
                color=BOUND_COLORS[bound],
                alpha=0.6,
                edgecolors="black",
                linewidths=0.4,
            )
            handles.append(
                Line2D(
                    [],
                    [],
                    marker="o",
                    linestyle="",
                    color=BOUND_COLORS[bound],
                    label=f"{bound}-bound ({len(sel)})",
                )
            )
    placed: list[tuple[float, float]] = []
    for p in sorted(points, key=lambda p: -p.weight):
        if len(placed) >= labels:
            break
        x, y = np.log10(p.intensity), np.log10(p.flops_s)
        if any(abs(x - a) < 0.6 and abs(y - b) < 0.15 for a, b in placed):
            continue  # a label is already there: skip rather than overprint
        placed.append((x, y))
        ax.annotate(
            p.label[:28],
            (p.intensity, p.flops_s),
            fontsize=7,
            xytext=(4, 4),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("FLOP/s")
    ax.grid(which="both", linewidth=0.3, alpha=0.5)
    handles.append(
        Line2D(
            [],
            [],
            color="none",
            label=f"bandwidth {tgt.memory_bandwidth / 1e9:.0f} GB/s; marker area: time share",
        )
    )
    ax.legend(handles=handles, fontsize=8, loc="lower right")
    ax.set_title(title or f"Roofline: {tgt.name}", fontsize=10)
    return fig
