"""Rendering of a :class:`~onnxfit.analysis.memory.MemoryPlan`: rows, a rich table, a picture.

:func:`plot_memory_plan` draws the arena the way allocator papers do: every buffer a rectangle
(across: the execution steps it is live; up: its offset; height: its size, in MiB), with the
arena size, the lower bound and the live bytes per step drawn over it. The file is written
atomically (temporary file in the same folder, then rename).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from rich.table import Table

from onnxfit.analysis.memory import MemoryPlan
from onnxfit.report.common import MIB, fmt_bytes
from onnxfit.report.figures import check_plot_path, save_figure

#: Buffers named inside their rectangle (the largest ones, when the rectangle is big enough).
_LABELLED = 8


def memory_summary_rows(plan: MemoryPlan) -> list[tuple[str, str]]:
    """(label, value) pairs: arena vs lower bound vs naive, IO, peak, strategy."""
    return [
        ("arena", fmt_bytes(plan.arena_bytes)),
        ("lower bound", f"{fmt_bytes(plan.lower_bound_bytes)} (arena {plan.overhead:.3f}x)"),
        ("naive (no reuse)", fmt_bytes(plan.naive_bytes)),
        ("inputs + outputs", fmt_bytes(plan.io_bytes)),
        ("peak", f"step {plan.peak_step} ({plan.peak_node})" if plan.peak_step >= 0 else "-"),
        ("buffers", f"{len(plan.buffers)} over {plan.num_steps} steps, {plan.strategy}"),
    ]


def memory_rows(plan: MemoryPlan, *, top: int = 10) -> list[dict[str, Any]]:
    """The ``top`` largest buffers (ties: first placed), as plain dicts for tables and JSON."""
    ranked = sorted(plan.buffers, key=lambda b: (-b.size, b.first, b.offset))[: max(top, 0)]
    arena = plan.arena_bytes or 1
    return [
        {
            "name": b.name,
            "size_bytes": b.size,
            "size": fmt_bytes(b.size),
            "offset_bytes": b.offset,
            "offset": fmt_bytes(b.offset),
            "first": b.first,
            "last": b.last,
            "steps": b.last - b.first + 1,
            "values": len(b.values),
            "arena_share": round(b.size / arena, 4),
        }
        for b in ranked
    ]


def memory_table(plan: MemoryPlan, *, top: int = 10) -> Table:
    """A rich table of the ``top`` largest buffers."""
    table = Table(title=f"Largest activation buffers (arena {fmt_bytes(plan.arena_bytes)})")
    for col in ("buffer", "size", "offset", "steps", "values", "% arena"):
        table.add_column(col, justify="left" if col == "buffer" else "right")
    for r in memory_rows(plan, top=top):
        table.add_row(
            str(r["name"]),
            str(r["size"]),
            str(r["offset"]),
            f"{r['first']}-{r['last']}",
            str(r["values"]),
            f"{100 * r['arena_share']:.1f}",
        )
    return table


def _draw(plan: MemoryPlan, title: str | None) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.collections import PatchCollection
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    fig = Figure(figsize=(11, 5.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    steps = max(plan.num_steps, max((b.last + 1 for b in plan.buffers), default=0), 1)
    top = max(plan.arena_bytes, plan.lower_bound_bytes, 1) / MIB
    cmap = matplotlib.colormaps["tab20"]
    rects = [
        Rectangle((b.first, b.offset / MIB), b.last - b.first + 1, b.size / MIB)
        for b in plan.buffers
    ]
    colors = [cmap(i % 20) for i in range(len(rects))]
    ax.add_collection(
        PatchCollection(rects, facecolors=colors, edgecolors="white", linewidths=0.4, alpha=0.9)
    )
    for b in sorted(plan.buffers, key=lambda b: -b.size)[:_LABELLED]:
        text = f"{b.name}\n{fmt_bytes(b.size)}"
        # fits when ~7 px per character across and two 14 px lines up (axes ~1250 x 520 px)
        wide = (b.last - b.first + 1) / steps >= 7 * max(map(len, text.split("\n"))) / 1250
        if wide and b.size / MIB / (top * 1.3) >= 30 / 520:
            ax.text(
                b.first + (b.last - b.first + 1) / 2,
                (b.offset + b.size / 2) / MIB,
                text,
                ha="center",
                va="center",
                fontsize=7,
                clip_on=True,
            )
    if plan.live_bytes:
        xs = list(range(len(plan.live_bytes) + 1))
        ys = [v / MIB for v in plan.live_bytes] + [plan.live_bytes[-1] / MIB]
        ax.step(xs, ys, where="post", color="0.25", linewidth=0.8, linestyle=":")
    ax.axhline(plan.arena_bytes / MIB, color="black", linewidth=1.4)
    ax.axhline(plan.lower_bound_bytes / MIB, color="tab:red", linewidth=1.2, linestyle="--")
    if plan.peak_step >= 0:
        ax.axvline(plan.peak_step + 0.5, color="tab:red", linewidth=0.6, linestyle=":")
    handles = [
        Line2D(
            [],
            [],
            color="black",
            linewidth=1.4,
            label=f"arena {fmt_bytes(plan.arena_bytes)} ({plan.overhead:.3f}x bound)",
        ),
        Line2D(
            [],
            [],
            color="tab:red",
            linewidth=1.2,
            linestyle="--",
            label=f"lower bound {fmt_bytes(plan.lower_bound_bytes)}"
            + (f", peak at {plan.peak_node}" if plan.peak_node else ""),
        ),
        Line2D([], [], color="0.25", linewidth=0.8, linestyle=":", label="live bytes per step"),
        Patch(color="none", label=f"naive (no reuse) {fmt_bytes(plan.naive_bytes)}"),
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.9)
    if not plan.buffers:
        ax.text(0.5, 0.5, "no activation buffers", transform=ax.transAxes, ha="center")
    ax.set_xlim(0, steps)
    ax.set_ylim(0, top * 1.3)
    ax.set_xlabel("execution step (node index); a buffer spans the steps it is live")
    ax.set_ylabel("arena offset (MiB)")
    bits = [f"{len(plan.buffers)} buffers", f"{plan.num_steps} steps"]
    if plan.batch is not None:
        bits.insert(0, f"batch {plan.batch}")
    bits += [
        plan.precision or "+".join(sorted(plan.dtypes)) or "-",
        f"strategy {plan.strategy}",
        f"align {plan.alignment} B",
    ]
    ax.set_title(f"{title or 'Activation memory plan'}\n{', '.join(bits)}", fontsize=10)
    ax.grid(axis="y", linewidth=0.3, alpha=0.5)
    return fig


def memory_plan_figure(plan: MemoryPlan, *, title: str | None = None) -> Any:
    """The picture of ``plan`` as a matplotlib figure."""
    return _draw(plan, title)


def plot_memory_plan(
    plan: MemoryPlan, path: str | os.PathLike[str], *, title: str | None = None
) -> Path:
    """Draw ``plan`` to ``path`` (.png, .svg or .pdf), atomically; returns the path.

    Raises :class:`InputError` for another suffix or a missing folder.
    """
    out = check_plot_path(path)
    return save_figure(_draw(plan, title), out)
