"""Rendering of ``onnxfit optimize``: the plan, the before/after table, verification, outputs.

:func:`comparison_rows` is the single source of the before/after table; :func:`render_optimize`
(rich), :func:`to_markdown` and :func:`to_json` render it (JSON: the full result dict).
"""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxfit.optimizer.plan import OptimizePlan
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.report.common import fmt_bytes, fmt_count, fmt_ratio, fmt_time, markdown_table

HEADERS = ("", "before", "after", "before / after")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def _accuracy_row(result: OptimizeResult) -> tuple[str, str, str, str]:
    g = result.gate
    d = g.details
    if g.measure in ("top1_drop", "map50_drop"):
        keys = ("top1", "top5") if g.measure == "top1_drop" else ("map50", "map50_95")
        name = "top-1 / top-5 accuracy" if g.measure == "top1_drop" else "mAP@0.5 / @0.5:0.95"
        before = " / ".join(_pct(d.get(f"reference_{k}")) for k in keys)
        after = " / ".join(_pct(d.get(f"candidate_{k}")) for k in keys)
        head = "top-1" if g.measure == "top1_drop" else "mAP@0.5"
        return (name, before, after, f"{-g.value:+.2f} pt {head}")
    if g.measure == "expected_top1_drop":
        return (
            "expected top-1 drop (no labels)",
            "reference",
            f"{g.value:.3f} pt",
            f"agreement {_pct(d.get('agreement'))}, KL {d.get('mean_kl', 0):.4f}",
        )
    if g.measure == "box_disagreement":
        return ("box disagreement (no labels)", "reference", f"{g.value:.2f} %", "-")
    return ("output cosine (worst)", "reference", f"{g.value:.6f}", "-")


def comparison_rows(result: OptimizeResult) -> list[tuple[str, str, str, str]]:
    """(metric, before, after, ratio) rows of the before/after table."""
    b, a = result.before, result.after
    runs = result.options.get("measure_runs", 0)
    rows = [
        ("precision", b.precision, a.precision, ""),
        ("file size", fmt_bytes(b.file_bytes), fmt_bytes(a.file_bytes), _smaller(b, a)),
        ("parameters", fmt_count(b.params), fmt_count(a.params), fmt_ratio(b.params, a.params)),
        ("GFLOPs", f"{b.flops / 1e9:.3f}", f"{a.flops / 1e9:.3f}", fmt_ratio(b.flops, a.flops)),
        (
            "activation arena",
            fmt_bytes(b.arena_bytes),
            fmt_bytes(a.arena_bytes),
            fmt_ratio(b.arena_bytes, a.arena_bytes),
        ),
        (
            "runtime memory (weights+arena+IO)",
            fmt_bytes(b.runtime_bytes),
            fmt_bytes(a.runtime_bytes),
            fmt_ratio(b.runtime_bytes, a.runtime_bytes),
        ),
        (
            f"projected latency on {result.target} "
            f"({result.projection or _projection(result.target)})",
            fmt_time(b.projected_latency_s),
            fmt_time(a.projected_latency_s),
            fmt_ratio(b.projected_latency_s, a.projected_latency_s),
        ),
        (
            f"measured latency, this host (ORT CPU, median of {runs})",
            fmt_time(b.measured_latency_s),
            fmt_time(a.measured_latency_s),
            fmt_ratio(b.measured_latency_s, a.measured_latency_s),
        ),
        _accuracy_row(result),
    ]
    return rows + achieved_rows(result)


