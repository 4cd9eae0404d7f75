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
    """``FITS: uses X of Y (Z% headroom)`` or ``DOES NOT FIT (at first run): needs X of Y ...;
    next: INT8 would need ...``.

    X is the first-run total as the provider's allocator holds it (see
    :mod:`onnxfit.analysis.budget`); Y the target's budget or the ``--budget`` slice.
    """
    used, budget = fmt_bytes(result.first_run_bytes), fmt_bytes(result.budget_bytes)
    if result.fits:
        return f"FITS: uses {used} of {budget} ({result.headroom_pct:.2f}% headroom)"
    over = fmt_bytes(-result.headroom_bytes)
    where = f" (at {result.verdict.fails_at})" if result.verdict and result.verdict.fails_at else ""
    text = (
        f"DOES NOT FIT{where}: needs {used} of {budget} ({over} over, {-result.headroom_pct:.2f}%)"
    )
    step = result.projection.next_need()
    return text + (f"; {step}" if step else "")


def budget_rows(result: InspectResult) -> list[tuple[str, str]]:
    """Load-time and first-run rows of the verdict (empty without a verdict)."""
    v = result.verdict
    if v is None:
        return []
    mark = {True: "ok", False: "OVER"}
    return [
        ("budget", f"{fmt_bytes(v.budget_bytes)} ({v.budget_source})"),
        (
            "at load",
            f"{fmt_bytes(v.load_bytes)} weights as {v.provider} holds them "
            f"(stored {fmt_bytes(v.weights_bytes)}) [{mark[v.fits_load]}]",
        ),
        (
            "at first run",
            f"{fmt_bytes(v.first_run_bytes)} = load + inputs {fmt_bytes(v.io_bytes)} + "
            f"activations {fmt_bytes(v.activations_bytes)} ({v.allocator}; planned floor "
            f"{fmt_bytes(v.activations_floor_bytes)}) [{mark[v.fits_first_run]}]",
        ),
    ]


def directml_rows(result: InspectResult) -> list[tuple[str, str]]:
    """The DirectML pre-flight in (label, value) rows (empty when the target is not DirectML)."""
    d = result.directml
    if d is None:
        return []
    if d.fallback:
        shown = ", ".join(f"{n.name or '?'} ({n.op_type})" for n in d.fallback[:4])
        more = f" and {len(d.fallback) - 4} more" if len(d.fallback) > 4 else ""
        nodes = f"{len(d.fallback)} node(s) fall back to the CPU: {shown}{more}"
    else:
        nodes = f"every node runs on DirectML ({d.on_dml} kernels, {d.removed} folded by ORT)"
    if d.conditional:
        nodes += f"; {len(d.conditional)} decided at session creation"
    capture = (
        "graph capture possible"
        if d.graph_capture
        else "graph capture OFF: " + "; ".join(d.capture_blockers)
    )
    rows = [("DirectML", nodes), ("DirectML capture", capture)]
    if d.dynamic_dims:
        pins = ", ".join(
            f"{x.symbol or x.input + f'[{x.axis}]'}={x.pinned if x.pinned is not None else '?'}"
            for x in d.dynamic_dims
        )
        rows.append(("pin dims", f"{pins} (free-dimension overrides)"))
    return rows


