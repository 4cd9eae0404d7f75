"""Timing on a shared host: how long a run waited for a core while other processes held it.

Linux keeps, per thread, the time it spent runnable but waiting in a run queue
(``/proc/self/task/<tid>/schedstat``, second field, nanoseconds). On a host shared with other
work (this project's 2-core CI and development machine runs several jobs at a load of 5-10),
a run's wall time is its own latency plus that wait; :func:`timed_runs` measures both, so that a
calibration can fit the latency the device gives a run that has its cores to itself
(``wall - queued``), whatever else the host was doing. The wait counted is that of the thread
that calls the session, which is on the critical path of every run. With several intra-op
threads, ORT shares a parallel kernel's work out dynamically, so a helper thread that waited
for a core had its share done by the others: its wait is not counted (counting it, as the
largest wait of any thread, took off more than the run lost: faster-than-possible latencies
on this host), but such a run was slower than one with every core free, so on a loaded host a
multi-threaded "latency with the cores to itself" lies between the uncontended latencies at
that thread count and at one thread. Exact for one thread. Where schedstat is missing (not
Linux, or a kernel without it) the wait reads 0 and nothing is corrected.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

_TASKS = Path("/proc/self/task")


def run_queue_ns(threads: Iterable[str] | None = None) -> dict[str, int]:
    """Per thread of this process (``threads``: those thread ids only): nanoseconds spent
    waiting for a core so far ({} if unknown)."""
    out: dict[str, int] = {}
    try:
        tids = list(threads) if threads is not None else os.listdir(_TASKS)
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
    increase of any one thread read."""
    return max((after[t] - before.get(t, 0) for t in after), default=0) / 1e9


def timed_runs(run: Callable[[], object], n: int) -> tuple[list[float], list[float]]:
    """Call ``run`` ``n`` times: (wall seconds, seconds the calling thread waited for a core)
    of each call."""
    me = [str(threading.get_native_id())]
    walls: list[float] = []
    queued: list[float] = []
    for _ in range(n):
        q0 = run_queue_ns(me)
        t0 = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t0)
        queued.append(queued_between(q0, run_queue_ns(me)))
    return walls, queued
