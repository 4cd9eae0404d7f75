"""ProgressiveLoader: run a model section by section inside a memory budget.

1. **Metadata first.** The graph is read without its weights (``onnxfit.io.load_proto(...,
   with_external=False)``): tensors stored as external data stay on disk and their sizes come from
   the proto's dims. A model with *embedded* weights is parsed whole once, then its weights are
   written to external data in a private temporary folder (``onnxfit.io.save``) and dropped, so
   the rest works the same way.
2. **Estimate.** Memory = weights + peak live activations (see :mod:`onnxfit.runtime.sections`).
   If that is more than ``fit_fraction`` (80 %) of the budget, the graph is split into sections
   of at most ``section_budget_bytes`` each (default: half the budget, or what the biggest node
   needs when that is more); otherwise (and unless a smaller ``section_budget_bytes`` is given)
   it is one section.
3. **Load.** The first ``preload`` sections load at once; a background thread loads the rest, in
   order, whenever they fit: a section loads when nothing else is loaded, or when the weights
   already loaded + its weights + the largest section's activations fit the budget. Each section
   is an ONNX Runtime session built from the section's subgraph with only the initializers it
   needs; ORT reads their bytes straight from the external-data file (session config
   ``session.model_external_initializers_file_folder_path``), so no Python copy is made.
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
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.runtime.memstat import available_memory, malloc_trim, rss_bytes
from onnxfit.runtime.sections import (
    GraphInfo,
    SectionPlan,
    analyze_graph,
    make_section,
    max_node_cost,
    plan_sections,
    section_proto,
    tensor_nbytes,
)
from onnxfit.runtime.settings import ProviderArg, build_session_options, plan_session
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

_EXTERNAL_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
#: loaders still open, closed at interpreter exit (a daemon thread inside ORT's session
#: creation at exit aborts the process)
_OPEN: weakref.WeakSet[ProgressiveLoader] = weakref.WeakSet()
#: a model with this many bytes of embedded initializers has them spilled to external data
_SPILL_BYTES = 1 << 20


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
        if optimization is not None and optimization not in _OPT_LEVELS:
            raise InputError(
                f"optimization must be one of {', '.join(_OPT_LEVELS)}, got {optimization!r}"
            )
        if budget_bytes is not None and budget_bytes <= 0:
            raise InputError(f"budget_bytes must be positive, got {budget_bytes}")
        try:
            proto = self._read_graph()
            self._info: GraphInfo = analyze_graph(proto, batch=batch)
            self.plan = self._make_plan(budget_bytes, section_budget_bytes, fit_fraction)
            self._protos = [section_proto(proto, self._info, s) for s in self.plan.sections]
        except BaseException:
            self._remove_tmpdir()
            raise
        self.optimization = optimization or ("basic" if self.plan.sectioned else "all")
        self._sess_plan = plan_session(self.target, providers=providers, threads=threads)
        self._max_act = max((s.activation_bytes for s in self.plan.sections), default=0)
        self._last_needed = self._needed_until()
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
    def _read_graph(self) -> onnx.ModelProto:
        """The graph without its weights (spilling embedded weights to a temp folder first)."""
        proto = io.load_proto(self.path, with_external=False)
        self._folder = str(self.path.resolve().parent)
        embedded = sum(
            tensor_nbytes(t)
            for t in proto.graph.initializer
            if t.data_location != onnx.TensorProto.EXTERNAL
        )
        if embedded < _SPILL_BYTES:
            return proto
        del proto
        self._tmpdir = tempfile.mkdtemp(prefix="onnxfit-progressive-")
        spilled = Path(self._tmpdir) / "model.onnx"
        io.save(io.load(self.path), spilled, external_threshold=0)
        self._folder = self._tmpdir
        logger.info("embedded weights of %s spilled to %s", self.path.name, spilled)
        return io.load_proto(spilled, with_external=False)

    def _remove_tmpdir(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _make_plan(
        self, budget: int | None, section_budget: int | None, fit_fraction: float
    ) -> SectionPlan:
        info = self._info
        weights, act = info.weight_bytes, info.peak_activation_bytes
        estimate = weights + act
        if budget is None:
            budget = min(
                self.target.memory_budget, available_memory(get_target("cpu").memory_budget)
            )
        # split when the model needs more than fit_fraction of the budget, or more than an
        # explicitly given section budget
        sectioned = estimate > fit_fraction * budget or (
            section_budget is not None and estimate > section_budget
        )
        if section_budget is None:
            # half the budget (one section runs while the next loads), but never less than the
            # biggest single node needs
            section_budget = (
                min(budget, max(budget // 2, max_node_cost(info))) if sectioned else budget
            )
        if section_budget > budget:
            raise InputError(
                f"section_budget_bytes ({section_budget}) exceeds budget_bytes ({budget})"
            )
        if sectioned:
            sections = plan_sections(info, section_budget)
        else:
            sections = [make_section(info, 0, 0, len(info.nodes))]
        max_act = max((s.activation_bytes for s in sections), default=0)
        resident = sum(s.weight_bytes for s in sections) + max_act <= budget
        logger.info(
            "%s: estimate %.2f MiB (weights %.2f + activations %.2f), budget %.2f MiB -> "
            "%d section(s)%s",
            self.path.name,
            estimate / 2**20,
            weights / 2**20,
            act / 2**20,
            budget / 2**20,
            len(sections),
            ", resident" if resident else ", streamed",
        )
        return SectionPlan(
            str(self.path),
            weights,
            act,
            estimate,
            int(budget),
            int(section_budget),
            sectioned,
            resident,
            tuple(sections),
        )

    # ------------------------------------------------------------------------- preparation
    def _needed_until(self) -> dict[str, int]:
        """Tensor -> index of the last section reading it (len(sections) for graph outputs)."""
        last: dict[str, int] = {}
        for s in self.plan.sections:
            for t in s.inputs:
                last[t] = s.index
        for o in self._info.graph_outputs:
            last[o] = len(self.plan.sections)
        return last

    def _build(self, index: int) -> ort.InferenceSession:
        so = build_session_options(self._sess_plan)
        so.add_session_config_entry(_EXTERNAL_FOLDER_KEY, self._folder)
        so.graph_optimization_level = _OPT_LEVELS[self.optimization]
        if self.plan.sectioned:
            so.enable_cpu_mem_arena = False
        sess = ort.InferenceSession(
            self._protos[index].SerializeToString(),
            sess_options=so,
            providers=[(n, dict(o)) for n, o in self._sess_plan.providers],
        )
        malloc_trim()
        return sess

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
