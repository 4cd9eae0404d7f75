"""Calibration data for INT8 quantization (and verification): feeds from real or made-up inputs.

Calibration is two halves joined by a typed hand-off (DESIGN habit 3)::

    CalibrationData (feeds) --ranges.collect_ranges--> Ranges --int8.quantize_with_ranges--> model

This module is the first half. :class:`CalibrationData` holds ready-to-run feed dicts; build it
with :func:`from_images` (an image folder, preprocessed by :mod:`onnxfit.data.images`;
unreadable files are skipped and listed with their reason; none usable raises
:class:`InputError`), :func:`from_arrays` (a ``.npy`` / ``.npz`` file or a folder of them),
:func:`synthetic_inputs` (seeded noise when the user gives no data; ``synthetic=True`` so that
every report built on it says so), or :func:`load_calibration`, which picks one of those.
:meth:`CalibrationData.reader` gives an ``onnxruntime.quantization.CalibrationDataReader``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_ir as ir
from onnxruntime.quantization import CalibrationDataReader

from onnxfit.errors import InputError, OnnxfitError

if TYPE_CHECKING:
    from onnxfit.data.images import Preset

logger = logging.getLogger(__name__)

_ARRAY_SUFFIXES = (".npy", ".npz")


@dataclass(frozen=True)
class Skipped:
    """A calibration file that could not be used, and why."""

    path: str
    reason: str


@dataclass
class CalibrationData:
    """Feed dicts (input name -> array with batch axis) for calibration or verification."""

    feeds: list[dict[str, np.ndarray]] = field(repr=False)
    source: str
    synthetic: bool = False
    skipped: list[Skipped] = field(default_factory=list)
    preset: str | None = None

    def __len__(self) -> int:
        return len(self.feeds)

    @property
    def samples(self) -> int:
        """Number of samples (sum of the batch sizes of the feeds)."""
        return sum(next(iter(f.values())).shape[0] for f in self.feeds if f)

    def reader(self) -> FeedReader:
        """A fresh onnxruntime ``CalibrationDataReader`` over the feeds."""
        return FeedReader(self.feeds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "synthetic": self.synthetic,
            "feeds": len(self.feeds),
            "samples": self.samples,
            "preset": self.preset,
            "skipped": [{"path": s.path, "reason": s.reason} for s in self.skipped],
        }


class FeedReader(CalibrationDataReader):
    """An onnxruntime calibration reader over a list of feed dicts (rewindable)."""

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._feeds = [dict(f) for f in feeds]
        self._start, self._end, self._pos = 0, len(self._feeds), 0

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self._pos >= self._end:
            return None
        feed = self._feeds[self._pos]
        self._pos += 1
        return feed

    def rewind(self) -> None:
        self._pos = self._start

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._start, self._end = start_index, min(end_index, len(self._feeds))
        self._pos = self._start


# ---------------------------------------------------------------------------- model inputs


@dataclass(frozen=True)
class InputSpec:
    """A model input: name, shape (ints, symbolic names or None) and numpy dtype."""

    name: str
    shape: tuple[int | str | None, ...]
    dtype: np.dtype[Any]


def _dims(shape: ir.Shape | None) -> tuple[int | str | None, ...]:
    if shape is None:
        return ()
    return tuple(d if isinstance(d, int) else d.value for d in shape)


def model_inputs(model: ir.Model) -> list[InputSpec]:
    """The model's real inputs (graph inputs that are not initializers)."""
    initializers = set(model.graph.initializers)
    out = []
    for value in model.graph.inputs:
        if value.name in initializers:
            continue
        dims = _dims(value.shape)
        dtype = np.dtype(value.dtype.numpy()) if value.dtype is not None else np.dtype(np.float32)
        out.append(InputSpec(value.name or "", dims, dtype))
    return out


def _batched(
    samples: list[np.ndarray], batch_dim: int | str | None, batch: int
) -> list[np.ndarray]:
    """Stack per-sample arrays into batches.

    A fixed batch dimension ``n`` gives full batches of ``n`` only (a remainder is dropped and
    logged); a symbolic one gives batches of ``batch``, the last possibly smaller.
    """
    fixed = isinstance(batch_dim, int) and batch_dim > 0
    size = int(batch_dim) if fixed else max(1, batch)  # type: ignore[arg-type]
    stop = len(samples) - len(samples) % size if fixed else len(samples)
    if stop < len(samples):
        logger.info("dropped %d samples that do not fill a batch of %d", len(samples) - stop, size)
    return [np.stack(samples[i : min(i + size, stop)]) for i in range(0, stop, size)]


