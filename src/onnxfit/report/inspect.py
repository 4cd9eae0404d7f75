"""Rendering of :class:`~onnxfit.analysis.inspect.InspectResult`: rich panel + table, Markdown."""

from __future__ import annotations

from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from onnxfit.analysis.inspect import InspectResult
from onnxfit.report.common import fmt_bytes, fmt_count, fmt_time, markdown_table


def fmt_flops(n: float) -> str:
    """FLOPs with a G / M / K suffix (``3.64 G``)."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}"
    return f"{n:.0f}"


def _shape_text(shape: tuple[int | str | None, ...] | None) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def verdict_text(result: InspectResult) -> str:
    """``FITS: uses X of Y (Z% headroom)`` or ``DOES NOT FIT: needs X of Y (Z over); next:
    INT8 would need ...`` (:mod:`onnxfit.analysis.fit`)."""
    used, budget = fmt_bytes(result.runtime_bytes), fmt_bytes(result.budget_bytes)
    if result.fits:
        return f"FITS: uses {used} of {budget} ({result.headroom_pct:.2f}% headroom)"
    over = fmt_bytes(-result.headroom_bytes)
    text = f"DOES NOT FIT: needs {used} of {budget} ({over} over, {-result.headroom_pct:.2f}%)"
    step = result.verdict.next_need()
    return text + (f"; {step}" if step else "")


def memory_text(result: InspectResult) -> str:
    """``arena X (lower bound Y, naive Z)``."""
    m = result.memory
    return (
        f"arena {fmt_bytes(m.arena_bytes)} (lower bound {fmt_bytes(m.lower_bound_bytes)}, "
        f"{m.overhead:.3f}x; naive {fmt_bytes(m.naive_bytes)})"
    )


def _bound_text(result: InspectResult) -> str:
    parts = []
    for bound, row in result.cost.by_bound().items():
        parts.append(
            f"{bound}-bound {int(row['nodes'])} nodes, {fmt_time(row['time_s'])} "
            f"({100 * row['share']:.0f}%)"
        )
    return "; ".join(parts)


def _dispatch_text(result: InspectResult) -> str:
    n = sum(1 for c in result.cost.nodes if c.time_s > 0)
    total = n * result.target.dispatch_overhead_s
    share = 100 * total / result.latency_s if result.latency_s else 0.0
    each = fmt_time(result.target.dispatch_overhead_s)
    return f"{n} dispatches x {each} = {fmt_time(total)} ({share:.0f}%)"


def summary_rows(result: InspectResult) -> list[tuple[str, str]]:
    """(label, value) rows of the summary, shared by the panel and Markdown."""
    io_in = ", ".join(f"{t.name} {_shape_text(t.shape)} {t.dtype}" for t in result.inputs)
    io_out = ", ".join(f"{t.name} {_shape_text(t.shape)} {t.dtype}" for t in result.outputs)
    size = (
        f"{fmt_count(result.file_size.bytes)} bytes ({result.file_size.mib:.2f} MiB)"
        if result.file_size
        else "- (in memory)"
    )
    ops = ", ".join(f"{op} {n}" for op, n in list(result.op_histogram.items())[:8])
    if len(result.op_histogram) > 8:
        ops += f", ... ({len(result.op_histogram)} op types)"
    latency = fmt_time(result.latency_s)
    if result.default_precision_latency_s is not None:
        latency += (
            f" (at {result.target.default_precision}: "
            f"{fmt_time(result.default_precision_latency_s)})"
        )
    rows = [
        ("model", f"{result.model} (opset {result.opset}, {result.num_nodes} nodes)"),
        ("target", f"{result.target.name}: {result.target.description}"),
        ("inputs", io_in + (f"; batch {result.batch}" if result.batch != 1 else "")),
        ("outputs", io_out),
        ("parameters", f"{fmt_count(result.params)} ({fmt_bytes(result.weight_bytes)} weights)"),
        ("file size", size),
        ("ops", ops),
        ("compute", f"{result.flops / 1e9:.3f} GFLOPs ({result.macs / 1e9:.3f} GMACs)"),
        ("memory traffic", fmt_bytes(result.cost.bytes)),
        ("projected latency", latency),
        ("bound", _bound_text(result)),
        ("dispatch overhead", _dispatch_text(result)),
        ("activations", memory_text(result)),
        (
            "runtime memory",
            f"weights {fmt_bytes(result.weight_bytes)} + arena "
            f"{fmt_bytes(result.memory.arena_bytes)} + IO {fmt_bytes(result.io_bytes)} = "
            f"{fmt_bytes(result.runtime_bytes)}",
        ),
    ]
    if result.cost.unknown_ops:
        rows.append(
            (
                "unknown ops",
                f"{', '.join(result.cost.unknown_ops)} ({result.cost.unknown_nodes} nodes "
                "counted as memory-bound, bytes only)",
            )
        )
    rows.append(("verdict", verdict_text(result)))
    return rows


def top_rows(result: InspectResult, k: int) -> list[list[str]]:
    """Rows of the top-``k`` nodes by projected time."""
    total = result.latency_s or 1.0
    rows = []
    for i, n in enumerate(result.cost.top(k), 1):
        rows.append(
            [
                str(i),
                n.name or "-",
                n.op_type + ("" if n.known else " (?)"),
                n.precision,
                fmt_flops(n.flops),
                fmt_bytes(n.bytes),
                fmt_time(n.time_s),
                n.bound,
                f"{100 * n.time_s / total:.1f}%",
            ]
        )
    return rows


_TOP_HEADERS = ("#", "node", "op", "prec", "FLOPs", "bytes", "time", "bound", "share")
_RIGHT = frozenset({"#", "FLOPs", "bytes", "time", "share"})


def render_inspect(result: InspectResult, *, top: int = 10) -> RenderableType:
    """A summary panel, the top-``top`` nodes table and the verdict line."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for label, value in summary_rows(result)[:-1]:
        grid.add_row(label, Text(value))
    panel = Panel(grid, title=Text(f"onnxfit inspect: {result.model}"), expand=False)
    table = Table(title=Text(f"Top {top} nodes by projected time on {result.target.name}"))
    for col in _TOP_HEADERS:
        table.add_column(col, justify="right" if col in _RIGHT else "left")
    for row in top_rows(result, top):
        table.add_row(*(Text(c) for c in row))
    style = "bold green" if result.fits else "bold red"
    parts: list[RenderableType] = [panel]
    if top > 0:
        parts.append(table)
    parts.append(Text(verdict_text(result), style=style))
    return Group(*parts)


def to_markdown(result: InspectResult, *, top: int = 10) -> str:
    """The same content as :func:`render_inspect`, as GitHub-flavoured Markdown."""
    out = [f"## onnxfit inspect: `{result.model}`\n"]
    out.append(markdown_table(("", ""), [(f"**{k}**", v) for k, v in summary_rows(result)]))
    if top > 0:
        out.append(f"\n### Top {top} nodes by projected time on {result.target.name}\n")
        out.append(markdown_table(_TOP_HEADERS, top_rows(result, top)))
    out.append(f"\n**{verdict_text(result)}**\n")
    return "\n".join(out)
