"""AsyncLoader: read/decode files in worker threads with bounded concurrency and prefetch.

Guarantees:

* at most ``max_concurrent`` calls of ``load`` run at once (one worker thread each);
* at most ``prefetch`` results are *held* at any time — a worker takes a slot before it starts a
  file and the slot is given back only when the consumer takes that result, so results in
  flight plus results waiting are never more than ``prefetch`` (memory is bounded by
  ``prefetch`` decoded items, however slow the consumer);
* ``ordered=True`` yields in the order of ``paths``; slots are taken in path order, so the
  item the consumer waits for is always already running or done (no deadlock);
  ``ordered=False`` yields whatever finishes first;
* a file whose ``load`` raises is reported (logged, and added to :attr:`AsyncLoader.errors` as a
  :class:`LoadError` with path and reason) and then skipped (``on_error="skip"``) or raised
  (``"raise"``; iteration can continue after it) — it never stalls the stream;
* ``next(timeout)`` / ``timeout=`` raise :class:`TimeoutError` naming the file waited for;
* :meth:`AsyncLoader.close` (also on ``with`` exit and on ``aclose``) stops the workers and joins
  them: no thread is left behind once the ``load`` calls in progress return.

Usable as an iterator and as an async iterator (``async for``); the async side waits on the
event loop without blocking it (workers wake it with ``call_soon_threadsafe``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from onnxfit.errors import InputError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Item(NamedTuple, Generic[T]):
    """One loaded file: its position in ``paths``, its path, and what ``load`` returned."""

    position: int
    path: Path
    value: T


@dataclass(frozen=True)
class LoadError:
    """A file that failed: where it was in ``paths``, its path and why."""

    index: int
    path: Path
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": str(self.path), "reason": self.reason}


class FileLoadError(InputError):
    """Raised by the iterator for a failed file when ``on_error="raise"``."""

    def __init__(self, error: LoadError) -> None:
        super().__init__(f"{error.path}: {error.reason}")
        self.error = error


def read_bytes(path: Path) -> bytes:
    """The default ``load``: the file's bytes."""
    return path.read_bytes()


