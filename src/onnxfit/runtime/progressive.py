"""ProgressiveLoader: run a model section by section inside a memory budget.

1. **Metadata first.** The graph is read without its weights; embedded weights are spilled to
   external data in a private temporary folder first (:func:`onnxfit.runtime.loading.read_graph`).
2. **Estimate.** Memory = weights + peak live activations (see :mod:`onnxfit.runtime.sections`).
   If that is more than ``fit_fraction`` (80 %) of the budget, the graph is split into sections
   of at most ``section_budget_bytes`` each (default: half the budget, or what the biggest node
   needs when that is more); otherwise (and unless a smaller ``section_budget_bytes`` is given)
   it is one section (:func:`onnxfit.runtime.loading.choose_plan`).
3. **Load.** The first ``preload`` sections load at once; a background thread loads the rest, in
   order, whenever they fit: a section loads when nothing else is loaded, or when the weights
   already loaded + its weights + the largest section's activations fit the budget. Each section
   is an ONNX Runtime session built from the section's subgraph with only the initializers it
   needs, read by ORT straight from the external-data file
   (:func:`onnxfit.runtime.loading.build_section_session`).
   Sectioned models use ORT's BASIC optimization level by default (ALL adds NCHWc weight copies
   that quadruple the transient memory of a build) and run with ORT's CPU arena off, so
   activations are freed between runs; freed heap is given back with ``malloc_trim``.
4. **Run.** :meth:`ProgressiveLoader.run` feeds each section in turn, streaming the tensors that
   cross each cut; a tensor is dropped once no later section needs it. When every section fits
   the budget together they stay loaded (``resident``); otherwise each is released right after it
   runs and the loader brings it back for the next run — a model larger than the budget still
   runs, with the whole model's outputs.

Own accounting (:attr:`ProgressiveLoader.stats`): ``held`` = weights of loaded (or loading)
sections + the running section's peak live activations, or the streamed arrays' bytes between
sections. Its peak never exceeds the budget. Stated overhead, not in it but visible in RSS:
ORT's transient copy of the section being built (up to :attr:`SectionPlan.build_overhead_bytes`,
the largest section's weights), ORT's per-session state and kernel workspaces, and Python/numpy.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from onnxfit.errors import InputError
from onnxfit.runtime.loading import build_section_session, choose_plan, needed_until, read_graph
from onnxfit.runtime.memstat import malloc_trim, rss_bytes
from onnxfit.runtime.sections import GraphInfo, analyze_graph, section_model
from onnxfit.runtime.settings import OPT_LEVELS, ProviderArg, plan_session
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

#: loaders still open, closed at interpreter exit (a daemon thread inside ORT's session
#: creation at exit aborts the process)
_OPEN: weakref.WeakSet[ProgressiveLoader] = weakref.WeakSet()


@dataclass
class LoaderStats:
    """Own accounting of bytes held, plus RSS sampled at every section boundary."""

    held_bytes: int = 0
    peak_held_bytes: int = 0
    loads: int = 0
    releases: int = 0
    runs: int = 0
    rss_start_bytes: int = 0
    rss_peak_sampled_bytes: int = 0
    loaded_sections: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ProgressiveLoader:
    """Metadata-first, sectioned, budgeted execution of one model; see the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        budget_bytes: int | None = None,
        section_budget_bytes: int | None = None,
        target: str | Target = "cpu",
        providers: Sequence[ProviderArg] | None = None,
        batch: int = 1,
        preload: int = 1,
        fit_fraction: float = 0.8,
        threads: int | None = None,
        optimization: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.target = get_target(target)
        self._tmpdir: str | None = None
        self._closed = False
        if optimization is not None and optimization not in OPT_LEVELS:
            raise InputError(
                f"optimization must be one of {', '.join(OPT_LEVELS)}, got {optimization!r}"
            )
        if budget_bytes is not None and budget_bytes <= 0:
            raise InputError(f"budget_bytes must be positive, got {budget_bytes}")
        try:
            model, self._folder, self._tmpdir = read_graph(self.path)
            self._info: GraphInfo = analyze_graph(model, batch=batch)
            self.plan = choose_plan(
                self.path,
                self._info,
                target=self.target,
                budget=budget_bytes,
                section_budget=section_budget_bytes,
                fit_fraction=fit_fraction,
            )
            self._models = [section_model(model, s) for s in self.plan.sections]
        except BaseException:
            self._remove_tmpdir()
            raise
        self.optimization = optimization or ("basic" if self.plan.sectioned else "all")
        self._sess_plan = plan_session(self.target, providers=providers, threads=threads)
        self._max_act = max((s.activation_bytes for s in self.plan.sections), default=0)
        self._last_needed = needed_until(self.plan, self._info)
        rss0 = rss_bytes()
        self.stats = LoaderStats(rss_start_bytes=rss0, rss_peak_sampled_bytes=rss0)
        self._cond = threading.Condition()
        self._run_lock = threading.Lock()
        self._sessions: dict[int, ort.InferenceSession] = {}
        self._loading: set[int] = set()
        self._weights_loaded = 0
        self._load_seq = 0  # section loads started, in cyclic order
        self._run_seq = 0  # section runs finished, in cyclic order
        self._error: tuple[int, BaseException] | None = None
        self._epoch = 0  # bumped when a failed run resets the streaming cycle
        try:
            for _ in range(min(preload, len(self.plan.sections))):
                if not self._try_load_next(wait=False):
                    break
        except BaseException:
            self._remove_tmpdir()
            raise
        self._thread = threading.Thread(
            target=self._loader_main, name="onnxfit-progressive", daemon=True
        )
        self._thread.start()
        _OPEN.add(self)

    # ------------------------------------------------------------------------- preparation
    def _remove_tmpdir(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _build(self, index: int) -> ort.InferenceSession:
        return build_section_session(
            self._models[index],
            folder=self._folder,
            session_plan=self._sess_plan,
            optimization=self.optimization,
            sectioned=self.plan.sectioned,
        )

    # ----------------------------------------------------------------------------- loading
    def _account(self, delta: int) -> None:
        self.stats.held_bytes += delta
        self.stats.peak_held_bytes = max(self.stats.peak_held_bytes, self.stats.held_bytes)

    def _can_load(self, index: int) -> bool:
        sec = self.plan.sections[index]
        if index in self._loading:
            return False
        if self._load_seq >= self._run_seq + len(self.plan.sections):
            return False  # never more than one cycle ahead of the runner
        if not self._sessions and not self._loading:
            return True  # alone it fits: its cost is within the section budget
        return self._weights_loaded + sec.weight_bytes + self._max_act <= self.plan.budget_bytes

    def _try_load_next(self, *, wait: bool) -> bool:
        """Load the next section in cyclic order when it fits (waiting for room if ``wait``)."""
        n = len(self.plan.sections)
        with self._cond:
            while True:
                if self._closed or (self.plan.resident and self._load_seq >= n):
                    return False
                index = self._load_seq % n
                if index not in self._sessions and self._can_load(index):
                    break
                if not wait:
                    return False
                self._cond.wait()
            sec = self.plan.sections[index]
            self._loading.add(index)
            self._load_seq += 1
            self._weights_loaded += sec.weight_bytes
            self._account(sec.weight_bytes)
            epoch = self._epoch
        try:
            sess = self._build(index)
        except BaseException as exc:
            with self._cond:
                self._loading.discard(index)
                self._weights_loaded -= sec.weight_bytes
                self._account(-sec.weight_bytes)
                self._error = (index, exc)
                self._cond.notify_all()
            raise
        with self._cond:
            self._loading.discard(index)
            self.stats.loads += 1
            if epoch != self._epoch:  # the cycle was reset while building: not wanted now
                self._weights_loaded -= sec.weight_bytes
                self._account(-sec.weight_bytes)
                self._cond.notify_all()
                return True
            self._sessions[index] = sess
            self.stats.loaded_sections = sorted(self._sessions)
            self._cond.notify_all()
        logger.debug("section %d loaded (%.2f MiB)", index, sec.weight_bytes / 2**20)
        return True

    def _loader_main(self) -> None:
        try:
            while self._try_load_next(wait=True):
                pass
        except BaseException as exc:  # reported to the runner through self._error
            logger.error("loading a section failed: %s", exc)

    def _release(self, index: int) -> None:
        with self._cond:
            sess = self._sessions.pop(index, None)
            if sess is not None:
                w = self.plan.sections[index].weight_bytes
                self._weights_loaded -= w
                self._account(-w)
                self.stats.releases += 1
                self.stats.loaded_sections = sorted(self._sessions)
            self._cond.notify_all()
        del sess
        malloc_trim()

    def _reset_cycle(self, done: int) -> None:
        """After a failed run (lock held): skip the rest of its cycle; a streamed plan drops the
        sections loaded ahead so that the next run starts again from section 0."""
        self._run_seq += len(self.plan.sections) - done
        if not self.plan.resident:
            self._epoch += 1
            for index in list(self._sessions):
                w = self.plan.sections[index].weight_bytes
                del self._sessions[index]
                self._weights_loaded -= w
                self._account(-w)
                self.stats.releases += 1
            self.stats.loaded_sections = []
            self._load_seq = self._run_seq
        self._cond.notify_all()

    def _wait_for(self, index: int, timeout: float | None) -> ort.InferenceSession:
        with self._cond:
            ok = self._cond.wait_for(
                lambda: index in self._sessions or self._error is not None or self._closed,
                timeout=timeout,
            )
            if self._closed:
                raise InputError("the ProgressiveLoader is closed", hint="create a new one")
            if index in self._sessions:
                return self._sessions[index]
            if self._error is not None:
                failed, exc = self._error
                raise RuntimeError(f"loading section {failed} failed: {exc}") from exc
            if not ok:
                raise TimeoutError(f"section {index} was not loaded within {timeout} s")
            raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------------------------ running
    @property
    def inputs(self) -> list[str]:
        return list(self._info.graph_inputs)

    @property
    def outputs(self) -> list[str]:
        return list(self._info.graph_outputs)

    def run(
        self, feeds: Mapping[str, np.ndarray], *, timeout: float | None = 600.0
    ) -> dict[str, np.ndarray]:
        """Run the model section by section; returns ``{output name: array}``."""
        missing = [n for n in self._info.graph_inputs if n not in feeds]
        if missing:
            raise InputError(
                f"missing input(s) {missing}", hint=f"inputs: {self._info.graph_inputs}"
            )
        with self._run_lock:
            env: dict[str, np.ndarray] = {k: np.asarray(feeds[k]) for k in self._info.graph_inputs}
            held = sum(a.nbytes for a in env.values())  # what this run holds besides weights
            with self._cond:
                self._account(held)
            done = 0
            try:
                for sec in self.plan.sections:
                    sess = self._wait_for(sec.index, timeout)
                    with self._cond:  # the section's live activations replace the streamed ones
                        self._account(sec.activation_bytes - held)
                        held = sec.activation_bytes
                    try:
                        values = sess.run(list(sec.outputs), {t: env[t] for t in sec.inputs})
                    finally:
                        del sess
                    env.update(zip(sec.outputs, values, strict=True))
                    for t in [t for t in env if self._last_needed.get(t, -1) <= sec.index]:
                        del env[t]
                    streamed = sum(a.nbytes for a in env.values())
                    with self._cond:
                        self._account(streamed - held)
                        held = streamed
                    if not self.plan.resident:
                        self._release(sec.index)
                    with self._cond:
                        self._run_seq += 1
                        done += 1
                        self._cond.notify_all()
                    self.stats.rss_peak_sampled_bytes = max(
                        self.stats.rss_peak_sampled_bytes, rss_bytes()
                    )
            finally:
                with self._cond:
                    self._account(-held)
                    if done < len(self.plan.sections):
                        self._reset_cycle(done)
            self.stats.runs += 1
            return {o: env[o] for o in self._info.graph_outputs}

    # ---------------------------------------------------------------------------- lifetime
    def wait_loaded(self, timeout: float = 60.0) -> bool:
        """Wait until every section is loaded (resident plans only); False on timeout."""
        n = len(self.plan.sections)
        with self._cond:
            return self._cond.wait_for(
                lambda: len(self._sessions) == n or self._error is not None, timeout=timeout
            )

    def close(self, *, timeout: float = 30.0) -> None:
        """Stop the loader thread, drop every section session, remove spilled weights."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)
        with self._cond:
            self._sessions.clear()
            self.stats.loaded_sections = []
        self._remove_tmpdir()
        _OPEN.discard(self)

    def __enter__(self) -> ProgressiveLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_open_loaders() -> None:
    for loader in list(_OPEN):
        loader.close(timeout=5.0)
