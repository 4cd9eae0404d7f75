"""Formatting helpers shared by every renderer: sizes, times, ratios, Markdown tables."""

from __future__ import annotations

from collections.abc import Sequence

MIB = 1024 * 1024


def fmt_bytes(n: float | None) -> str:
    """Bytes as MiB with two decimals (KiB below 1 MiB); '-' for None."""
    if n is None:
        return "-"
    if abs(n) < MIB:
        return f"{n / 1024:.1f} KiB"
    if abs(n) >= 1024 * MIB:
        return f"{n / (1024 * MIB):.2f} GiB"
    return f"{n / MIB:.2f} MiB"


def fmt_time(seconds: float | None) -> str:
    """Seconds as ms (µs below 0.1 ms); '-' for None."""
    if seconds is None:
        return "-"
    if seconds < 1e-4:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


def fmt_count(n: float | None) -> str:
    """A count with thousands separators; '-' for None."""
    return "-" if n is None else f"{n:,.0f}"


def fmt_ratio(before: float | None, after: float | None) -> str:
    """``before / after`` as '2.00x' (how many times smaller/faster); '-' if unknown."""
    if not before or not after:
        return "-"
    return f"{before / after:.2f}x"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
