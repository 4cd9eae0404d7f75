"""The candidate search as a picture: speed against the accuracy measure, one point per candidate
that was built, the Pareto front of the ones that meet the budget and fit, and the written one
circled. Candidates refused by the gate are listed under the plot (they have no speed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onnxfit.report.figures import figure

_STATUS_STYLE = {
    "ok": ("tab:green", "o"),
    "does not fit": ("tab:red", "s"),
}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (lower is better on both),
    ordered by the first axis."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front: list[int] = []
    best = float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def candidate_figure(
    rows: Sequence[Mapping[str, Any]], *, measure: str, budget: float | None, title: str
) -> Any:
    """Scatter of the candidates built (x: latency in ms, measured or projected as the search
    compared them; y: the gate's measure, lower is better; point area: runtime memory), the
    Pareto front of those that fit and meet the budget, the budget line, the chosen one
    circled, and the refused ones named in the caption."""
    fig = figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    built = [r for r in rows if r.get("speed_s") is not None and r.get("gate_value") is not None]
    refused = [r for r in rows if r not in built]
    biggest = max((float(r.get("runtime_bytes") or 0) for r in built), default=1.0) or 1.0
    for r in built:
        color, marker = _STATUS_STYLE.get(str(r["status"]), ("0.5", "^"))
        x, y = float(r["speed_s"]) * 1e3, float(r["gate_value"])
        size = 40 + 260 * float(r.get("runtime_bytes") or 0) / biggest
        ax.scatter([x], [y], s=size, c=color, marker=marker, alpha=0.75, edgecolors="k")
        ax.annotate(str(r["label"]), (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        if r.get("chosen"):
            ax.scatter([x], [y], s=size * 2.2, facecolors="none", edgecolors="k", linewidths=2)
    good = [r for r in built if r["status"] == "ok"]
    pts = [(float(r["speed_s"]) * 1e3, float(r["gate_value"])) for r in good]
    front = [pts[i] for i in pareto_front(pts)]
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "g--", lw=1, label="Pareto front")
    if budget is not None:
        ax.axhline(budget, color="tab:red", lw=1, ls=":", label=f"budget {budget:g}")
    how = {str(r.get("speed_from")) for r in built}
    ax.set_xlabel(f"latency, ms ({'; '.join(sorted(how)) or 'no candidate built'})")
    ax.set_ylabel(f"{measure} (lower is better)")
    caption = title
    if refused:
        caption += "\nrefused: " + "; ".join(str(r["label"]) for r in refused)
    ax.set_title(caption, fontsize=9)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return fig


def optimize_plots(result: Any) -> list[Any]:
    """The candidate figure of an :class:`~onnxfit.optimizer.result.OptimizeResult` (a table
    of one when no search ran) as a list of :class:`~onnxfit.report.figures.Plot`."""
    from onnxfit.optimizer.search import row
    from onnxfit.report.figures import make_plot

    rows = result.candidates or [dict(row(result, "ok" if result.after.fits else "does not fit"),
                                      chosen=True)]  # fmt: skip
    measure, budget = str(result.gate.measure).replace("_", " "), result.gate.limit
    if result.gate.measure == "cosine":  # higher is better: plot the distance 1 - cosine
        rows = [dict(r, gate_value=None if r.get("gate_value") is None else 1 - r["gate_value"])
                for r in rows]  # fmt: skip
        measure, budget = "1 - worst cosine", 1 - budget
    title = f"{result.model} on {result.target}: candidates"
    fig = candidate_figure(rows, measure=measure, budget=budget, title=title)
    return [make_plot("candidates", title, fig)]