class _Failed:
    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class AsyncLoader(Generic[T]):
    """Load ``paths`` with ``load`` in background threads; iterate to get :class:`Item` s.

    See the module docstring for the guarantees. ``timeout`` (seconds) bounds each wait of the
    plain iterator and the async iterator; :meth:`next` takes its own. Workers start on the
    first request (or :meth:`start` / ``with``).
    """

    def __init__(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        load: Callable[[Path], T] = read_bytes,  # type: ignore[assignment]
        max_concurrent: int = 2,
        prefetch: int = 3,
        ordered: bool = True,
        on_error: Literal["skip", "raise"] = "skip",
        timeout: float | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise InputError(f"max_concurrent must be >= 1, got {max_concurrent}")
        if prefetch < 1:
            raise InputError(f"prefetch must be >= 1, got {prefetch}")
        if on_error not in ("skip", "raise"):
            raise InputError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
        if timeout is not None and timeout <= 0:
            raise InputError(f"timeout must be > 0 seconds, got {timeout}")
        self.paths = [Path(p) for p in paths]
        self.load = load
        self.max_concurrent = max_concurrent
        self.prefetch = prefetch
        self.ordered = ordered
        self.on_error = on_error
        self.timeout = timeout
        #: every failed file so far, in the order the consumer met them
        self.errors: list[LoadError] = []
        #: the most results ever held at once (in flight + waiting); never above ``prefetch``
        self.peak_held = 0
        self._cond = threading.Condition()
        self._next_start = 0  # next index a worker will take
        self._next_yield = 0  # ordered: next index to hand out
        self._handed = 0  # items handed to the consumer (incl. failures)
        self._held = 0
        self._running: set[int] = set()
        self._done: dict[int, Any] = {}
        self._finished: deque[int] = deque()  # completion order (unordered mode)
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> AsyncLoader[T]:
        """Start the workers (idempotent)."""
        with self._cond:
            if self._closed:
                raise InputError("the loader is closed")
            if self._threads:
                return self
            n = min(self.max_concurrent, self.prefetch, max(1, len(self.paths)))
            for i in range(n):
                t = threading.Thread(target=self._work, name=f"onnxfit-loader-{i}", daemon=True)
                self._threads.append(t)
        for t in self._threads:
            t.start()
        return self

    def close(self, *, timeout: float | None = 10.0) -> bool:
        """Stop the workers and wait for them (up to ``timeout`` s for a ``load`` in progress).

        Returns True when every worker thread has ended. Results not yet consumed are dropped.
        """
        with self._cond:
            self._closed = True
            self._done.clear()
            self._finished.clear()
            self._notify()
            threads = list(self._threads)
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in threads:
            if t is threading.current_thread():
                continue
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in threads if t.is_alive()]
        if alive:
            log.warning("loader workers still busy in load() after close: %s", ", ".join(alive))
        return not alive

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def held(self) -> int:
        """Results in flight plus results waiting for the consumer, right now."""
        return self._held

    def __enter__(self) -> AsyncLoader[T]:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> AsyncLoader[T]:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close without blocking the event loop (the join runs in a helper thread)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def _close() -> None:
            self.close()
            loop.call_soon_threadsafe(_wake, done)

        threading.Thread(target=_close, name="onnxfit-loader-close", daemon=True).start()
        await done

    def __len__(self) -> int:
        return len(self.paths)

    # -- workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (
                    self._next_start < len(self.paths) and self._held >= self.prefetch
                ):
                    self._cond.wait()
                if self._closed or self._next_start >= len(self.paths):
                    return
                idx = self._next_start
                self._next_start += 1
                self._held += 1
                self.peak_held = max(self.peak_held, self._held)
                self._running.add(idx)
            try:
                result: Any = self.load(self.paths[idx])
            except BaseException as exc:  # whatever load raises, the stream must go on
                result = _Failed(_reason(exc))
            with self._cond:
                self._running.discard(idx)
                if self._closed:
                    self._held -= 1
                    return
                self._done[idx] = result
                if not self.ordered:
                    self._finished.append(idx)
                self._notify()

    def _notify(self) -> None:  # call with the lock held
        self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for loop, fut in waiters:
            # RuntimeError: that event loop is closed, nobody waits there any more
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_wake, fut)

    # -- consumer -------------------------------------------------------------------------
    def _take(self) -> tuple[int, Any] | None:
        """With the lock held: the next available (index, result), or None if none yet."""
        if self.ordered:
            if self._next_yield in self._done:
                idx = self._next_yield
                self._next_yield += 1
                return idx, self._done.pop(idx)
            return None
        while self._finished:
            idx = self._finished.popleft()
            if idx in self._done:
                return idx, self._done.pop(idx)
        return None

    def _exhausted(self) -> bool:
        return self._handed >= len(self.paths)

    def _waiting_for(self) -> str:
        if self.ordered and self._next_yield < len(self.paths):
            return str(self.paths[self._next_yield])
        pending = sorted(self._running) or list(range(self._next_start, len(self.paths)))[:1]
        return ", ".join(str(self.paths[i]) for i in pending) or "(nothing)"

    def _deliver(self, idx: int, result: Any) -> Item[T] | None:
        """Outside the lock: turn a result into an Item, or record / raise a failure."""
        if not isinstance(result, _Failed):
            return Item(idx, self.paths[idx], result)
        err = LoadError(idx, self.paths[idx], result.reason)
        self.errors.append(err)
        log.warning("cannot load %s: %s", err.path, err.reason)
        if self.on_error == "raise":
            raise FileLoadError(err)
        return None

    def _release(self) -> None:  # lock held: the consumer took one result
        self._held -= 1
        self._handed += 1
        self._notify()

    def next(self, timeout: float | None = None) -> Item[T]:
        """The next item; ``StopIteration`` at the end; :class:`TimeoutError` naming the file
        waited for if nothing arrives within ``timeout`` seconds (the wait can be retried)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._threads and not self._closed:
            self.start()
        while True:
            with self._cond:
                while True:
                    if self._closed or self._exhausted():
                        raise StopIteration
                    got = self._take()
                    if got is not None:
                        self._release()
                        break
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(
                            f"timed out after {timeout:g} s waiting for {self._waiting_for()}"
                        )
                    self._cond.wait(left)
            item = self._deliver(*got)
            if item is not None:
                return item

    def __iter__(self) -> Iterator[Item[T]]:
        return self

    def __next__(self) -> Item[T]:
        return self.next(self.timeout)

    def __aiter__(self) -> AsyncIterator[Item[T]]:
        return self

    async def __anext__(self) -> Item[T]:
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout is None else loop.time() + self.timeout
        if not self._threads and not self._closed:
            self.start()
        while True:
            with self._cond:
                if self._closed or self._exhausted():
                    raise StopAsyncIteration
                got = self._take()
                if got is not None:
                    self._release()
                else:
                    fut: asyncio.Future[None] = loop.create_future()
                    self._waiters.append((loop, fut))
            if got is not None:
                item = self._deliver(*got)
                if item is not None:
                    return item
                continue
            left = None if deadline is None else deadline - loop.time()
            try:
                if left is not None and left <= 0:
                    raise TimeoutError
                await asyncio.wait_for(fut, left)
            except TimeoutError:
                with self._cond:
                    waiting = self._waiting_for()
                raise TimeoutError(
                    f"timed out after {self.timeout:g} s waiting for {waiting}"
                ) from None
            finally:  # timed out or cancelled: forget this waiter
                with self._cond:
                    self._waiters = [w for w in self._waiters if w[1] is not fut]


def _reason(exc: BaseException) -> str:
    """Why a load failed: an ImageError's own reason (it already names the path), else
    ``Type: message``."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