def achieved_rows(result: OptimizeResult) -> list[tuple[str, str, str, str]]:
    """Requested vs achieved: precision share of the compute, sparsity, channels removed."""
    rows = []
    p = result.achieved.get("precision")
    if p is not None:
        flops = "-" if p["flops_share"] is None else f"{100 * p['flops_share']:.1f} % FLOPs"
        rows.append(
            (
                f"compute at {p['precision']} (Conv/Gemm/MatMul)",
                "requested 100 %",
                f"{p['nodes']}/{p['total']} nodes ({100 * p['node_share']:.1f} %), {flops}",
                "",
            )
        )
    for key, label in (("sparsity", "sparsity"), ("channels", "channels removed")):
        a = result.achieved.get(key)
        if a is not None:
            rows.append(
                (
                    f"{label} ({a['of']})",
                    f"requested {a['requested']}",
                    f"{100 * float(a['achieved']):.1f} %",
                    "; ".join(
                        str(x)
                        for x in (
                            a["mode"],
                            a.get("method"),
                            a.get("saves") and f"saves {a['saves']}",
                        )
                        if x
                    ),
                )
            )
    return rows


def _smaller(b: Any, a: Any) -> str:
    if not b.file_bytes or not a.file_bytes:
        return "-"
    return f"{b.file_bytes / a.file_bytes:.2f}x ({100 * a.file_bytes / b.file_bytes:.1f} %)"


def plan_lines(plan: OptimizePlan) -> list[str]:
    """The plan as text lines: precision and why, then the numbered steps."""
    lines = [f"precision: {plan.precision} — {plan.reason}"]
    for i, step in enumerate(plan.steps, 1):
        opts = ", ".join(f"{k}={v}" for k, v in step.options.items())
        lines.append(f"  {i}. {step.name}" + (f" ({opts})" if opts else "") + f": {step.why}")
    lines += [f"note: {n}" for n in plan.notes]
    return lines


def render_plan(plan: OptimizePlan) -> RenderableType:
    """The plan for the console (shown before it runs)."""
    text = Text(f"plan for {plan.target} (input is {plan.model_precision})\n", style="bold")
    text.append("\n".join(plan_lines(plan)))
    return text


def detail_lines(result: OptimizeResult) -> list[str]:
    """Verification, data, back-off, kept-float nodes, passes, outputs, notes."""
    v = result.verification
    lines = [
        f"accuracy gate: {result.gate.describe()} -> {'PASS' if result.gate.passed else 'FAIL'}",
        f"  measure: {result.gate.measure} — {result.gate.rule}",
        f"  outputs vs the original: max abs error {v.max_abs_error:.4g}, max rel error "
        f"{v.max_rel_error:.4g}, cosine min {v.cosine_min:.6f} ({v.samples} samples)",
        f"  data: {result.data.get('verification')}"
        + (" [SYNTHETIC]" if result.data.get("synthetic") else ""),
    ]
    if result.data.get("calibration") != result.data.get("verification"):
        lines.append(f"  calibration: {result.data.get('calibration')}")
    verdict = result.after.verdict
    if verdict is not None:
        lines.append(f"memory: {verdict.line()}")
        if verdict.next_step():
            lines.append(f"  next: {verdict.next_step()}")
    rounds = max(0, len(result.attempts) - 1)
    if rounds:
        lines.append(
            f"back-off: {rounds} round(s); kept in higher precision: "
            + ", ".join(result.kept_higher[:12])
            + (" ..." if len(result.kept_higher) > 12 else "")
        )
    if result.kept_float:
        names = list(result.kept_float)
        lines.append(
            f"kept float ({len(names)}): " + ", ".join(names[:10]) + (" ..." * (len(names) > 10))
        )
    for p in result.passes:
        stats = ", ".join(_stat(k, val) for k, val in p.stats.items() if k != "ops")
        lines.append(f"pass {p.name}{'' if p.modified else ' (no change)'}: {stats}")
    if result.layer_errors:
        lines.append(f"layer errors (top {len(result.layer_errors)} by error added, vs float):")
        for r in result.layer_errors:
            origin = f" [{r['from']}]" if r.get("from") and r["from"] != r["node"] else ""
            lines.append(
                f"  {r['node']} ({r['op_type']}){origin}: added {r['added']:.4f}, "
                f"rel error {r['rel_error']:.4f}, cosine {r['cosine']:.5f}"
            )
    from onnxfit.report.prune import scan_lines

    lines += scan_lines(result.passes)  # the pruning budget's sensitivity scan, if it ran
    lines += fit_lines(result)
    if result.written:
        lines.append(f"wrote {result.output}, {result.report_path}, {result.deploy_path}")
    else:
        lines.append("nothing written")
    lines += [f"note: {n}" for n in result.notes]
    return lines


