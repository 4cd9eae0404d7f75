"""Rendering of target profiles."""

from __future__ import annotations

from collections.abc import Sequence

from rich.table import Table

from onnxfit.report.common import fmt_time
from onnxfit.targets import Target


def targets_table(targets: Sequence[Target]) -> Table:
    """One row per target: throughput per precision, bandwidth, budget, cores, providers."""
    table = Table(title="Targets")
    for col in (
        "name",
        "kind",
        "FP32 TFLOPS",
        "FP16",
        "INT8 TOPS",
        "GB/s",
        "budget GB",
        "cores",
        "default",
        "dispatch",
        "providers",
    ):
        table.add_column(col)
    for t in targets:
        table.add_row(
            t.name,
            t.device_kind,
            f"{t.peak_fp32 / 1e12:.2f}",
            f"{t.peak_fp16 / 1e12:.2f}",
            f"{t.peak_int8 / 1e12:.2f}",
            f"{t.memory_bandwidth / 1e9:.0f}",
            f"{t.memory_budget / 1e9:.1f}",
            str(t.cpu_cores),
            t.default_precision,
            fmt_time(t.dispatch_overhead_s),
            ", ".join(p.removesuffix("ExecutionProvider") for p in t.providers),
        )
    return table
