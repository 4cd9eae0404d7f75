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
    v = result.verification
    if v.reference_accuracy:
        ref, cand = v.reference_accuracy, v.candidate_accuracy
        before = " / ".join(_pct(ref.get(k)) for k in ("top1", "top5") if k in ref)
        after = " / ".join(_pct(cand.get(k)) for k in ("top1", "top5") if k in cand)
        drop = v.accuracy_drop or 0.0
        return ("top-1 / top-5 accuracy", before, after, f"{-drop:+.2f} pt top-1")
    if v.agreement is not None:
        what = "top-1 agreement" if v.task == "classify" else "top-box agreement"
        return (what, "reference", _pct(v.agreement), f"cosine min {v.cosine_min:.5f}")
    return ("output cosine (worst)", "reference", f"{v.cosine_min:.6f}", "-")


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
        f"verification: {result.gate.describe()} -> {'PASS' if result.gate.passed else 'FAIL'}",
        f"  max abs error {v.max_abs_error:.4g}, max rel error {v.max_rel_error:.4g}, "
        f"cosine min {v.cosine_min:.6f} ({v.samples} samples vs the original)",
        f"  data: {result.data.get('verification')}"
        + (" [SYNTHETIC]" if result.data.get("synthetic") else ""),
    ]
    if result.data.get("calibration") != result.data.get("verification"):
        lines.append(f"  calibration: {result.data.get('calibration')}")
    gv = result.gate_verification
    if gv is not None:
        lines.append(
            f"  judged vs the {result.gate.reference}: cosine min {gv.cosine_min:.6f}, "
            f"agreement {_pct(gv.agreement)}"
            + (f", top-1 drop {gv.accuracy_drop:.2f} pt" if gv.accuracy_drop is not None else "")
        )
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
    from onnxfit.report.prune import scan_lines

    lines += scan_lines(result.passes)  # the pruning budget's sensitivity scan, if it ran
    lines += fit_lines(result)
    lines.append(f"wrote {result.output}, {result.report_path}, {result.deploy_path}")
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


def render_optimize(result: OptimizeResult) -> RenderableType:
    """The before/after table and the details below it, for the console."""
    table = Table(title=f"{result.model} -> {result.output} ({result.target}, {result.precision})")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in comparison_rows(result):
        table.add_row(*row)
    return Group(table, Text("\n".join(detail_lines(result))))


def to_markdown(result: OptimizeResult) -> str:
    """The before/after table and details as Markdown."""
    head = f"### {result.model} -> {result.output} ({result.target}, {result.precision})\n\n"
    table = markdown_table(HEADERS, comparison_rows(result))
    details = "\n".join(f"- {line.strip()}" for line in detail_lines(result))
    return head + table + "\n" + details + "\n"


def to_json(result: OptimizeResult) -> dict[str, Any]:
    """The full result as a JSON-ready dict (what ``OUT.report.json`` holds)."""
    return result.to_dict()
