"""Plots of measurements (matplotlib, Agg backend, no pyplot state): latency distributions,
per-operator time bars coloured by bound, and roofline charts.

Each ``*_figure`` function returns a :class:`matplotlib.figure.Figure`; :func:`save_figure` writes
one atomically (temporary file in the same folder, then rename) and :func:`png_bytes` gives the
PNG bytes for inlining in HTML. Roofline charts are in :mod:`onnxfit.report.roofline`, the
memory-plan picture is :func:`onnxfit.report.memory.plot_memory_plan`; :func:`bench_plots` and
:func:`compare_plots` collect every picture of a result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from onnxfit.errors import InputError
from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.report.figures import BOUND_COLORS, Plot, figure, make_plot
from onnxfit.report.memory import memory_plan_figure
from onnxfit.report.roofline import points_from_cost, points_from_profile, roofline_figure

if TYPE_CHECKING:
    from onnxfit.analysis.cost import CostReport
    from onnxfit.analysis.memory import MemoryPlan

# ------------------------------------------------------------------------------ latency


def latency_figure(series: Mapping[str, Sequence[float]], *, title: str = "Latency") -> Any:
    """Per series (e.g. model or batch size): the empirical CDF and a box plot, in ms."""
    import numpy as np

    if not series:
        raise InputError("no latency samples to plot")
    fig = figure(11, 0.9 + 0.55 * max(3, len(series)) + 2.2)
    ax_cdf, ax_box = fig.subplots(1, 2, width_ratios=(3, 2))
    labels = list(series)
    data = [np.asarray(series[k], dtype=float) * 1e3 for k in labels]
    for i, (k, xs) in enumerate(zip(labels, data, strict=True)):
        s = np.sort(xs)
        y = np.arange(1, len(s) + 1) / len(s)
        ax_cdf.step(s, y, where="post", label=f"{k}: median {np.median(s):.2f} ms", color=f"C{i}")
        ax_cdf.axvline(np.median(s), color=f"C{i}", linewidth=0.6, linestyle=":")
    ax_cdf.set_xlabel("latency (ms)")
    ax_cdf.set_ylabel("fraction of runs ≤ x")
    ax_cdf.set_ylim(0, 1.02)
    ax_cdf.grid(linewidth=0.3, alpha=0.6)
    ax_cdf.legend(fontsize=8, loc="lower right")
    ax_cdf.set_title(title, fontsize=10)
    import matplotlib

    mpl = tuple(int(v) for v in matplotlib.__version__.split(".")[:2])
    horiz: dict[str, Any] = {"orientation": "horizontal"} if mpl >= (3, 10) else {"vert": False}
    bp = ax_box.boxplot(data, whis=(1, 99), showfliers=True, patch_artist=True, **horiz)
    for i, patch in enumerate(bp["boxes"]):
        patch.set_facecolor(f"C{i}")
        patch.set_alpha(0.5)
    ax_box.set_yticks(range(1, len(labels) + 1), labels, fontsize=8)
    ax_box.invert_yaxis()
    ax_box.set_xlabel("latency (ms); whiskers p1-p99")
    ax_box.grid(axis="x", linewidth=0.3, alpha=0.6)
    return fig


# ---------------------------------------------------------------------------- operators


def op_time_figure(profile: OrtProfile, *, top: int = 25, title: str | None = None) -> Any:
    """Horizontal bars: the ``top`` operators' time per run, coloured by bound."""
    from matplotlib.patches import Patch

    ops = profile.top(top)
    if not ops:
        raise InputError("the profile has no operators to plot")
    runs = max(1, profile.runs)
    fig = figure(11, 1.2 + 0.28 * len(ops))
    ax = fig.add_subplot()
    ys = range(len(ops))
    vals = [o.total_s / runs * 1e3 for o in ops]
    ax.barh(list(ys), vals, color=[BOUND_COLORS.get(o.bound, "0.6") for o in ops])
    ax.set_yticks(list(ys), [f"{o.node} ({o.op_type})"[:60] for o in ops], fontsize=7)
    ax.invert_yaxis()
    for y, v, o in zip(ys, vals, ops, strict=True):
        ax.text(v, y, f" {100 * o.share:.1f} %", va="center", fontsize=7)
    ax.set_xlabel("time per run (ms)")
    ax.set_xlim(0, max(vals) * 1.15)
    ax.grid(axis="x", linewidth=0.3, alpha=0.6)
    ax.legend(
        handles=[
            Patch(color=BOUND_COLORS["compute"], label="compute-bound"),
            Patch(color=BOUND_COLORS["memory"], label="memory-bound"),
            Patch(color=BOUND_COLORS[None], label="not in the model (inserted by ORT)"),
        ],
        fontsize=8,
        loc="lower right",
    )
    ax.set_title(
        title
        or f"Operator time ({profile.runs} runs; bound from the roofline of "
        f"{profile.roofline_target or '?'})",
        fontsize=10,
    )
    return fig