def lane_rows(result: InspectResult) -> list[tuple[str, str]]:
    """Idle wave lanes and layout changes (GPU targets only)."""
    lanes = result.lanes
    if lanes is None or not result.target.is_gpu:
        return []
    worst = lanes.worst(3)
    shown = ", ".join(
        f"{n.name or n.op_type} ({n.mapped} {n.channels if n.mapped == 'channels' else n.spatial}"
        f": {n.idle32} idle)"
        for n in worst
    )
    charged = (
        f"; charged in the projection (wave{result.target.wave_size})"
        if result.target.wave_size
        else ""
    )
    rows = [
        (
            "idle lanes",
            f"wave32 {100 * lanes.idle_share(32):.1f}%, wave64 {100 * lanes.idle_share(64):.1f}% "
            f"of FLOP-weighted lane slots{charged}" + (f"; worst: {shown}" if shown else ""),
        )
    ]
    moved = sum(c.bytes for c in lanes.layout_changes)
    if lanes.layout_changes:
        kinds = ", ".join(f"{c.name or c.op_type} ({c.op_type})" for c in lanes.layout_changes[:3])
        more = "" if len(lanes.layout_changes) <= 3 else f" +{len(lanes.layout_changes) - 3}"
        text = f"{len(lanes.layout_changes)} layout change(s) moving {fmt_bytes(moved)}: "
        rows.append(("layout", text + kinds + more))
    prefer = (
        lanes.preferred_layouts.get(result.target.providers[0]) if result.target.providers else None
    )
    if prefer:
        rows.append(("layout", f"{result.target.providers[0]} computes in {prefer}"))
    return rows


def fallback_rows(result: InspectResult) -> list[list[str]]:
    """One row per node DirectML would not run: node, op, opset, reason."""
    d = result.directml
    if d is None:
        return []
    return [[n.name or "-", n.op_type, str(n.opset), n.reason] for n in d.fallback]


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


_ENGINE_TEXT = {
    "onnx": "ONNX shape inference",
    "ort-symbolic": "onnxruntime symbolic shape inference (ONNX's left some open)",
    "execution": "running the model once in onnxruntime (static inference left some open)",
}


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
        ("shapes resolved by", _ENGINE_TEXT.get(result.shape_engine or "", "-")),
        ("parameters", f"{fmt_count(result.params)} ({fmt_bytes(result.weight_bytes)} weights)"),
        ("file size", size),
        ("ops", ops),
        ("compute", f"{result.flops / 1e9:.3f} GFLOPs ({result.macs / 1e9:.3f} GMACs)"),
        ("memory traffic", fmt_bytes(result.cost.bytes)),
        ("projected latency", f"{latency} — {result.target.projection_label}"),
        ("bound", _bound_text(result)),
        ("dispatch overhead", _dispatch_text(result)),
        ("activations", memory_text(result)),
        (
            "runtime memory",
            f"weights {fmt_bytes(result.weight_bytes)} + arena "
            f"{fmt_bytes(result.memory.arena_bytes)} + IO {fmt_bytes(result.io_bytes)} = "
            f"{fmt_bytes(result.runtime_bytes)} (planned)",
        ),
        *budget_rows(result),
        *directml_rows(result),
        *lane_rows(result),
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
_FALLBACK_HEADERS = ("node", "op", "opset", "why")
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
    fallbacks = fallback_rows(result)
    if fallbacks:
        fb = Table(title=Text("Nodes DirectML would not run (they fall back to the CPU)"))
        for col in _FALLBACK_HEADERS:
            fb.add_column(col)
        for row in fallbacks:
            fb.add_row(*(Text(c) for c in row))
        parts.append(fb)
    parts.append(Text(verdict_text(result), style=style))
    return Group(*parts)


def to_markdown(result: InspectResult, *, top: int = 10) -> str:
    """The same content as :func:`render_inspect`, as GitHub-flavoured Markdown."""
    out = [f"## onnxfit inspect: `{result.model}`\n"]
    out.append(markdown_table(("", ""), [(f"**{k}**", v) for k, v in summary_rows(result)]))
    if top > 0:
        out.append(f"\n### Top {top} nodes by projected time on {result.target.name}\n")
        out.append(markdown_table(_TOP_HEADERS, top_rows(result, top)))
    if fallback_rows(result):
        out.append("\n### Nodes DirectML would not run (they fall back to the CPU)\n")
        out.append(markdown_table(_FALLBACK_HEADERS, fallback_rows(result)))
    out.append(f"\n**{verdict_text(result)}**\n")
    return "\n".join(out)
