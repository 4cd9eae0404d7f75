"""The fuzz summary: counts per mutation class and verdict, peak RSS, wall time, failures."""

from __future__ import annotations

import json
import shlex
from collections import Counter, defaultdict
from collections.abc import Sequence

from fuzz.runner import PASS, SEVERITY, CaseResult

_COLUMNS = (
    "succeeded",
    "refused",
    "traceback",
    "hang",
    "crash",
    "rss",
    "leftover",
    "input_changed",
    "bad_error",
)


def _arg(a: str | bytes) -> str:
    return shlex.quote(a if isinstance(a, str) else repr(a))


def counts(results: Sequence[CaseResult]) -> dict[str, Counter[str]]:
    """Class -> verdict counts."""
    table: dict[str, Counter[str]] = defaultdict(Counter)
    for cr in results:
        table[cr.case.klass][cr.verdict] += 1
    return table


def _table(results: Sequence[CaseResult], kind: str) -> list[str]:
    rows = [cr for cr in results if cr.case.kind == kind]
    if not rows:
        return []
    head = ["class", "cases", *_COLUMNS, "optimize ran", "max RSS MiB", "slowest s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    by_class: dict[str, list[CaseResult]] = defaultdict(list)
    for cr in rows:
        by_class[cr.case.klass].append(cr)
    total: Counter[str] = Counter()
    for klass in sorted(by_class):
        group = by_class[klass]
        c = Counter(cr.verdict for cr in group)
        total.update(c)
        optimized = sum(1 for cr in group if any(r.argv[0] == "optimize" for r in cr.results))
        total["_opt"] += optimized
        rss = max(cr.max_rss for cr in group) / 2**20
        slowest = max((r.wall_s for cr in group for r in cr.results), default=0.0)
        cells = [
            klass,
            str(len(group)),
            *(str(c[v]) for v in _COLUMNS),
            str(optimized) if kind == "model" else "-",
            f"{rss:.0f}",
            f"{slowest:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    rss_all = max(cr.max_rss for cr in rows) / 2**20
    cells = [
        "**all**",
        str(len(rows)),
        *(str(total[v]) for v in _COLUMNS),
        str(total["_opt"]) if kind == "model" else "-",
        f"{rss_all:.0f}",
        "",
    ]
    lines.append("| " + " | ".join(cells) + " |")
    return lines


def failures(results: Sequence[CaseResult]) -> list[CaseResult]:
    bad = [cr for cr in results if cr.verdict not in PASS]
    return sorted(bad, key=lambda cr: (SEVERITY.index(cr.verdict), cr.case.id))


def render(
    results: Sequence[CaseResult],
    *,
    command: str,
    seed: int,
    jobs: int,
    mode: str,
    wall_s: float,
    host: str,
) -> str:
    """The Markdown summary written to ``benchmarks/results/fuzz.md``."""
    n_models = sum(1 for cr in results if cr.case.kind == "model")
    n_images = len(results) - n_models
    bad = failures(results)
    commands = sum(len(cr.results) for cr in results)
    rss = max((cr.max_rss for cr in results), default=0) / 2**20
    lines = [
        "# Fuzz run: mutated models and images through the onnxfit CLI",
        "",
        f"Command: `{command}`  ",
        f"Seed {seed}; {n_models} mutated models, {n_images} mutated image cases, {commands} CLI "
        f"commands; {jobs} in parallel ({mode} mode); wall time {wall_s:.0f} s on {host}.  ",
        f"Result: **{len(bad)} failing cases** (traceback, hang, crash, RSS over 1 GiB, a file "
        f"left under the output name or a changed input); peak RSS of any command "
        f"{rss:.0f} MiB.",
        "",
        "A model case runs `inspect` and, when inspect accepts the model, `optimize --precision "
        "fp16 --measure-runs 0` (the 'optimize ran' column). An image case runs `run` (or "
        "`eval` for `eval_labels`). A case passes when every command exits 0 (*succeeded*) or "
        "exits 2/3 with one `error:` line and no traceback (*refused*); see tests/fuzz/runner.py.",
        "",
        "## Models",
        "",
        *_table(results, "model"),
        "",
        "## Images",
        "",
        *_table(results, "image"),
        "",
    ]
    if bad:
        lines += ["## Failures", ""]
        for cr in bad[:40]:
            worst = min(cr.results, key=lambda r: SEVERITY.index(r.verdict))
            lines.append(
                f"- `{cr.case.id}` {cr.case.klass} ({cr.case.detail}): **{worst.verdict}** "
                f"— {worst.why}; `onnxfit {' '.join(_arg(a) for a in worst.argv)}`"
            )
        if len(bad) > 40:
            lines.append(f"- ... and {len(bad) - 40} more (see the JSON lines log)")
        lines.append("")
    return "\n".join(lines)


def log_line(cr: CaseResult) -> str:
    """One JSON line per case (the failures log)."""
    return json.dumps(
        {
            "id": cr.case.id,
            "class": cr.case.klass,
            "detail": cr.case.detail,
            "verdict": cr.verdict,
            "folder": str(cr.case.folder),
            "commands": [
                {
                    "argv": [a if isinstance(a, str) else repr(a) for a in r.argv],
                    "verdict": r.verdict,
                    "code": r.code,
                    "wall_s": round(r.wall_s, 2),
                    "max_rss_mib": round(r.max_rss / 2**20, 1),
                    "why": r.why,
                    "stderr_tail": r.stderr_tail if r.verdict not in PASS else "",
                }
                for r in cr.results
            ],
        },
        ensure_ascii=False,
    )