# --------------------------------------------------------------------------- collections


@dataclass(frozen=True)
class ModelFigures:
    """What the pictures of one model need, computed by the caller (report/ never analyses):
    its cost on ``target`` and its memory plan at ``batch`` (either None when unavailable)."""

    cost: CostReport | None
    plan: MemoryPlan | None
    batch: int
    target: str
    name: str = ""


def bench_plots(result: Any, *, model: ModelFigures | None = None) -> list[Plot]:
    """Every picture of a :class:`~onnxfit.profiling.bench.BenchResult`: latency distribution per
    batch size; per batch with a profile, operator bars and the measured roofline; with the
    model's analysis, its projected roofline and memory plan."""
    plots = [
        make_plot(
            "latency",
            "Latency distribution per batch size",
            latency_figure(
                {f"batch {b.batch}": b.samples for b in result.batches},
                title=f"Latency: {Path(result.model).name}",
            ),
        )
    ]
    for b in result.batches:
        if b.profile is not None and b.profile.ops:
            plots.append(
                make_plot(
                    f"ops-b{b.batch}", f"Operator time, batch {b.batch}", op_time_figure(b.profile)
                )
            )
            pts = points_from_profile(b.profile)
            if pts and b.profile.roofline_target:
                plots.append(
                    make_plot(
                        f"roofline-measured-b{b.batch}",
                        f"Measured operators on the roofline of {b.profile.roofline_target}, "
                        f"batch {b.batch}",
                        roofline_figure(
                            pts,
                            b.profile.roofline_target,
                            title=f"Measured roofline ({b.profile.roofline_target}, "
                            f"batch {b.batch})",
                        ),
                    )
                )
    if model is not None:
        plots += model_plots(model)
    return plots


def model_plots(model: ModelFigures) -> list[Plot]:
    """The projected roofline on the target and the memory plan of one analysed model."""
    out = []
    label = f" {model.name}" if model.name else ""
    if model.cost is not None and (pts := points_from_cost(model.cost)):
        out.append(
            make_plot(
                f"roofline-{model.target}",
                f"Operators{label} projected on {model.target} (cost model), batch {model.batch}",
                roofline_figure(
                    pts, model.target, title=f"Projected roofline{label}: {model.target}"
                ),
            )
        )
    if model.plan is not None:
        title = f"Activation memory plan{label}, batch {model.batch}"
        out.append(make_plot("memory", title, memory_plan_figure(model.plan, title=title)))
    return out


def compare_plots(result: Any, *, models: Sequence[ModelFigures] = ()) -> list[Plot]:
    """Pictures of a :class:`~onnxfit.profiling.compare.CompareResult`: the latency distribution
    of every model; with their analyses (same order), each one's projected roofline and memory
    plan."""
    plots = [
        make_plot(
            "latency",
            "Latency distribution per model (interleaved runs)",
            latency_figure({m.name: m.samples for m in result.models}, title="Latency per model"),
        )
    ]
    for m, model in zip(result.models, models, strict=False):
        for p in model_plots(model):
            plots.append(Plot(f"{p.tag}-{Path(m.name).stem}", p.caption, p.png, p.figure))
    return plots
