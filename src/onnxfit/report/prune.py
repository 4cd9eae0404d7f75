"""Rendering of pruning results: the sensitivity scan of the budget mode as text / Markdown."""

from __future__ import annotations

from collections.abc import Sequence

from onnxfit.passes.base import PassReport
from onnxfit.pruning.budget import SensitivityScan
from onnxfit.report.common import markdown_table


def scan_lines(passes: Sequence[PassReport]) -> list[str]:
    """Lines for the optimize report: each pruning pass's scan rows (``layer (size): drop at
    each ratio -> chosen ratio``), when the budget mode ran."""
    lines: list[str] = []
    for p in passes:
        rows = p.stats.get("scan")
        if isinstance(rows, list) and rows:
            lines.append(
                f"{p.name} sensitivity scan ({p.stats.get('measure')} drop in pts when each "
                "layer alone is pruned at each ratio -> ratio chosen):"
            )
            lines += [f"  {row}" for row in rows]
    return lines


def scan_markdown(scan: SensitivityScan, chosen: dict[str, float] | None = None) -> str:
    """The scan as a Markdown table (drop in points per ratio, and the chosen ratio)."""
    headers = ["layer", "size", *(f"{r:g}" for r in scan.ratios), "chosen"]
    rows = []
    for row in scan.rows:
        drops = ["-" if d is None else f"{d:.2f}" for d in row.drops(scan.baseline)]
        pick = (chosen or {}).get(row.layer, 0.0)
        rows.append([row.layer, f"{row.size:,}", *drops, f"{pick:g}"])
    return markdown_table(headers, rows)
