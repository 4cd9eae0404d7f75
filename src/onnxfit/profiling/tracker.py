"""Tracker: named, nested timing sections with order statistics, wall and (optionally) GPU time.

::

    tracker = Tracker()
    with tracker.section("preprocess"):
        ...
    tracker.start("infer")
    with tracker.section("run"):          # recorded as "infer/run"
        session.run(feeds)
    tracker.end("infer")
    tracker.stats()["infer/run"].median

* Sections nest per thread: a section opened inside another is recorded under the
  hierarchical name ``outer/inner``. ``start(name)`` / ``end(name)`` are the same thing without
  a ``with`` block; ``end`` must close the innermost open section (else :class:`InputError`).
* Every section keeps all its samples; :meth:`stats` gives count, total, min, median, mean, p90,
  p99, max (percentiles by linear interpolation, see :mod:`onnxfit.profiling.stats`).
* Wall time is ``time.perf_counter``. GPU time comes from a :class:`GpuTimer` when one is given
  (``gpu="auto"`` picks CUDA events through PyTorch when ``torch.cuda`` is available): events are
  recorded on the current CUDA stream around the section and read back lazily in :meth:`stats`,
  so timing adds no synchronisation. For onnxruntime's CUDA provider the events only bracket its
  kernels when ORT runs on that stream (pass ``user_compute_stream``; see
  :func:`cuda_stream_options`). Without a GPU timer, ORT's own run-level profile
  (:mod:`onnxfit.profiling.ortprofile`) is the device-side figure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from onnxfit.errors import InputError
from onnxfit.profiling.stats import Summary, summarize

logger = logging.getLogger(__name__)

SEP = "/"


class GpuTimer(Protocol):
    """Device-side timing: ``begin`` and ``finish`` mark a section, ``elapsed`` reads it (s)."""

    name: str

    def begin(self) -> Any: ...

    def finish(self, token: Any) -> Any: ...

    def elapsed(self, token: Any) -> float: ...


class TorchCudaTimer:
    """CUDA events (``torch.cuda.Event(enable_timing=True)``) on the current stream."""

    name = "cuda-events"

    def __init__(self) -> None:
        import torch

        self._torch = torch

    def begin(self) -> Any:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        return [ev, None]

    def finish(self, token: Any) -> Any:
        ev = self._torch.cuda.Event(enable_timing=True)
        ev.record()
        token[1] = ev
        return token

    def elapsed(self, token: Any) -> float:
        start, stop = token
        stop.synchronize()
        return float(start.elapsed_time(stop)) / 1e3


def cuda_timer() -> GpuTimer | None:
    """A :class:`TorchCudaTimer` when PyTorch with a CUDA device is importable, else None."""
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
    except Exception:  # broken driver installs raise here
        return None
    return TorchCudaTimer()


def cuda_stream_options() -> dict[str, str]:
    """CUDA provider options that make ORT run on PyTorch's current stream (so that events
    recorded there bracket ORT's kernels); empty when PyTorch/CUDA is absent."""
    if cuda_timer() is None:
        return {}
    import torch

    return {"user_compute_stream": str(torch.cuda.current_stream().cuda_stream)}


@dataclass(frozen=True)
class SectionStats:
    """Statistics of one section: hierarchical ``name``, its ``depth`` and ``parent``."""

    name: str
    depth: int
    parent: str | None
    wall: Summary
    gpu: Summary | None = None

    @property
    def leaf(self) -> str:
        return self.name.rsplit(SEP, 1)[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "depth": self.depth,
            "parent": self.parent,
            "wall": self.wall.to_dict(),
            "gpu": self.gpu.to_dict() if self.gpu is not None else None,
        }


