"""End-to-end image inference: files -> preprocessing -> batched inference -> post-processing.

The three stages overlap, each in its own thread:

1. **feeder** — preprocesses the next chunk of images with the :class:`Preprocessor` worker pool
   straight into one of ``slots`` (default 2) preallocated float32 batch buffers (double
   buffering); it waits only while every buffer is still held by inference;
2. **inference** — runs the session on a filled buffer (a view, no copy; a fixed batch of k
   runs k rows at a time, the last window's stale rows' outputs dropped), frees the buffer;
3. **the caller's thread** — post-processing (top-k, or decode + per-class NMS + undo the
   letterbox; :mod:`onnxfit.postprocess`) and whatever the caller does with each result (JSON
   lines, drawing).

:meth:`Pipeline.results` yields one :class:`ImageResult` per input path, in input order. A file
that cannot be used (corrupt, truncated, empty, not an image, over the pixel limit) gets an
``ImageResult`` with ``error`` set in its place: counted and reported, never dropped.

Task and preprocessing come from the model unless given (:mod:`onnxfit.model_info`).
:func:`run_images` is ``onnxfit run``'s API; :func:`onnxfit.evaluation.evaluate` uses the same.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from onnxfit.data.decode import DEFAULT_MAX_PIXELS
from onnxfit.data.images import ImageMeta, Preprocessor
from onnxfit.model_info import (
    ModelInfo,
    check_options,
    describe_model,
    load_class_names,
    split_cores,
)
from onnxfit.postprocess import chunk_results
from onnxfit.run_results import BadInput, ImageResult, PipelineStats, RunResult, collect_images

__all__ = ["BadInput", "ImageResult", "Pipeline", "PipelineStats", "RunResult", "run_images"]

log = logging.getLogger(__name__)

_END = object()
_POLL_S = 0.05


@dataclass
class _Chunk:
    start: int
    paths: list[Path]
    slot: int
    metas: list[ImageMeta]
    errors: dict[str, str]
    outputs: list[np.ndarray] = field(default_factory=list)


@dataclass
class _Failure:
    exc: BaseException


class Pipeline:
    """A model ready to run on image files; see the module docstring.

    ``batch`` is the number of images per inference run (``"auto"``: measured on this host with
    :meth:`onnxfit.runtime.batching.BatchEngine.tune`); for a model whose batch dimension is
    fixed at 1 it is the number of images preprocessed together. ``threads`` inference threads
    and ``workers`` preprocessing threads default to :func:`~onnxfit.model_info.split_cores`
    (half the cores each when inference runs on the CPU). ``labels`` is a class-name file
    (``synset.txt``, ``coco80_names.txt``) or a list of names.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | Any,
        *,
        task: str | None = None,
        preset: str | None = None,
        labels: str | os.PathLike[str] | Sequence[str] | None = None,
        batch: int | Literal["auto"] = 8,
        target: str = "cpu",
        threads: int | None = None,
        workers: int | None = None,
        top_k: int = 5,
        score_threshold: float = 0.25,
        iou_threshold: float = 0.45,
        max_detections: int = 300,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        slots: int = 2,
    ) -> None:
        from onnxfit.runtime.session import Session

        check_options(top_k, score_threshold, iou_threshold, max_detections, slots, batch)
        if threads is None and workers is None:
            threads, workers = split_cores(target)
        # Preprocessing workers share the cores: ORT's threads must not spin while they wait.
        self.session = Session(model, target=target, threads=threads, allow_spinning=False)
        try:
            self.info: ModelInfo = describe_model(
                self.session.inputs,
                self.session.outputs,
                task=task,
                preset=preset,
                metadata=self.session.metadata,
            )
            self.names = load_class_names(labels, self.info)
            self.top_k = top_k
            self.score_threshold = score_threshold
            self.iou_threshold = iou_threshold
            self.max_detections = max_detections
            self.tuning: Any = None
            self.batch_size, self.chunk = self._resolve_batch(batch)
            self.preprocessor = Preprocessor(
                self.info.preset, workers=workers, target=target, max_pixels=max_pixels
            )
        except BaseException:
            self.session.close()
            raise
        shape = (self.chunk, 3, *self.info.preset.size)
        self._buffers = [np.empty(shape, np.float32) for _ in range(slots)]
        self.stats = PipelineStats()
        info = self.info
        log.info(
            "pipeline: %s (%s), preset %s, %d images per run, chunks of %d, %d workers, on %s",
            *(info.task, info.decoder, info.preset.name, self.batch_size, self.chunk),
            *(self.preprocessor.workers, self.session.provider),
        )

    # -- setup ----------------------------------------------------------------------------
    def _resolve_batch(self, batch: int | Literal["auto"]) -> tuple[int, int]:
        """(images per session run, images per preprocessed chunk)."""
        fixed = self.info.fixed_batch
        if fixed is not None:
            if fixed == 1:
                chunk = 8 if batch == "auto" else int(batch)
                if chunk > 1:
                    log.info("the model's batch is fixed at 1: images run one by one")
                return 1, chunk
            if batch not in ("auto", fixed):
                log.warning("the model's batch is fixed at %d: --batch %s ignored", fixed, batch)
            return fixed, fixed
        if batch != "auto":
            return int(batch), int(batch)
        from onnxfit.runtime.batching import BatchEngine

        dtype = self.info.input_dtype
        sample = {self.info.input_name: np.zeros((1, 3, *self.info.preset.size), dtype)}
        engine = BatchEngine(self.session, batch_size="auto", max_batch=32, sample=sample)
        self.tuning = engine.tuning
        chosen = int(engine.batch_size)
        engine.close()
        return chosen, chosen

    # -- the stages -----------------------------------------------------------------------
    def infer(self, buf: np.ndarray, n: int) -> list[np.ndarray]:
        """Raw outputs (in the model's output order) for the first ``n`` rows of ``buf``, a
        preprocessed batch ``[>= n, 3, H, W]`` (at least the model's batch when it is fixed)."""
        name, dtype = self.info.input_name, self.info.input_dtype
        names = list(self.info.outputs)

        def run(x: np.ndarray) -> list[np.ndarray]:
            feed = x if x.dtype == dtype else x.astype(dtype)
            out = self.session.run({name: feed})
            return [out[k] for k in names]

        k = self.info.fixed_batch
        if k is None:
            return run(buf[:n])
        parts = []  # fixed batch k: windows of k rows; rows past n (stale) give dropped outputs
        for start in range(0, n, k):
            window = buf[start : start + k]
            if window.shape[0] < k:  # a caller's buffer shorter than k: pad with the last row
                pad = np.repeat(window[-1:], k - window.shape[0], axis=0)
                window = np.concatenate([window, pad])
            parts.append([o[: min(k, n - start)] for o in run(window)])
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[j] for p in parts]) for j in range(len(names))]

    def _feeder(self, paths: list[Path], free: queue.Queue, out: queue.Queue, stop: Any) -> None:
        st = self.stats
        try:
            for start in range(0, len(paths), self.chunk):
                part = paths[start : start + self.chunk]
                t0 = time.perf_counter()
                slot = _get(free, stop)
                st.feeder_wait_s += time.perf_counter() - t0
                if slot is None:
                    return
                t0 = time.perf_counter()
                _, metas = self.preprocessor.batch(part, out=self._buffers[slot], on_error="skip")
                errors = {e.path: e.reason for e in self.preprocessor.errors}
                self.preprocessor.errors.clear()
                st.preprocess_s += time.perf_counter() - t0
                if not _put(out, _Chunk(start, part, slot, metas, errors), stop):
                    return
            _put(out, _END, stop)
        except BaseException as exc:  # handed to the caller's thread, which raises it
            _put(out, _Failure(exc), stop)

    def _inferrer(self, inp: queue.Queue, free: queue.Queue, out: queue.Queue, stop: Any) -> None:
        st = self.stats
        try:
            while True:
                t0 = time.perf_counter()
                item = _get(inp, stop)
                st.infer_wait_s += time.perf_counter() - t0
                if item is None:
                    return
                if not isinstance(item, _Chunk):
                    _put(out, item, stop)
                    return
                t0 = time.perf_counter()
                try:
                    if item.metas:
                        item.outputs = self.infer(self._buffers[item.slot], len(item.metas))
                        st.runs += 1
                finally:
                    free.put(item.slot)
                st.inference_s += time.perf_counter() - t0
                if not _put(out, item, stop):
                    return
        except BaseException as exc:
            _put(out, _Failure(exc), stop)

    def _post(self, item: _Chunk) -> Iterator[ImageResult]:
        return chunk_results(
            item.start,
            item.paths,
            item.metas,
            item.errors,
            item.outputs,
            info=self.info,
            names=self.names,
            top_k=self.top_k,
            score_threshold=self.score_threshold,
            iou_threshold=self.iou_threshold,
            max_detections=self.max_detections,
        )

    # -- the public loop ------------------------------------------------------------------
    def results(self, paths: Sequence[str | os.PathLike[str]]) -> Iterator[ImageResult]:
        """One :class:`ImageResult` per path, in order, with the stages overlapped.

        Closing the iterator early (``break``) stops and joins the worker threads. An error in a
        stage (other than a bad image, which becomes a result with ``error``) is raised here.
        One iteration at a time per pipeline (they share the batch buffers)."""
        todo = [Path(p) for p in paths]
        stop = threading.Event()
        free: queue.Queue[int] = queue.Queue()
        for slot in range(len(self._buffers)):
            free.put(slot)
        to_infer: queue.Queue[Any] = queue.Queue(maxsize=len(self._buffers))
        to_post: queue.Queue[Any] = queue.Queue(maxsize=len(self._buffers))
        feeder, infer = self._feeder, self._inferrer
        threads = [
            threading.Thread(target=feeder, args=(todo, free, to_infer, stop), daemon=True),
            threading.Thread(target=infer, args=(to_infer, free, to_post, stop), daemon=True),
        ]
        threads[0].name, threads[1].name = "onnxfit-feeder", "onnxfit-infer"
        self.stats = PipelineStats()
        t_start = time.perf_counter()
        for t in threads:
            t.start()
        try:
            while True:
                item = _get(to_post, stop, alive=threads)
                if item is None or item is _END:
                    break
                if isinstance(item, _Failure):
                    raise item.exc
                t0 = time.perf_counter()
                done = list(self._post(item))
                self.stats.postprocess_s += time.perf_counter() - t0
                for res in done:
                    self.stats.images += 1
                    self.stats.failed += res.error is not None
                    yield res
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
                if t.is_alive():
                    log.warning("pipeline thread %s still running after 60 s", t.name)
            self.stats.wall_s += time.perf_counter() - t_start

    def close(self) -> None:
        """Stop the preprocessing pool and release the session."""
        self.preprocessor.close()
        self.session.close()

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _get(q: queue.Queue, stop: Any, alive: Sequence[threading.Thread] = ()) -> Any:
    """Next item, or None once ``stop`` is set (or every thread in ``alive`` died silently)."""
    while not stop.is_set():
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if alive and not any(t.is_alive() for t in alive) and q.empty():
                raise RuntimeError("pipeline threads ended without a result") from None
    return None


