"""Rendering of bench / compare / profile / tracker results: rows, rich tables, Markdown.

Every result first becomes ``(title, headers, rows)`` of strings (the ``*_rows`` functions), so
the rich table, the Markdown and the HTML page (:mod:`onnxfit.report.html`) show the same
figures; JSON is the result's own ``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxfit.profiling.bench import BatchResult, BenchResult
from onnxfit.profiling.compare import CompareResult
from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.profiling.tracker import SectionStats
from onnxfit.report.common import fmt_bytes, fmt_count, fmt_time, markdown_table


@dataclass(frozen=True)
class Rows:
    """A table as strings: what every renderer draws."""

    title: str
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


def fmt_rate(x: float | None, unit: str) -> str:
    """A rate with an SI prefix: 1.2e9 -> '1.20 G<unit>'."""
    if x is None:
        return "-"
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.2f} {prefix}{unit}"
    return f"{x:.1f} {unit}"


def fmt_x(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f} %"


# ------------------------------------------------------------------------------- bench


def _noise_text(b: BatchResult) -> str:
    n = b.noise
    if n is None:
        return "-"
    other = "" if n.other_cpu_share is None else f", others {100 * n.other_cpu_share:.0f} %"
    return f"{n.drift:+.0%}{other}" + ("" if n.quiet else " (busy)")


def bench_rows(result: BenchResult) -> Rows:
    """Timing per batch size: session creation, first run, latency percentiles, throughput."""
    headers = (
        "batch",
        "provider / threads",
        "session",
        "first run",
        "min",
        "median",
        "mean",
        "p90",
        "p99",
        "max",
        "items/s",
    )
    rows = []
    for b in result.batches:
        lat = b.latency
        rows.append(
            (
                str(b.batch),
                f"{b.provider.removesuffix('ExecutionProvider')} / {b.threads or '-'}",
                fmt_time(b.session_s),
                fmt_time(b.first_s),
                fmt_time(lat.min),
                fmt_time(lat.median),
                fmt_time(lat.mean),
                fmt_time(lat.p90),
                fmt_time(lat.p99),
                fmt_time(lat.max),
                f"{b.throughput:,.1f}",
            )
        )
    first = result.batches[0]
    iso = "a fresh process per batch size" if first.isolated else "in this process"
    caption = (
        f"{first.latency.count} timed runs after {first.warmup} warm-up runs, {iso}; "
        f"{Path(result.model).name}: {fmt_bytes(result.file_bytes)}, "
        f"{fmt_count(result.parameters)} parameters; percentiles by linear interpolation"
    )
    return Rows(
        f"bench {Path(result.model).name} ({result.runtime})", headers, tuple(rows), caption
    )


def bench_memory_rows(result: BenchResult) -> Rows:
    """Memory per batch size, measured beside planned, the projection, and the noise."""
    headers = (
        "batch",
        "peak RSS",
        "RSS before session",
        "added by the model",
        "device memory",
        "arena (plan)",
        "weights+arena+IO (plan)",
        "median (measured)",
        f"projected on {result.target}" + (f" ({result.projection})" if result.projection else ""),
        "noise (probe drift, others' CPU)",
    )
    rows = tuple(
        (
            str(b.batch),
            fmt_bytes(b.peak_rss),
            fmt_bytes(b.rss_baseline),
            fmt_bytes(b.rss_delta),
            fmt_bytes(b.device_bytes),
            fmt_bytes(b.static.arena_bytes),
            fmt_bytes(b.static.runtime_bytes),
            fmt_time(b.latency.median),
            fmt_time(b.static.projected_s),
            _noise_text(b),
        )
        for b in result.batches
    )
    caption = (
        "peak RSS is the measuring process's high-water mark (VmHWM); the plan counts weights, "
        "the activation arena and inputs/outputs only, not the runtime's own memory"
    )
    return Rows("memory and projection", headers, rows, caption)


def profile_rows(profile: OrtProfile, *, top: int = 15) -> Rows:
    """The ``top`` operators by total time, with achieved rates vs the roofline."""
    runs = max(1, profile.runs)
    headers = (
        "node",
        "op",
        "calls",
        "mean",
        "per run",
        "share",
        "achieved FLOP/s",
        "achieved B/s",
        "of roofline",
        "bound",
    )
    rows = tuple(
        (
            o.node,
            o.op_type,
            str(o.calls),
            fmt_time(o.mean_s),
            fmt_time(o.total_s / runs),
            fmt_pct(o.share),
            fmt_rate(o.achieved_flops_s, "FLOP/s") if o.flops else "-",
            fmt_rate(o.achieved_bytes_s, "B/s"),
            fmt_pct(o.efficiency),
            o.bound or "(not in model)",
        )
        for o in profile.top(top)
    )
    return Rows(
        f"ORT profile: top {min(top, len(profile.ops))} of {len(profile.ops)} operators",
        headers,
        rows,
        profile_summary(profile),
    )


def profile_summary(profile: OrtProfile) -> str:
    """One line: summed operator time vs ORT's run time vs the measured wall time."""
    parts = [f"{profile.runs} runs"]
    parts.append(f"operators sum {fmt_time(profile.mean_kernel_s)}/run")
    parts.append(f"ORT model_run {fmt_time(profile.mean_run_s)}")
    if profile.mean_wall_s:
        parts.append(f"wall {fmt_time(profile.mean_wall_s)}")
    if profile.coverage is not None:
        parts.append(f"operators = {100 * profile.coverage:.1f} % of the run")
    parts.append(f"{100 * profile.matched_share:.0f} % of operator time matched to the cost model")
    if profile.roofline_target:
        parts.append(f"roofline of {profile.roofline_target}")
    return "; ".join(parts)