class Tracker:
    """Named timing sections; see the module docstring. Thread-safe; nesting is per thread."""

    def __init__(
        self,
        *,
        gpu: GpuTimer | Literal["auto"] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self._clock = clock
        self._gpu: GpuTimer | None = cuda_timer() if gpu == "auto" else gpu  # type: ignore[assignment]
        self._lock = threading.Lock()
        self._local = threading.local()
        self._wall: dict[str, list[float]] = {}
        self._gpu_tokens: dict[str, list[Any]] = {}

    @property
    def gpu_timer(self) -> str | None:
        """Name of the GPU timer in use, or None."""
        return self._gpu.name if self._gpu is not None else None

    def _stack(self) -> list[tuple[str, float, Any]]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    # -- recording ------------------------------------------------------------------------
    def start(self, name: str) -> None:
        """Open section ``name`` (nested under the innermost open one of this thread)."""
        if not name or SEP in name:
            raise InputError(f"bad section name {name!r}", hint=f"a non-empty name without {SEP!r}")
        stack = self._stack()
        full = stack[-1][0] + SEP + name if stack else name
        token = self._gpu.begin() if self._gpu is not None else None
        stack.append((full, self._clock(), token))

    def end(self, name: str | None = None) -> float:
        """Close the innermost open section (which must be ``name`` when given); its wall time."""
        now = self._clock()
        stack = self._stack()
        if not stack:
            raise InputError(f"end({name!r}) with no open section")
        full, t0, token = stack[-1]
        if name is not None and full.rsplit(SEP, 1)[-1] != name:
            raise InputError(
                f"end({name!r}) but the innermost open section is {full!r}",
                hint="close sections in the reverse order they were opened",
            )
        stack.pop()
        if token is not None and self._gpu is not None:
            token = self._gpu.finish(token)
        elapsed = now - t0
        self._record(full, elapsed, token)
        return elapsed

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        """``with tracker.section(name): ...`` — a start/end pair, closed even on exceptions."""
        self.start(name)
        try:
            yield
        finally:
            self.end(name)

    def add(self, name: str, seconds: float) -> None:
        """Record a time measured elsewhere under ``name`` (a full, possibly nested, name)."""
        if seconds < 0 or seconds != seconds:
            raise InputError(f"section {name!r}: time must be >= 0, given {seconds!r}")
        self._record(name, float(seconds), None)

    def _record(self, full: str, elapsed: float, token: Any) -> None:
        with self._lock:
            self._wall.setdefault(full, []).append(elapsed)
            if token is not None:
                self._gpu_tokens.setdefault(full, []).append(token)

    def reset(self) -> None:
        """Forget every sample (open sections of other threads stay open)."""
        with self._lock:
            self._wall.clear()
            self._gpu_tokens.clear()

    # -- reading --------------------------------------------------------------------------
    def samples(self, name: str) -> list[float]:
        """The wall-time samples of section ``name`` (a copy; empty when never closed)."""
        with self._lock:
            return list(self._wall.get(name, ()))

    def names(self) -> list[str]:
        """Section names in the order they were first closed, parents before their children."""
        with self._lock:
            seen = list(self._wall)
        return sorted(seen, key=lambda n: _order_key(n, seen))

    def stats(self) -> dict[str, SectionStats]:
        """Per-section statistics, parents listed before their children."""
        with self._lock:
            wall = {k: list(v) for k, v in self._wall.items()}
            tokens = {k: list(v) for k, v in self._gpu_tokens.items()}
        out: dict[str, SectionStats] = {}
        for name in sorted(wall, key=lambda n: _order_key(n, list(wall))):
            gpu = None
            if tokens.get(name) and self._gpu is not None:
                gpu = summarize(self._gpu.elapsed(t) for t in tokens[name])
            parent = name.rsplit(SEP, 1)[0] if SEP in name else None
            out[name] = SectionStats(name, name.count(SEP), parent, summarize(wall[name]), gpu)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu_timer": self.gpu_timer,
            "sections": [s.to_dict() for s in self.stats().values()],
        }


def _order_key(name: str, first_seen: list[str]) -> tuple[int, ...]:
    """Sort key that keeps a parent before its children and siblings in first-seen order."""
    parts = name.split(SEP)
    key = []
    for i in range(1, len(parts) + 1):
        prefix = SEP.join(parts[:i])
        key.append(first_seen.index(prefix) if prefix in first_seen else len(first_seen))
    return tuple(key)