def _put(q: queue.Queue, item: Any, stop: Any) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def run_images(
    model: str | os.PathLike[str] | Any,
    inputs: Sequence[str | os.PathLike[str]],
    *,
    task: str | None = None,
    preset: str | None = None,
    labels: str | os.PathLike[str] | Sequence[str] | None = None,
    batch: int | Literal["auto"] = 8,
    target: str = "cpu",
    threads: int | None = None,
    workers: int | None = None,
    top_k: int = 5,
    score_threshold: float = 0.25,
    iou_threshold: float = 0.45,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_start: Callable[[Pipeline, int], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
    keep_results: bool = True,
) -> RunResult:
    """Run ``model`` on image files and folders (folders recursed, sorted); see :class:`Pipeline`.

    Every entry of a folder that is not an image, and every image that cannot be used, is a
    :class:`BadInput` in the result (path + reason). ``on_start(pipeline, n_images)`` is called
    once the model is loaded, ``on_result(result)`` for each image in order (stream results to
    a file there); ``keep_results=False`` does not keep them in the returned :class:`RunResult`.
    A missing input path or a model that cannot be loaded raises an ``OnnxfitError``.
    """
    paths, bad = collect_images(inputs)
    with Pipeline(
        model,
        task=task,
        preset=preset,
        labels=labels,
        batch=batch,
        target=target,
        threads=threads,
        workers=workers,
        top_k=top_k,
        score_threshold=score_threshold,
        iou_threshold=iou_threshold,
        max_pixels=max_pixels,
    ) as pipe:
        if on_start is not None:
            on_start(pipe, len(paths))
        kept: list[ImageResult] = []
        for res in pipe.results(paths):
            if res.error is not None:
                bad.append(BadInput(res.path, res.error, "unreadable image"))
            if on_result is not None:
                on_result(res)
            if keep_results:
                kept.append(res)
        return RunResult(
            model=str(model) if isinstance(model, str | os.PathLike) else "<in-memory model>",
            info=pipe.info,
            batch=pipe.batch_size,
            chunk=pipe.chunk,
            workers=pipe.preprocessor.workers,
            target=target,
            provider=pipe.session.provider,
            images=len(paths),
            bad=bad,
            stats=pipe.stats,
            results=kept,
            tuning=pipe.tuning,
        )