# ---------------------------------------------------------------------------- loaders


def from_images(
    folder: str | os.PathLike[str],
    *,
    input_name: str,
    input_shape: Sequence[int | str | None] | None = None,
    preset: str | Preset | None = None,
    limit: int | None = 100,
    batch: int = 1,
) -> CalibrationData:
    """Preprocess up to ``limit`` images of ``folder`` into feeds for input ``input_name``.

    ``preset`` is the model's preprocessing (:func:`onnxfit.data.model_info.model_preset`
    decides it for a model; without one, :func:`onnxfit.data.images.guess_preset` of
    ``input_shape``), resized (``Preset.with_size``) to the input's fixed height and width.
    Unreadable images are skipped, counted and listed (path, reason) in ``skipped``; a folder
    without one usable image raises :class:`InputError`.
    """
    from onnxfit.data import images  # lazy: the image stack is heavy

    path = Path(folder)
    if not path.is_dir():
        raise InputError(
            f"{path}: calibration data folder not found",
            hint="give a folder of images, or a .npy/.npz file of inputs",
        )
    if preset is None:
        if input_shape is None:
            raise InputError(
                "no preprocessing preset given and no input shape to guess it from",
                hint="pass --preset (e.g. imagenet)",
            )
        preset = images.guess_preset(tuple(input_shape))
    pre = images.get_preset(preset)
    if input_shape is not None and len(input_shape) == 4:
        h, w = input_shape[2], input_shape[3]
        if isinstance(h, int) and isinstance(w, int) and (h, w) != pre.size:
            pre = pre.with_size(h, w)
    files = images.list_images(path)
    if not files:
        raise InputError(
            f"{path}: no image files in the calibration folder",
            hint="put .jpg/.png images there, or give .npy/.npz inputs",
        )
    samples: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for file in files:
        if limit is not None and len(samples) >= limit:
            break
        try:
            samples.append(np.asarray(images.preprocess(file, pre), dtype=np.float32))
        except (OnnxfitError, OSError, ValueError, SyntaxError) as exc:
            skipped.append(Skipped(str(file), str(exc) or type(exc).__name__))
            logger.debug("skipped %s: %s", file, exc)
    if skipped:
        logger.warning(
            "skipped %d unreadable calibration image(s), e.g. %s (%s)",
            len(skipped),
            skipped[0].path,
            skipped[0].reason,
        )
    if not samples:
        raise InputError(
            f"{path}: none of the {len(files)} images could be read "
            f"(first: {skipped[0].path}: {skipped[0].reason})",
            hint="check the files are valid JPEG/PNG images",
        )
    batch_dim = input_shape[0] if input_shape else None
    feeds = [{input_name: b} for b in _batched(samples, batch_dim, batch)]
    logger.info("calibration: %d images from %s (preset %s)", len(samples), path, pre.name)
    return CalibrationData(feeds, str(path), False, skipped, pre.name)


def _array_files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix.lower() in _ARRAY_SUFFIXES)
    return [path]


def from_arrays(
    path: str | os.PathLike[str],
    *,
    inputs: Sequence[tuple[str, Sequence[int | str | None]]],
    limit: int | None = 100,
) -> CalibrationData:
    """Feeds from a ``.npy`` / ``.npz`` file or a folder of them.

    ``inputs`` lists the model's (name, shape). A ``.npy`` feeds a single-input model; a
    ``.npz`` holds one array per input name. An array whose rank equals the input's is a batch
    (split into samples); one rank lower is a single sample. At most ``limit`` samples.
    """
    src = Path(path)
    if not src.exists():
        raise InputError(f"{src}: calibration data not found")
    files = _array_files(src)
    if not files:
        raise InputError(f"{src}: no .npy or .npz files there")
    ranks = {name: len(shape) for name, shape in inputs}
    feeds: list[dict[str, np.ndarray]] = []
    skipped: list[Skipped] = []
    count = 0
    for file in files:
        if limit is not None and count >= limit:
            break
        try:
            arrays = _read_arrays(file, ranks)
        except (OSError, ValueError, EOFError) as exc:
            skipped.append(Skipped(str(file), str(exc) or type(exc).__name__))
            continue
        n = next(iter(arrays.values())).shape[0]
        take = n if limit is None else min(n, limit - count)
        for i in range(take):  # one feed per sample: works with fixed batch-1 models too
            feeds.append({k: v[i : i + 1] for k, v in arrays.items()})
        count += take
    if not feeds:
        first = f" (first: {skipped[0].path}: {skipped[0].reason})" if skipped else ""
        raise InputError(
            f"{src}: no usable calibration arrays{first}",
            hint="save arrays with np.save / np.savez named after the model inputs",
        )
    return CalibrationData(feeds, str(src), False, skipped, None)


