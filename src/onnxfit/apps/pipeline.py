"""End-to-end image inference, the one data flow of DESIGN.md:

    files -> data.loader.AsyncLoader -> data.images (decode/resize/normalize)
          -> runtime.batching.BatchEngine -> runtime.session -> apps.postprocess (top-k, boxes)

1. **loading** — an :class:`~onnxfit.data.loader.AsyncLoader` runs ``workers`` threads that each
   decode, resize and normalize one image (:func:`onnxfit.data.images.preprocess_into`) into a
   float32 row; ordered, with a bounded prefetch (``slots`` chunks of images held at most), so
   memory stays bounded however slow inference is;
2. **inference** — one thread takes the rows in order, ``chunk`` at a time, and runs them
   through a :class:`~onnxfit.runtime.batching.BatchEngine` (batches of the model's batch size;
   a fixed batch is padded and the padding's outputs dropped);
3. **the caller's thread** — post-processing (top-k, or decode + per-class NMS + undo the
   letterbox; :mod:`onnxfit.apps.postprocess`) and whatever the caller does with each result
   (JSON lines, drawing).

:meth:`Pipeline.results` yields one :class:`ImageResult` per input path, in input order. A file
that cannot be used (corrupt, truncated, empty, not an image, over the pixel limit, unreadable)
gets an ``ImageResult`` with ``error`` set in its place: counted and reported, never dropped.
:class:`PipelineStats` keeps the per-stage times (preprocessing busy time per worker, inference,
post-processing, and how long inference waited for images).

Task and preprocessing come from the model unless given (:mod:`onnxfit.data.model_info`).
:func:`run_images` is ``onnxfit run``'s API; :func:`onnxfit.apps.evaluation.evaluate` uses the same.
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

from onnxfit.apps.postprocess import chunk_results
from onnxfit.apps.results import BadInput, ImageResult, PipelineStats, RunResult, collect_images
from onnxfit.data.decode import DEFAULT_MAX_PIXELS
from onnxfit.data.images import ImageError, ImageMeta, Preprocessor
from onnxfit.data.loader import AsyncLoader, FileLoadError
from onnxfit.data.model_info import (
    ModelInfo,
    check_options,
    describe_model,
    load_class_names,
    split_cores,
)

__all__ = ["BadInput", "ImageResult", "Pipeline", "PipelineStats", "RunResult", "run_images"]

log = logging.getLogger(__name__)

_END = object()
_POLL_S = 0.05


@dataclass
class _Chunk:
    start: int
    paths: list[Path]
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
    fixed at 1 it is the number of images handed to inference together. ``slots`` chunks of
    preprocessed images are held at most (the loader's prefetch). ``threads`` inference threads
    and ``workers`` preprocessing threads default to :func:`~onnxfit.data.model_info.split_cores`
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
        from onnxfit.runtime.batching import BatchEngine
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
            self.preprocessor = Preprocessor(
                self.info.preset, workers=workers, target=target, max_pixels=max_pixels
            )
            sample = {self.info.input_name: self._zeros(1)} if batch == "auto" else None
            self.engine = BatchEngine(
                self.session,
                batch_size="auto" if batch == "auto" else int(batch),
                max_batch=32 if batch == "auto" else max(int(batch), 1),
                sample=sample,
            )
        except BaseException:
            self.session.close()
            raise
        self.tuning: Any = self.engine.tuning
        self.batch_size, self.chunk = self._resolve_batch(batch)
        self.slots = slots
        self.stats = PipelineStats()
        self._busy_lock = threading.Lock()
        info = self.info
        log.info(
            "pipeline: %s (%s), preset %s, %d images per run, chunks of %d, %d workers, on %s",
            *(info.task, info.decoder, info.preset.name, self.batch_size, self.chunk),
            *(self.preprocessor.workers, self.session.provider),
        )

    # -- setup ----------------------------------------------------------------------------
    def _zeros(self, n: int) -> np.ndarray:
        return np.zeros((n, 3, *self.info.preset.size), self.info.input_dtype)

    def _resolve_batch(self, batch: int | Literal["auto"]) -> tuple[int, int]:
        """(images per session run, images per chunk handed to inference)."""
        fixed = self.info.fixed_batch
        if fixed == 1:
            chunk = 8 if batch == "auto" else int(batch)
            if chunk > 1:
                log.info("the model's batch is fixed at 1: images run one by one")
            return 1, chunk
        if fixed is not None and batch not in ("auto", fixed):
            log.warning("the model's batch is fixed at %d: --batch %s ignored", fixed, batch)
        size = int(self.engine.batch_size)
        return size, size

    # -- the stages -----------------------------------------------------------------------
    def infer(self, buf: np.ndarray, n: int) -> list[np.ndarray]:
        """Raw outputs (in the model's output order) for the first ``n`` rows of ``buf``, a
        preprocessed batch ``[>= n, 3, H, W]``, run through the pipeline's BatchEngine."""
        name, dtype = self.info.input_name, self.info.input_dtype
        rows = buf[:n] if buf.dtype == dtype else buf[:n].astype(dtype)
        outs = self.engine.run([{name: rows[i : i + 1]} for i in range(n)])
        return [np.concatenate([o[k] for o in outs]) for k in self.info.outputs]

    def _load(self, path: Path) -> tuple[np.ndarray, ImageMeta] | ImageError:
        """One image into a new float32 row (a loader worker); a bad image is returned."""
        row = np.empty((3, *self.info.preset.size), np.float32)
        t0 = time.perf_counter()
        try:
            return row, self.preprocessor.load(path, row)
        except ImageError as exc:
            return exc
        finally:
            busy = time.perf_counter() - t0
            with self._busy_lock:
                self.stats.preprocess_s += busy / self.preprocessor.workers

    def loader(self, paths: Sequence[str | os.PathLike[str]]) -> AsyncLoader:
        """The first stage alone: an ordered :class:`~onnxfit.data.loader.AsyncLoader` over
        ``paths`` whose items are ``(row, meta)`` (a preprocessed float32 ``[3, H, W]`` image)
        or an :class:`ImageError` for a bad file; ``workers`` threads, ``slots`` chunks held."""
        return AsyncLoader(
            [Path(p) for p in paths],
            load=self._load,
            max_concurrent=self.preprocessor.workers,
            prefetch=max(self.slots * self.chunk, self.preprocessor.workers),
            ordered=True,
            on_error="raise",
        )

    def _next(self, loader: AsyncLoader, stop: Any) -> Any:
        """The loader's next result (an item, a LoadError-turned-ImageError) or None at the end."""
        while not stop.is_set():
            try:
                return loader.next(timeout=_POLL_S)
            except TimeoutError:
                continue
            except StopIteration:
                return None
            except FileLoadError as exc:  # an unexpected failure of one file: a bad input
                return exc.error
        return None

    def _inferrer(self, loader: AsyncLoader, out: queue.Queue, stop: Any) -> None:
        st = self.stats
        try:
            start, done = 0, False
            while not done:
                paths: list[Path] = []
                rows: list[np.ndarray] = []
                metas: list[ImageMeta] = []
                errors: dict[str, str] = {}
                t0 = time.perf_counter()
                while len(paths) < self.chunk:
                    got = self._next(loader, stop)
                    if got is None:
                        done = True
                        break
                    if hasattr(got, "value"):  # a loaded Item
                        paths.append(got.path)
                        if isinstance(got.value, ImageError):
                            errors[str(got.path)] = got.value.reason
                        else:
                            rows.append(got.value[0])
                            metas.append(got.value[1])
                    else:  # a LoadError
                        paths.append(got.path)
                        errors[str(got.path)] = got.reason
                st.infer_wait_s += time.perf_counter() - t0
                if stop.is_set() or not paths:
                    break
                item = _Chunk(start, paths, metas, errors)
                start += len(paths)
                t0 = time.perf_counter()
                if rows:
                    item.outputs = self.infer(np.stack(rows), len(rows))
                    st.runs += 1
                st.inference_s += time.perf_counter() - t0
                if not _put(out, item, stop):
                    return
            _put(out, _END, stop)
        except BaseException as exc:  # handed to the caller's thread, which raises it
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
        stage (other than a bad image, which becomes a result with ``error``) is raised here."""
        stop = threading.Event()
        loader = self.loader(paths)
        to_post: queue.Queue[Any] = queue.Queue(maxsize=self.slots)
        infer = threading.Thread(
            target=self._inferrer, args=(loader, to_post, stop), name="onnxfit-infer", daemon=True
        )
        self.stats = PipelineStats()
        t_start = time.perf_counter()
        loader.start()
        infer.start()
        try:
            while True:
                item = _get(to_post, stop, alive=[infer])
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
            loader.close()
            infer.join(timeout=60)
            if infer.is_alive():
                log.warning("pipeline thread %s still running after 60 s", infer.name)
            self.stats.wall_s += time.perf_counter() - t_start

    def close(self) -> None:
        """Stop the batch engine and the preprocessing pool, and release the session."""
        self.engine.close()
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
