"""ResourceManager: keep several models and buffers inside one memory budget.

Every resource has a :class:`Priority` and a size estimate (a model's weights + activation arena +
inputs/outputs from :func:`onnxfit.analysis.memory.estimate_runtime_memory`; a buffer's bytes).
Only *loaded* resources count against the budget. Admitting one evicts LOW, then MEDIUM
resources, least recently used first, to keep ``low_threshold`` (20 %) / ``critical_threshold``
(10 %) of the budget free; a request that still does not fit is refused with
:class:`~onnxfit.errors.BudgetExceededError` naming the largest holders, and *nothing* is
evicted; a CRITICAL request is admitted anyway, and logged (WARNING) as over budget. That policy
lives in :mod:`onnxfit.runtime.eviction`; this module keeps the books.

A request never evicts resources of a higher priority than its own (a LOW model does not push out
a MEDIUM one), and never a pinned resource: :meth:`acquire` pins until :meth:`release` (or use
:meth:`use` as a context manager). An evicted model is reloaded by the next :meth:`acquire`.
Every change is reported as an :class:`Event` to ``on_event`` (called on the requesting thread
after the manager's lock is released) and logged. All methods are thread-safe (one RLock).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxfit.errors import BudgetExceededError, InputError
from onnxfit.runtime.eviction import Priority, Resource, mib, plan_admission, refusal_message
from onnxfit.targets import Target, get_target

__all__ = ["Event", "Priority", "ResourceInfo", "ResourceManager", "ResourceStats"]

logger = logging.getLogger(__name__)

EventKind = Literal["loaded", "evicted", "reloaded", "refused", "over_budget", "unloaded"]
ModelSource = str | os.PathLike[str] | ir.Model


@dataclass(frozen=True)
class Event:
    """One change in what the manager holds (sizes in bytes, after the change)."""

    kind: EventKind
    name: str
    size_bytes: int
    priority: Priority
    used_bytes: int
    budget_bytes: int
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "size_bytes": self.size_bytes,
            "priority": self.priority.name,
            "used_bytes": self.used_bytes,
            "budget_bytes": self.budget_bytes,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class ResourceInfo:
    name: str
    kind: str
    priority: str
    size_bytes: int
    loaded: bool
    pinned: bool
    loads: int
    evictions: int


@dataclass(frozen=True)
class ResourceStats:
    """A snapshot of the manager: budget, use, peak, counters and every resource."""

    budget_bytes: int
    used_bytes: int
    free_bytes: int
    peak_bytes: int
    low_threshold: float
    critical_threshold: float
    counts: dict[str, int]
    resources: tuple[ResourceInfo, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "used_bytes": self.used_bytes,
            "free_bytes": self.free_bytes,
            "peak_bytes": self.peak_bytes,
            "low_threshold": self.low_threshold,
            "critical_threshold": self.critical_threshold,
            "counts": dict(self.counts),
            "resources": [r.__dict__.copy() for r in self.resources],
        }


def _default_estimate(model: ModelSource, batch: int) -> int:
    from onnxfit import io
    from onnxfit.analysis.memory import estimate_runtime_memory

    m = model if isinstance(model, ir.Model) else io.load(model)
    return int(estimate_runtime_memory(m, batch=batch))


class ResourceManager:
    """Models and buffers inside a memory budget; see the module docstring for the policy.

    ``budget`` is a byte count, or a target (name or :class:`~onnxfit.targets.Target`) whose
    ``memory_budget`` is used. Models load as ``session_factory(source)``, by default
    ``Session(source, target=target)`` (``target`` defaults to the budget's target, else "cpu").
    """

    def __init__(
        self,
        budget: int | str | Target,
        *,
        low_threshold: float = 0.20,
        critical_threshold: float = 0.10,
        on_event: Callable[[Event], None] | None = None,
        target: str | Target | None = None,
        session_factory: Callable[[ModelSource], Any] | None = None,
    ) -> None:
        if isinstance(budget, int) and not isinstance(budget, bool):
            budget_bytes = budget
            tgt: str | Target = target if target is not None else "cpu"
        elif isinstance(budget, str | Target):
            resolved = get_target(budget)
            budget_bytes = resolved.memory_budget
            tgt = target if target is not None else resolved
        else:
            raise InputError(f"budget must be bytes (int) or a target, got {budget!r}")
        if budget_bytes <= 0:
            raise InputError(f"budget must be positive, got {budget_bytes} bytes")
        if not 0 <= critical_threshold <= low_threshold < 1:
            raise InputError(
                "thresholds must satisfy 0 <= critical_threshold <= low_threshold < 1, got "
                f"critical={critical_threshold}, low={low_threshold}"
            )
        self.budget_bytes = int(budget_bytes)
        self.low_threshold = low_threshold
        self.critical_threshold = critical_threshold
        self.target = tgt
        self._on_event = on_event
        self._factory = session_factory or self._default_factory
        self._lock = threading.RLock()
        self._res: dict[str, Resource] = {}
        self._clock = 0
        self._used = 0
        self._peak = 0
        self._counts = dict.fromkeys(
            ("loaded", "evicted", "reloaded", "refused", "over_budget", "unloaded"), 0
        )

    def _default_factory(self, source: ModelSource) -> Any:
        from onnxfit.runtime.session import Session

        return Session(source, target=self.target)

    # -------------------------------------------------------------------------- registration
    def register_model(
        self,
        name: str,
        model: ModelSource,
        priority: Priority = Priority.MEDIUM,
        *,
        size_bytes: int | None = None,
        batch: int = 1,
        preload: bool = False,
    ) -> int:
        """Register a model (path or IR model) and return its size estimate in bytes.

        Nothing is loaded until :meth:`acquire` (or ``preload=True``). ``size_bytes`` overrides
        the estimate (weights + arena + inputs/outputs at ``batch``).
        """
        size = int(size_bytes) if size_bytes is not None else _default_estimate(model, batch)
        self._register(Resource(name, "model", Priority(priority), size, source=model))
        if preload:
            self.acquire(name, pin=False)
        return size

    def register_buffer(
        self,
        name: str,
        shape: int | tuple[int, ...],
        priority: Priority = Priority.LOW,
        *,
        dtype: Any = np.uint8,
    ) -> int:
        """Register a plain numpy buffer (allocated zeroed on acquire); returns its bytes."""
        shp = (shape,) if isinstance(shape, int) else tuple(shape)
        dt = np.dtype(dtype)
        size = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        self._register(Resource(name, "buffer", Priority(priority), size, source=(shp, dt)))
        return size

    def _register(self, res: Resource) -> None:
        if res.size < 0:
            raise InputError(f"{res.name!r}: size must be >= 0, got {res.size}")
        with self._lock:
            if res.name in self._res:
                raise InputError(
                    f"a resource named {res.name!r} is already registered",
                    hint="unregister() it first, or pick another name",
                )
            self._res[res.name] = res
        logger.debug("registered %s %r (%s, %s)", res.kind, res.name, res.priority.name, res.size)

    def unregister(self, name: str) -> None:
        """Unload (if loaded) and forget a resource."""
        with self._lock:
            self.unload(name)
            del self._res[name]

    # ------------------------------------------------------------------------------ use
    def acquire(self, name: str, *, pin: bool = True) -> Any:
        """The loaded resource (a Session, or a numpy buffer), loading or reloading it if needed.

        Marks it most recently used. With ``pin=True`` (default) it cannot be evicted until
        :meth:`release`. Raises :class:`BudgetExceededError` when it cannot be admitted.
        """
        events: list[Event] = []
        try:
            with self._lock:
                res = self._get(name)
                if not res.loaded:
                    self._admit(res, events)
                    try:
                        res.obj = self._load(res)
                    except BaseException:
                        self._used -= res.size
                        raise
                    res.loaded = True
                    res.loads += 1
                    kind: EventKind = "reloaded" if res.loads > 1 else "loaded"
                    self._peak = max(self._peak, self._used)
                    events.append(self._event(kind, res))
                self._clock += 1
                res.last_used = self._clock
                if pin:
                    res.pins += 1
                return res.obj
        finally:
            self._emit(events)

    def release(self, name: str) -> None:
        """Undo one :meth:`acquire` pin (the resource stays loaded, now evictable)."""
        with self._lock:
            res = self._get(name)
            if res.pins <= 0:
                raise InputError(f"{name!r} is not acquired; release() without acquire()")
            res.pins -= 1

    @contextlib.contextmanager
    def use(self, name: str) -> Iterator[Any]:
        """``with manager.use("detector") as session:`` — acquire, pinned for the block."""
        obj = self.acquire(name)
        try:
            yield obj
        finally:
            self.release(name)

    def unload(self, name: str) -> None:
        """Free a resource now, pinned or not (a later acquire reloads it)."""
        events: list[Event] = []
        with self._lock:
            res = self._get(name)
            if res.loaded:
                if res.pins:
                    logger.warning("unloading %r while it is acquired (%d pins)", name, res.pins)
                    res.pins = 0
                self._drop(res)
                events.append(self._event("unloaded", res))
        self._emit(events)

    # --------------------------------------------------------------------------- policy
    def _admit(self, res: Resource, events: list[Event]) -> None:
        """Evict per :func:`~onnxfit.runtime.eviction.plan_admission` and reserve ``res.size``,
        or refuse (see the module docstring)."""
        budget = self.budget_bytes
        plan = plan_admission(
            res,
            self._res.values(),
            used=self._used,
            budget=budget,
            low_threshold=self.low_threshold,
            critical_threshold=self.critical_threshold,
        )
        if plan is None:
            self._counts["refused"] += 1
            msg = refusal_message(res, self._res.values(), used=self._used, budget=budget)
            events.append(self._event("refused", res, msg))
            raise BudgetExceededError(
                msg,
                hint="raise the budget, unload or release a holder, lower a holder's priority "
                "to LOW/MEDIUM, or register this one as CRITICAL",
            )
        for r in plan:
            self._drop(r)
            r.evictions += 1
            self._counts["evicted"] += 1
            events.append(self._event("evicted", r, f"to admit {res.name!r}"))
            logger.info(
                "evicted %r (%s, %s) to admit %r", r.name, r.priority.name, mib(r.size), res.name
            )
        self._used += res.size
        if self._used > budget:
            self._counts["over_budget"] += 1
            detail = f"{mib(self._used)} in use > budget {mib(budget)}"
            events.append(self._event("over_budget", res, detail))
            logger.warning("CRITICAL %r admitted over budget: %s", res.name, detail)

    def _load(self, res: Resource) -> Any:
        if res.kind == "buffer":
            shape, dtype = res.source
            return np.zeros(shape, dtype=dtype)
        return self._factory(res.source)

    def _drop(self, res: Resource) -> None:
        # Only dereferenced, never closed: a session still running on another thread stays
        # alive through that thread's reference and is freed when it returns.
        res.obj = None
        res.loaded = False
        self._used -= res.size

    # --------------------------------------------------------------------------- events
    def _event(self, kind: EventKind, res: Resource, detail: str = "") -> Event:
        if kind in ("loaded", "reloaded", "unloaded"):
            self._counts[kind] += 1
        return Event(kind, res.name, res.size, res.priority, self._used, self.budget_bytes, detail)

    def _emit(self, events: list[Event]) -> None:
        for ev in events:
            level = logging.WARNING if ev.kind in ("refused", "over_budget") else logging.INFO
            logger.log(
                level,
                "%s %r (%s)%s",
                ev.kind,
                ev.name,
                mib(ev.size_bytes),
                f": {ev.detail}" if ev.detail else "",
            )
            if self._on_event is not None:
                try:
                    self._on_event(ev)
                except Exception:
                    logger.exception("on_event callback failed for %s", ev)

    # ---------------------------------------------------------------------------- queries
    def _get(self, name: str) -> Resource:
        try:
            return self._res[name]
        except KeyError:
            raise InputError(
                f"no resource named {name!r}", hint=f"registered: {sorted(self._res) or 'none'}"
            ) from None

    @property
    def used_bytes(self) -> int:
        return self._used

    def is_loaded(self, name: str) -> bool:
        with self._lock:
            return self._get(name).loaded

    def stats(self) -> ResourceStats:
        with self._lock:
            infos = tuple(
                ResourceInfo(
                    r.name,
                    r.kind,
                    r.priority.name,
                    r.size,
                    r.loaded,
                    r.pins > 0,
                    r.loads,
                    r.evictions,
                )
                for r in sorted(self._res.values(), key=lambda r: -r.last_used)
            )
            return ResourceStats(
                self.budget_bytes,
                self._used,
                self.budget_bytes - self._used,
                self._peak,
                self.low_threshold,
                self.critical_threshold,
                dict(self._counts),
                infos,
            )
