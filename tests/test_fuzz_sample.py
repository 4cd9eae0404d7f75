"""A seeded sample of the fuzz corpus (tests/fuzz) inside ``make test``: mutated models through
``inspect`` and ``optimize --precision fp16``, mutated images through ``run`` / ``eval``.

Most cases run in this process (the CLI's ``main``, ``SystemExit`` caught, any other exception
a failure); a handful run as real ``python -m onnxfit`` subprocesses with the timeout and RSS
watch of ``make fuzz``. Every case must succeed or be refused with one ``error:`` line, leave
its input unchanged and nothing under the output name after a refusal.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fuzz.cases import generate
from fuzz.inprocess import run_case
from fuzz.report import failures
from fuzz.runner import PASS, RSS_LIMIT, run_cases

SEED = 20261203
MODELS, IMAGES = 320, 80
HEAVY = {"runtime_graph", "img_bomb"}


def _explain(bad: list) -> str:  # type: ignore[type-arg]
    lines = []
    for cr in bad[:10]:
        worst = next(r for r in cr.results if r.verdict not in PASS)
        lines.append(f"{cr.case.id} {cr.case.klass} ({cr.case.detail}): {worst.verdict}: "
                     f"{worst.why}\n{worst.stderr_tail}")  # fmt: skip
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fuzz_sample_in_process(tmp_path: Path) -> None:
    cases = generate(tmp_path, SEED, MODELS, IMAGES, real=False)
    assert len(cases) == MODELS + IMAGES
    assert len({c.klass for c in cases}) >= 25  # every mutation class is in the sample
    # the memory-hungry classes run as subprocesses (below): in here they would grow pytest
    results = [run_case(c) for c in cases if c.klass not in HEAVY]
    bad = failures(results)
    assert not bad, _explain(bad)
    verdicts = {cr.verdict for cr in results}
    assert verdicts == {"succeeded", "refused"}  # the sample exercises both outcomes
    assert any(r.argv[0] == "optimize" and r.code == 0 for cr in results for r in cr.results)


def test_fuzz_sample_subprocesses(tmp_path: Path) -> None:
    """A few cases as real ``python -m onnxfit`` runs: exit status, stderr, peak RSS, hangs."""
    cases = generate(tmp_path, SEED, 40, 40, real=False)
    wanted = {"external", "bitflip", "img_odd_files", "img_links", *HEAVY}
    picked: list = []  # type: ignore[type-arg]
    for c in cases:
        if c.klass in wanted:
            wanted.discard(c.klass)
            picked.append(c)
    results = run_cases(picked, jobs=2, mode="spawn")
    assert len(results) == len(picked) >= 5
    bad = failures(results)
    assert not bad, _explain(bad)
    assert all(0 < cr.max_rss < RSS_LIMIT for cr in results)
