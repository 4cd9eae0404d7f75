"""BatchEngine: run many single items through a session in batches, synchronously or async.

* :meth:`BatchEngine.run` takes a list of input dicts (one per item, every array with a leading
  batch dimension of 1), concatenates them into batches of ``batch_size``, pads the last batch
  with copies of its last item when the session's batch dimension is fixed (and strips the
  padding again), splits the outputs and returns one output dict per item, in order. A model whose
  batch dimension is fixed at 1 runs item by item.
* ``batch_size="auto"`` measures batch sizes 1, 2, 4, ... up to ``max_batch`` on this host for a
  short time each and keeps the one with the best throughput whose median latency stays within
  ``latency_cap_ms``; the measurements are kept in :attr:`BatchEngine.tuning`.
* :meth:`BatchEngine.submit` (``await`` it from coroutines), :meth:`BatchEngine.submit_future`
  (a :class:`concurrent.futures.Future`, safe from any thread) and :meth:`BatchEngine.submit_sync`
  (blocking, with a timeout) feed one worker thread that gathers requests into dynamic batches of at
  most ``max_batch`` items, waiting at most ``max_wait_ms`` after the first one. A batch whose run
  raises fails only its own callers, with that exception; a cancelled caller is dropped before its
  batch runs; :meth:`close` stops the worker, fails pending callers with :class:`EngineClosedError`
  and joins the thread. Asyncio futures are completed through ``loop.call_soon_threadsafe`` (by
  :func:`asyncio.wrap_future`).

How items are checked, stacked into a batch and split again: :mod:`onnxfit.runtime.stacking`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import queue
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from onnxfit.errors import InputError
from onnxfit.runtime.stacking import (
    Feeds,
    check_item,
    fixed_batch_dim,
    signature,
    split_outputs,
    stack_items,
)
from onnxfit.runtime.tuning import AUTO_SIZES, TuningResult, tune_batch_size

__all__ = ["AUTO_SIZES", "BatchEngine", "BatchStats", "EngineClosedError", "Runner", "TuningResult"]

logger = logging.getLogger(__name__)


class Runner(Protocol):
    """What the engine needs from a session (``onnxfit.runtime.session.Session`` has it)."""

    @property
    def inputs(self) -> Sequence[Any]: ...

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


class EngineClosedError(RuntimeError):
    """The engine was closed before (or while) this request could run."""


@dataclass
class BatchStats:
    """Counters of what the engine ran (sync and async together)."""

    runs: int = 0
    items: int = 0
    padded_items: int = 0
    failed_batches: int = 0
    dropped_cancelled: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    @property
    def mean_batch(self) -> float:
        return self.items / self.runs if self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean_batch"] = round(self.mean_batch, 3)
        return d


@dataclass
class _Request:
    feeds: Feeds
    future: Future[Feeds]
    key: tuple[Any, ...]


class BatchEngine:
    """Batched execution of single items on a session; see the module docstring."""

    def __init__(
        self,
        session: Runner,
        *,
        batch_size: int | Literal["auto"] = 8,
        latency_cap_ms: float | None = None,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        tune_seconds: float = 0.3,
        sample: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}")
        if max_wait_ms < 0:
            raise InputError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise InputError(f"batch_size must be a positive int or 'auto', got {batch_size!r}")
        self.session = session
        self.latency_cap_ms = latency_cap_ms
        self.max_wait_s = max_wait_ms / 1000.0
        self.tune_seconds = tune_seconds
        self.tuning: TuningResult | None = None
        self.stats = BatchStats()
        self._names = [s.name for s in session.inputs]
        self.fixed_batch = fixed_batch_dim(session.inputs)
        if self.fixed_batch is not None:
            # A fixed batch dimension decides everything: no tuning, no larger dynamic batches.
            self.max_batch = self.fixed_batch
            self.batch_size = self.fixed_batch
            if batch_size != self.fixed_batch:
                logger.info("the model's batch is fixed at %d: batching by it", self.fixed_batch)
        else:
            self.max_batch = max_batch
            self.batch_size = min(max_batch, 8 if batch_size == "auto" else batch_size)
        self._auto_pending = batch_size == "auto" and self.fixed_batch is None
        if self._auto_pending and sample is not None:
            self.tune(sample)
        self._lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._backlog: list[_Request] = []
        self._worker: threading.Thread | None = None
        self._closed = False

    # ----------------------------------------------------------------- shapes and checks
    def _check_item(self, item: Mapping[str, np.ndarray], index: int | None = None) -> Feeds:
        return check_item(item, self.session.inputs, index)

    # ------------------------------------------------------------------ batched execution
    def _run_batch(self, items: Sequence[Feeds]) -> list[Feeds]:
        """Run one batch (len(items) <= max_batch): concat, pad if fixed, run, split, strip."""
        n = len(items)
        feeds, run_n = stack_items(items, self._names, self.fixed_batch)
        outs = self.session.run(feeds)
        with self._stats_lock:
            self.stats.runs += 1
            self.stats.items += n
            self.stats.padded_items += run_n - n
            self.stats.batch_sizes[run_n] = self.stats.batch_sizes.get(run_n, 0) + 1
        return split_outputs(outs, n, run_n)

    def run(self, items: Sequence[Mapping[str, np.ndarray]]) -> list[Feeds]:
        """Outputs for every item, in order (each output array keeps a leading dim of 1)."""
        checked = [self._check_item(it, i) for i, it in enumerate(items)]
        if not checked:
            return []
        if self._auto_pending:
            self.tune(checked[0])
        bs = self.batch_size
        results: list[Feeds] = []
        # Items with different trailing shapes cannot share a batch: keep runs of one signature.
        start = 0
        while start < len(checked):
            key = signature(checked[start])
            stop = start + 1
            while stop < len(checked) and stop - start < bs and signature(checked[stop]) == key:
                stop += 1
            results.extend(self._run_batch(checked[start:stop]))
            start = stop
        return results

    # ------------------------------------------------------------------------ auto-tuning
    def tune(self, sample: Mapping[str, np.ndarray]) -> TuningResult:
        """Time batch sizes 1, 2, 4, ... (<= max_batch) on ``sample`` and keep the best
        (:func:`onnxfit.runtime.tuning.tune_batch_size`); stored in :attr:`tuning`."""
        item = self._check_item(sample)
        sizes = [s for s in AUTO_SIZES if s <= self.max_batch]
        if self.fixed_batch is not None:
            sizes = [self.fixed_batch]
        self.tuning = tune_batch_size(
            self.session.run,
            item,
            sizes=sizes,
            latency_cap_ms=self.latency_cap_ms,
            seconds=self.tune_seconds,
        )
        self.batch_size = self.tuning.chosen
        self._auto_pending = False
        return self.tuning

    # --------------------------------------------------------------- dynamic batching (async)
    def submit_future(self, item: Mapping[str, np.ndarray]) -> Future[Feeds]:
        """Queue one item for dynamic batching; thread-safe. Cancel the future to drop it."""
        feeds = self._check_item(item)
        fut: Future[Feeds] = Future()
        with self._lock:
            if self._closed:
                raise EngineClosedError("the BatchEngine is closed")
            if self._worker is None:
                # The thread holds only a weak reference: an engine dropped without close() is
                # collected, its finalizer wakes the thread and the thread ends.
                self._worker = threading.Thread(
                    target=_worker_main,
                    args=(weakref.ref(self), self._queue),
                    name="onnxfit-batcher",
                    daemon=True,
                )
                weakref.finalize(self, self._queue.put, None)
                self._worker.start()
                _OPEN.add(self)
            self._queue.put(_Request(feeds, fut, signature(feeds)))
        return fut

    def submit_sync(self, item: Mapping[str, np.ndarray], *, timeout: float | None = None) -> Feeds:
        """Queue one item and wait for its outputs (TimeoutError after ``timeout`` s; the request
        is then cancelled so that it does not run if its batch has not started)."""
        fut = self.submit_future(item)
        try:
            return fut.result(timeout=timeout)
        except TimeoutError:
            fut.cancel()
            raise

    async def submit(self, item: Mapping[str, np.ndarray]) -> Feeds:
        """``await engine.submit(item)``: the item's outputs, batched with concurrent callers.

        Cancelling the awaiting task cancels the request (dropped if its batch has not started).
        """
        return await asyncio.wrap_future(self.submit_future(item))

    def _gather(self, first: _Request) -> tuple[list[_Request], list[_Request]]:
        """Collect requests for one batch: (this batch, requests left for a later one)."""
        batch = [first]
        other: list[_Request] = []
        deadline = time.monotonic() + self.max_wait_s
        while len(batch) < self.max_batch and not self._closed:
            left = deadline - time.monotonic()
            try:
                req = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if req is None:  # close() or finalizer: leave the sentinel for the loop
                self._queue.put(None)
                break
            (batch if req.key == first.key else other).append(req)
        return batch, other

    def _process(self, first: _Request) -> None:
        """Gather one batch after ``first``, run it and complete its callers' futures."""
        batch, other = self._gather(first)
        self._backlog.extend(other)
        if self._closed:
            self._backlog[:0] = batch
            return
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        dropped = len(batch) - len(live)
        if dropped:
            with self._stats_lock:
                self.stats.dropped_cancelled += dropped
        if not live:
            return
        try:
            outs = self._run_batch([r.feeds for r in live])
        except BaseException as exc:
            with self._stats_lock:
                self.stats.failed_batches += 1
            logger.warning("batch of %d failed: %s: %s", len(live), type(exc).__name__, exc)
            for r in live:
                r.future.set_exception(exc)
            return
        for r, o in zip(live, outs, strict=True):
            r.future.set_result(o)

    def _fail_pending(self) -> None:
        pending, self._backlog = self._backlog, []
        while True:
            try:
                req = self._queue.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                pending.append(req)
        for r in pending:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(EngineClosedError("the BatchEngine was closed"))

    def close(self, *, timeout: float = 10.0) -> None:
        """Stop the worker after the batch it is running and join it; fail every pending
        request with :class:`EngineClosedError`. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            worker = self._worker
            self._queue.put(None)
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout)
            if worker.is_alive():
                logger.warning("batch worker still running after %.1f s", timeout)
        self._fail_pending()

    @property
    def worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def __enter__(self) -> BatchEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: engines with a live worker, closed at interpreter exit (a daemon thread killed inside an ORT
#: call at exit can abort the process)
_OPEN: weakref.WeakSet[BatchEngine] = weakref.WeakSet()


@atexit.register
def _close_open_engines() -> None:
    for engine in list(_OPEN):
        engine.close(timeout=5.0)


def _worker_main(ref: weakref.ref[BatchEngine], q: queue.SimpleQueue[_Request | None]) -> None:
    """The worker thread: wait for a request, then let the engine batch and run it."""
    while True:
        engine = ref()
        if engine is None:
            return
        if engine._closed:
            engine._fail_pending()
            return
        first = engine._backlog.pop(0) if engine._backlog else None
        if first is None:
            del engine  # do not keep the engine alive while blocked
            got = q.get()
            engine = ref()
            if engine is None:
                return
            if got is None:
                engine._fail_pending()
                return
            first = got
        try:
            engine._process(first)
        except Exception:  # a bug here must not kill the worker and strand every caller
            logger.exception("batch worker error")
            if not first.future.done():
                first.future.set_exception(RuntimeError("internal batch worker error"))
        del engine
