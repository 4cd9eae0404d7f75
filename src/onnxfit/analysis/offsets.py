"""Arena offsets for buffers with known lifetimes: greedy by size, and a best-of few orderings.

The algorithm half of the memory plan (the statistics half is :func:`onnxfit.analysis.memory.
tensor_lifetimes`). Input: :class:`TensorLife` records (size, first step, last step); two
buffers *conflict* when their step intervals intersect. Output: one offset per buffer such that
conflicting buffers never share a byte, every offset is a multiple of ``alignment``, and the
arena (max of offset + size) is small.

:func:`greedy_by_size` is the "greedy by size" strategy of TFLite's arena planner (Pisarchyk &
Lee, "Efficient Memory Management for Deep Neural Net Inference", arXiv:2001.03288): largest
buffer first (ties: earlier first use), each into the lowest-offset gap that fits among the
already placed buffers it conflicts with. :func:`plan_offsets` also tries TFLite's best-fit gap
(``SimpleMemoryArena::Allocate``), an order by size x lifetime, and execution order, and keeps the
smallest arena (ties: the first strategy listed), so it is never worse than greedy by size. No
strategy can beat :func:`lower_bound`, the largest sum of live bytes at one step.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxfit.errors import InputError

logger = logging.getLogger(__name__)

STRATEGIES = ("size", "size-bestfit", "size-x-lifetime", "first-use")


@dataclass(frozen=True)
class TensorLife:
    """One arena buffer: ``size_bytes``, written at step ``first``, last read at step ``last``.

    ``values`` names every value sharing the buffer (aliases and in-place results), ``name`` first.
    """

    name: str
    size_bytes: int
    first: int
    last: int
    values: tuple[str, ...] = ()

    def overlaps(self, other: TensorLife) -> bool:
        return self.first <= other.last and other.first <= self.last


def live_profile(lives: Sequence[TensorLife]) -> list[int]:
    """Live bytes at each step 0..max(last) (a buffer is live from ``first`` to ``last``)."""
    if not lives:
        return []
    n = max(t.last for t in lives) + 1
    delta = [0] * (n + 1)
    for t in lives:
        delta[t.first] += t.size_bytes
        delta[t.last + 1] -= t.size_bytes
    out, acc = [], 0
    for d in delta[:n]:
        acc += d
        out.append(acc)
    return out


def lower_bound(lives: Sequence[TensorLife]) -> int:
    """Max over steps of live bytes: no offset assignment of ``lives`` needs less."""
    return max(live_profile(lives), default=0)


def _check_lives(lives: Sequence[TensorLife], alignment: int) -> None:
    if alignment < 1:
        raise InputError(f"alignment must be >= 1, got {alignment}")
    for t in lives:
        if t.size_bytes < 0 or t.first < 0 or t.last < t.first:
            raise InputError(f"bad tensor lifetime {t}", hint="need size >= 0, 0 <= first <= last")


def _place(
    lives: Sequence[TensorLife], order: Sequence[int], alignment: int, best_fit: bool
) -> list[int]:
    """Place ``lives`` in ``order``; each at the lowest (or, best_fit, tightest) fitting gap."""
    n = len(lives)
    first = np.fromiter((t.first for t in lives), np.int64, n)
    last = np.fromiter((t.last for t in lives), np.int64, n)
    size = np.fromiter((t.size_bytes for t in lives), np.int64, n)
    offsets = np.zeros(n, np.int64)
    placed = np.zeros(n, bool)
    a = alignment
    for i in order:
        sel = np.flatnonzero(placed & (last >= first[i]) & (first <= last[i]))
        if sel.size == 0:
            offsets[i] = 0
        else:
            sel = sel[np.argsort(offsets[sel], kind="stable")]
            starts = offsets[sel]
            reach = np.maximum.accumulate(starts + size[sel])
            prev = np.concatenate(([0], reach[:-1]))
            cand = (prev + a - 1) // a * a
            fits = np.flatnonzero(cand + size[i] <= starts)
            if fits.size == 0:
                offsets[i] = (reach[-1] + a - 1) // a * a
            elif best_fit:
                offsets[i] = cand[fits[np.argmin(starts[fits] - prev[fits])]]
            else:
                offsets[i] = cand[fits[0]]
        placed[i] = True
    return [int(o) for o in offsets]


def _order(lives: Sequence[TensorLife], strategy: str) -> list[int]:
    idx = range(len(lives))
    if strategy in ("size", "size-bestfit"):
        return sorted(idx, key=lambda i: (-lives[i].size_bytes, lives[i].first, i))
    if strategy == "size-x-lifetime":
        return sorted(
            idx,
            key=lambda i: (
                -lives[i].size_bytes * (lives[i].last - lives[i].first + 1),
                lives[i].first,
                i,
            ),
        )
    if strategy == "first-use":
        return sorted(idx, key=lambda i: (lives[i].first, -lives[i].size_bytes, i))
    raise InputError(f"unknown strategy {strategy!r}", hint=f"use one of {', '.join(STRATEGIES)}")


def greedy_by_size(lives: Sequence[TensorLife], *, alignment: int = 64) -> list[int]:
    """Offsets (parallel to ``lives``) by greedy-by-size, first fit.

    Buffers are taken largest first (ties: earlier first use); each goes to the lowest offset,
    rounded up to ``alignment``, that does not collide with an already placed buffer whose
    lifetime overlaps its own.
    """
    _check_lives(lives, alignment)
    return _place(lives, _order(lives, "size"), alignment, best_fit=False)


def arena_size(lives: Sequence[TensorLife], offsets: Sequence[int]) -> int:
    return max((o + t.size_bytes for t, o in zip(lives, offsets, strict=True)), default=0)


def plan_offsets(
    lives: Sequence[TensorLife], *, alignment: int = 64, strategies: Sequence[str] = STRATEGIES
) -> tuple[list[int], str]:
    """Best offsets over ``strategies`` (smallest arena; ties: first listed) and its name.

    "size" is :func:`greedy_by_size`; "size-bestfit" the same order into the tightest fitting gap
    (TFLite's ``SimpleMemoryArena``); "size-x-lifetime" orders by size x lifetime; "first-use" in
    execution order. Stops early when an arena equals the lower bound.
    """
    _check_lives(lives, alignment)
    bound = lower_bound(lives)
    best: tuple[int, list[int], str] | None = None
    for s in strategies:
        offsets = _place(lives, _order(lives, s), alignment, best_fit=s == "size-bestfit")
        arena = arena_size(lives, offsets)
        logger.debug("strategy %s: arena %d bytes (lower bound %d)", s, arena, bound)
        if best is None or arena < best[0]:
            best = (arena, offsets, s)
        if arena <= bound:
            break
    if best is None:
        raise InputError("no placement strategy given", hint=f"use some of {STRATEGIES}")
    return best[1], best[2]