def _read_arrays(file: Path, ranks: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Arrays of one file, keyed by input name, each with a leading batch axis."""
    if file.suffix.lower() == ".npy":
        if len(ranks) != 1:
            raise ValueError(f"a .npy file feeds one input, the model has {len(ranks)}: use .npz")
        raw = {next(iter(ranks)): np.load(file, allow_pickle=False)}
    else:
        with np.load(file, allow_pickle=False) as npz:
            raw = {k: npz[k] for k in npz.files}
        missing = sorted(set(ranks) - set(raw))
        if missing:
            raise ValueError(f"missing arrays for inputs {missing} (has {sorted(raw)})")
    out = {}
    for name, rank in ranks.items():
        arr = raw[name]
        if arr.ndim == rank - 1:
            arr = arr[None]
        elif arr.ndim != rank:
            raise ValueError(f"{name}: rank {arr.ndim}, the model wants {rank}")
        out[name] = arr
    sizes = {a.shape[0] for a in out.values()}
    if len(sizes) != 1:
        raise ValueError(f"inputs have different sample counts {sorted(sizes)}")
    return out


def synthetic_inputs(
    model: ir.Model,
    n: int = 8,
    *,
    seed: int = 0,
    batch: int | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> CalibrationData:
    """``n`` feeds of seeded standard-normal noise (integers: zeros) shaped like the inputs
    (:func:`onnxfit.data.feeds.make_feeds`): a symbolic first dimension becomes ``batch`` (1 when
    None), a fixed one is kept; ``input_shapes`` gives whole shapes; any other symbolic
    dimension raises :class:`InputError`. The result has ``synthetic=True``: callers must say
    so in reports.
    """
    from onnxfit.data.feeds import make_feeds

    rng = np.random.default_rng(seed)
    specs = model_inputs(model)
    feeds = [make_feeds(specs, batch=batch, input_shapes=input_shapes, seed=rng) for _ in range(n)]
    logger.warning("no calibration data given: using %d synthetic samples (seed %d)", n, seed)
    return CalibrationData(feeds, f"synthetic(seed={seed})", True, [], None)


def load_calibration(
    model: ir.Model,
    source: str | os.PathLike[str] | None = None,
    *,
    preset: str | Preset | None = None,
    limit: int | None = 100,
    seed: int = 0,
    synthetic_count: int = 8,
) -> CalibrationData:
    """Calibration data for ``model`` from an image folder, array file(s), or synthetic noise.

    ``source=None`` gives :func:`synthetic_inputs` (flagged ``synthetic``). A folder holding
    ``.npy``/``.npz`` files and no images, or such a file, goes to :func:`from_arrays`; any other
    folder to :func:`from_images` (for a single-input model).
    """
    specs = model_inputs(model)
    if source is None:
        return synthetic_inputs(model, synthetic_count, seed=seed)
    src = Path(source)
    is_arrays = src.suffix.lower() in _ARRAY_SUFFIXES or (
        src.is_dir() and any(p.suffix.lower() in _ARRAY_SUFFIXES for p in src.iterdir())
    )
    if is_arrays:
        return from_arrays(src, inputs=[(s.name, s.shape) for s in specs], limit=limit)
    if len(specs) != 1:
        raise InputError(
            f"the model has {len(specs)} inputs; an image folder feeds only one",
            hint="give a .npz with one array per input name",
        )
    from onnxfit.data.model_info import model_preset

    return from_images(
        src,
        input_name=specs[0].name,
        input_shape=specs[0].shape,
        preset=model_preset(model, preset),
        limit=limit,
    )