def op_type_rows(profile: OrtProfile) -> Rows:
    """Time per operator type."""
    rows = tuple(
        (
            r["op_type"],
            str(r["nodes"]),
            str(r["calls"]),
            fmt_time(r["per_run_s"]),
            fmt_pct(r["share"]),
        )
        for r in profile.by_op_type()
    )
    return Rows("time per operator type", ("op", "nodes", "calls", "per run", "share"), rows)


# ------------------------------------------------------------------------------ compare


def compare_rows(result: CompareResult) -> Rows:
    """The before/after table: one column per model, a ratio vs the first after each value."""
    ratios = result.ratios()
    ms = result.models

    def cell(i: int, text: str, key: str) -> str:
        if i == 0:
            return text
        r = ratios[i].get(key)
        return text if r is None else f"{text} ({r:.2f}x)"

    spec: list[tuple[str, str, list[str]]] = [
        ("file size", "file_size", [fmt_bytes(m.file_bytes) for m in ms]),
        ("parameters", "parameters", [fmt_count(m.parameters) for m in ms]),
        ("weights (plan)", "weights", [fmt_bytes(m.static.weights_bytes) for m in ms]),
        ("activation arena (plan)", "arena", [fmt_bytes(m.static.arena_bytes) for m in ms]),
        (
            "runtime memory (plan: weights+arena+IO)",
            "runtime_memory",
            [fmt_bytes(m.static.runtime_bytes) for m in ms],
        ),
        ("peak RSS (measured)", "peak_rss", [fmt_bytes(m.peak_rss) for m in ms]),
        ("RSS added by the model", "rss_delta", [fmt_bytes(m.rss_delta) for m in ms]),
        ("latency median", "latency", [fmt_time(m.latency.median) for m in ms]),
        ("latency p90", "", [fmt_time(m.latency.p90) for m in ms]),
        ("throughput (items/s)", "throughput", [f"{m.throughput:,.1f}" for m in ms]),
        (
            f"projected on {result.target}"
            + (f" ({result.projection})" if result.projection else ""),
            "projected",
            [fmt_time(m.static.projected_s) for m in ms],
        ),
        ("session creation", "", [fmt_time(m.session_s) for m in ms]),
        (
            "provider / threads",
            "",
            [
                f"{m.provider.removesuffix('ExecutionProvider')} / {m.threads or 'ORT default'}"
                for m in ms
            ],
        ),
    ]
    if any(m.device_bytes for m in ms):
        spec.insert(6, ("device memory", "", [fmt_bytes(m.device_bytes) for m in ms]))
    rows = [
        (label, *(cell(i, v, key) if key else v for i, v in enumerate(values)))
        for label, key, values in spec
    ]
    accs = [m.accuracy for m in ms]
    if any(a is not None for a in accs):
        keys = sorted({k for a in accs if a is not None for k in a.metrics}, key=_metric_order)
        for k in keys:
            vals = []
            for i, a in enumerate(accs):
                v = a.metrics.get(k) if a is not None else None
                text = fmt_pct(v)
                base = accs[0].metrics.get(k) if accs[0] is not None else None
                if i and v is not None and base is not None:
                    text += f" ({100 * (v - base):+.1f} pts)"
                vals.append(text)
            rows.append((_METRIC_NAMES.get(k, k), *vals))
    headers = ("", *(f"{m.name} [{m.runtime}]" if m.runtime != "onnxfit" else m.name for m in ms))
    caption = (
        f"batch {result.batch}; {result.rounds} rounds x {result.per_round} runs per model, "
        f"interleaved ({'fresh process per model' if result.isolated else 'one process'}); "
        "ratios vs the first model, >1 is better (size, memory, latency: first/this; "
        "throughput: this/first)"
    )
    return Rows("compare", headers, tuple(rows), caption)


