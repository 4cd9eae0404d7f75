"""Timing on a shared host: how long a run waited for a core while other processes held it.

Linux keeps, per thread, the time it spent runnable but waiting in a run queue
(``/proc/self/task/<tid>/schedstat``, second field, nanoseconds). On a host shared with other
work (this project's 2-core CI and development machine runs several jobs at a load of 5-10),
a run's wall time is its own latency plus that wait; :func:`timed_runs` measures both, so that a
calibration can fit the latency the device gives a run that has its cores to itself
(``wall - queued``), whatever else the host was doing. With several threads the wait counted
is the largest of any one thread's (the threads of a parallel kernel wait for the slowest one,
and waits of different threads overlap): an estimate, exact for one thread. Where schedstat is
missing (not Linux, or a kernel without it) the wait reads 0 and nothing is corrected.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

_TASKS = Path("/proc/self/task")


def run_queue_ns() -> dict[str, int]:
    """Per thread of this process: nanoseconds spent waiting for a core so far ({} if unknown)."""
    out: dict[str, int] = {}
    try:
        tids = os.listdir(_TASKS)
    except OSError:
        return out
    for tid in tids:
        try:
            fields = (_TASKS / tid / "schedstat").read_text().split()
            out[tid] = int(fields[1])
        except (OSError, IndexError, ValueError):
            continue
    return out


def queued_between(before: dict[str, int], after: dict[str, int]) -> float:
    """Seconds of waiting for a core between two :func:`run_queue_ns` readings: the largest
    increase of any one thread (module docstring)."""
    return max((after[t] - before.get(t, 0) for t in after), default=0) / 1e9


def timed_runs(run: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """Call ``run`` ``n`` times: (wall seconds, seconds waiting for a core) of each call."""
    walls: list[float] = []
    queued: list[float] = []
    for _ in range(n):
        q0 = run_queue_ns()
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
        queued.append(queued_between(q0, run_queue_ns()))
    return walls, queued