def _projection(target: str) -> str:
    """The projection label of a target known by name (a built-in: an uncalibrated floor)."""
    from onnxfit.errors import OnnxfitError
    from onnxfit.targets import get_target

    try:
        return get_target(target).projection_label
    except OnnxfitError:
        return "projected"


def fit_lines(result: OptimizeResult) -> list[str]:
    """``FITS`` / ``DOES NOT FIT`` with load and first-run bytes of the optimized model."""
    f = result.after.fit
    if not f:
        return []
    mib = 2**20
    head = "FITS" if f["fits"] else f"DOES NOT FIT (at {f['fails_at']})"
    return [
        f"{head}: first run {f['first_run_bytes'] / mib:.2f} MiB of {f['budget_bytes'] / mib:.2f} "
        f"MiB ({f['budget_source']}); at load {f['load_bytes'] / mib:.2f} MiB; activations "
        f"{f['activations_bytes'] / mib:.2f} MiB ({f['allocator']})"
    ]


def _stat(key: str, value: Any) -> str:
    if isinstance(value, list):
        return f"{key}={len(value)}"
    if isinstance(value, dict):
        return f"{key}=" + "/".join(f"{k}:{v}" for k, v in value.items()) if value else f"{key}=0"
    return f"{key}={value}"


CANDIDATE_HEADERS = ("candidate", "status", "file", "runtime memory", "latency", "gate", "")


def candidate_rows(result: OptimizeResult) -> list[tuple[str, ...]]:
    """The candidate search's table (empty without a search)."""
    rows: list[tuple[str, ...]] = []
    for c in result.candidates:
        if "speed_s" not in c:
            rows.append((c["label"], c["status"], "-", "-", "-", c["gate"], ""))
            continue
        rows.append(
            (
                c["label"],
                c["status"],
                fmt_bytes(c["file_bytes"]),
                fmt_bytes(c["runtime_bytes"]),
                f"{fmt_time(c['speed_s'])} ({c['speed_from']})",
                c["gate"],
                "<- written" if c["chosen"] else "",
            )
        )
    return rows


def render_optimize(result: OptimizeResult) -> RenderableType:
    """The before/after table and the details below it, for the console."""
    table = Table(title=f"{result.model} -> {result.output} ({result.target}, {result.precision})")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in comparison_rows(result):
        table.add_row(*row)
    parts: list[RenderableType] = [table]
    if result.candidates:
        cands = Table(title="candidates (fastest that fits and meets the budget is written)")
        for h in CANDIDATE_HEADERS:
            cands.add_column(h)
        for r in candidate_rows(result):
            cands.add_row(*r)
        parts.append(cands)
    return Group(*parts, Text("\n".join(detail_lines(result))))


def to_markdown(result: OptimizeResult) -> str:
    """The before/after table and details as Markdown."""
    head = f"### {result.model} -> {result.output} ({result.target}, {result.precision})\n\n"
    table = markdown_table(HEADERS, comparison_rows(result))
    if result.candidates:
        table += "\n" + markdown_table(CANDIDATE_HEADERS, candidate_rows(result))
    details = "\n".join(f"- {line.strip()}" for line in detail_lines(result))
    return head + table + "\n" + details + "\n"


def to_json(result: OptimizeResult) -> dict[str, Any]:
    """The full result as a JSON-ready dict (what ``OUT.report.json`` holds)."""
    return result.to_dict()