_METRIC_NAMES = {
    "top1": "top-1 accuracy",
    "top5": "top-5 accuracy",
    "map50": "mAP@0.5",
    "map50_95": "mAP@0.5:0.95",
}


def _metric_order(k: str) -> int:
    return list(_METRIC_NAMES).index(k) if k in _METRIC_NAMES else 99


# ------------------------------------------------------------------------------ tracker


def tracker_rows(stats: Sequence[SectionStats] | dict[str, SectionStats]) -> Rows:
    """One row per section, children indented under their parent."""
    items = list(stats.values()) if isinstance(stats, dict) else list(stats)
    has_gpu = any(s.gpu is not None for s in items)
    headers = ["section", "count", "total", "min", "median", "mean", "p90", "p99", "max"]
    if has_gpu:
        headers += ["GPU median", "GPU p90"]
    rows = []
    for s in items:
        w = s.wall
        row = ["  " * s.depth + s.leaf, str(w.count)]
        row += [fmt_time(v) for v in (w.total, w.min, w.median, w.mean, w.p90, w.p99, w.max)]
        if has_gpu:
            row += [fmt_time(s.gpu.median), fmt_time(s.gpu.p90)] if s.gpu else ["-", "-"]
        rows.append(tuple(row))
    return Rows("sections", tuple(headers), tuple(rows))


# --------------------------------------------------------------------------- renderers


def rich_table(t: Rows) -> Table:
    """A rich table of ``t`` (first column left-aligned, the rest right-aligned)."""
    table = Table(title=t.title, caption=t.caption or None, caption_justify="left")
    for i, h in enumerate(t.headers):
        table.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
    for row in t.rows:
        table.add_row(*row)
    return table


def markdown(t: Rows) -> str:
    """``t`` as a Markdown section: a bold title, the table, the caption in italics."""
    out = f"**{t.title}**\n\n" + markdown_table(t.headers, [list(r) for r in t.rows])
    if t.caption:
        out += f"\n_{t.caption}_\n"
    return out


def bench_tables(result: BenchResult, *, top: int = 15) -> list[Rows]:
    """Every table of a bench result: the batches, then each batch's profile."""
    tables = [bench_rows(result), bench_memory_rows(result)]
    for b in result.batches:
        if b.profile is not None:
            prof = profile_rows(b.profile, top=top)
            tables.append(
                Rows(f"batch {b.batch}: {prof.title}", prof.headers, prof.rows, prof.caption)
            )
            tables.append(op_type_rows(b.profile))
    return tables


def render_bench(result: BenchResult, *, top: int = 15) -> RenderableType:
    """The rich rendering of a bench result (tables + notes)."""
    parts: list[RenderableType] = [rich_table(t) for t in bench_tables(result, top=top)]
    parts += [Text(f"note: {n}", style="yellow") for n in result.notes]
    return Group(*parts)


def bench_markdown(result: BenchResult, *, top: int = 15) -> str:
    body = "\n".join(markdown(t) for t in bench_tables(result, top=top))
    return body + "".join(f"\n- note: {n}" for n in result.notes) + ("\n" if result.notes else "")


def layer_lines(result: CompareResult) -> list[str]:
    """The layer error tables (``--layers K``) as text lines."""
    first = result.models[0].name if result.models else ""
    lines = []
    for name, rows in result.layer_errors.items():
        lines.append(f"layer errors of {name} vs {first} (top {len(rows)} by error added):")
        lines += [
            f"  {r['node']} ({r['op_type']}): added {r['added']:.4f}, rel error "
            f"{r['rel_error']:.4f}, cosine {r['cosine']:.5f}"
            for r in rows
        ]
    return lines


def render_compare(result: CompareResult) -> RenderableType:
    parts: list[RenderableType] = [rich_table(compare_rows(result))]
    parts += [Text(line) for line in layer_lines(result)]
    parts += [Text(f"note: {n}", style="yellow") for n in result.notes]
    return Group(*parts)


def compare_markdown(result: CompareResult) -> str:
    body = markdown(compare_rows(result))
    body += "".join(f"\n- {line.strip()}" for line in layer_lines(result))
    return body + "".join(f"\n- note: {n}" for n in result.notes) + ("\n" if result.notes else "")


def machine_rows(machine: dict) -> Rows:
    """The machine description as (field, value) rows."""
    rows = tuple(
        (
            k,
            ", ".join(map(str, v))
            if isinstance(v, list)
            else fmt_bytes(v)
            if k.endswith("bytes")
            else str(v),
        )
        for k, v in machine.items()
    )
    return Rows("machine", ("", "value"), rows)
