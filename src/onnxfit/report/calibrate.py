"""Rendering of :class:`~onnxfit.profiling.calibrate.CalibrateResult`: tables and Markdown."""

from __future__ import annotations

from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxfit.profiling.calibrate import CalibrateResult
from onnxfit.report.common import markdown_table

_OPS = ("class", "precision", "kernels", "% of peak", "% of bandwidth", "per kernel")
_FIT = ("model", "measured", "projected", "error")


def op_rows(result: CalibrateResult) -> list[list[str]]:
    """One row per op class and precision: achieved fractions and the cost of a kernel."""
    rows = []
    for cls, per_prec in sorted(result.table["ops"].items()):
        for prec, f in sorted(per_prec.items()):
            rows.append(
                [
                    cls,
                    prec,
                    str(f["samples"]),
                    f"{100 * f['compute_efficiency']:.1f}",
                    f"{100 * f['bandwidth_efficiency']:.1f}",
                    f"{f['overhead_s'] * 1e6:.1f} µs",
                ]
            )
    return rows


def fit_rows(rows: list[dict[str, Any]], key: str = "projected_s", err: str = "error") -> list:
    return [
        [
            r["model"],
            f"{r['measured_s'] * 1e3:.3f} ms",
            f"{r[key] * 1e3:.3f} ms",
            f"{100 * r[err]:+.1f} %",
        ]
        for r in rows
    ]


def summary_lines(result: CalibrateResult) -> list[str]:
    d = result.to_dict()
    t = result.table
    fe = d["fitted_errors"]
    lines = [
        f"calibrated {result.run.provider} ({result.run.threads} thread(s), onnxruntime "
        f"{result.run.ort_version}) on {len(result.run.models)} graphs; peaks and bandwidth "
        f"relative to target {result.run.base}",
        f"cost per run {t['run_s'] * 1e6:.1f} µs; profiler cost taken off each kernel "
        f"{t.get('profiler_per_kernel_s', 0.0) * 1e6:.2f} µs; fused pairs: {len(t['fused'])}",
        *(
            [
                f"host<->device copies of the graph's inputs and outputs at "
                f"{t['transfer_bandwidth'] / 1e9:.2f} GB/s; weights read per run at "
                + (
                    f"{t['weight_bandwidth'] / 1e9:.1f} GB/s"
                    if t.get("weight_bandwidth")
                    else "no extra cost"
                )
            ]
            if t.get("transfer_bandwidth")
            else []
        ),
        f"in-sample (fit on every graph): median |error| {100 * fe['median_abs']:.1f} %, "
        f"{100 * fe['within_20']:.0f} % within ±20 %",
    ]
    if result.validation is not None:
        b, a = d["validation_before"], d["validation_after"]
        lines.append(
            f"leave-one-model-out ({a['n']} models): median |error| "
            f"{100 * b['median_abs']:.1f} % uncalibrated -> {100 * a['median_abs']:.1f} % "
            f"calibrated; within ±10 %: {100 * b['within_10']:.0f} -> "
            f"{100 * a['within_10']:.0f} %; within ±20 %: {100 * b['within_20']:.0f} -> "
            f"{100 * a['within_20']:.0f} %"
        )
    lines.append(f"wrote {result.output} (use it as --target {result.output})")
    return lines


def render_calibrate(result: CalibrateResult) -> RenderableType:
    ops = Table(title=Text("What this device achieves, per op class"))
    for col in _OPS:
        ops.add_column(col, justify="left" if col in ("class", "precision") else "right")
    for row in op_rows(result):
        ops.add_row(*row)
    fitted = Table(title=Text("Models: measured vs calibrated projection (in-sample)"))
    for col in _FIT:
        fitted.add_column(col, justify="left" if col == "model" else "right")
    for row in fit_rows(result.fitted):
        fitted.add_row(*row)
    return Group(ops, fitted, Text("\n".join(summary_lines(result))))


def to_markdown(result: CalibrateResult) -> str:
    out = [f"## onnxfit calibrate: `{result.output}`\n", markdown_table(_OPS, op_rows(result))]
    out += ["", markdown_table(_FIT, fit_rows(result.fitted))]
    out += ["", *(f"- {line}" for line in summary_lines(result))]
    return "\n".join(out) + "\n"
