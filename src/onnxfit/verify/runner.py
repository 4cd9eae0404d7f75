"""The one way onnxfit runs a model over prepared inputs: feeds in, outputs out, fixed batch padded.

Every accuracy or error measure (the evaluator, model comparison, per-node sensitivity, the
optimizer's gate, the pruning budget) runs models through :func:`iter_outputs` /
:func:`run_all`:

* inputs are a list of feed dicts (input name -> array, axis 0 = samples), one array for a
  single-input model, or :class:`~onnxfit.data.calibration.CalibrationData`;
* every feed is cut into pieces of the model's fixed batch size (its first input's leading
  dimension) or, when that is symbolic, of ``batch``; a last piece smaller than a *fixed* batch
  is padded with zeros and the padded rows are cut off the outputs again, so a batch-1 model
  and a batch-8 one see the same samples and give one output row per sample;
* outputs come back by name, concatenated along axis 0 (scalars are stacked).

Models go to onnxruntime through :class:`onnxfit.runtime.session.Session` (CPU provider unless
``target`` / ``providers`` say otherwise); a model is an ``onnx_ir.Model``, a path, an ORT-ready
protobuf, or an open :class:`Session`, which is used as is and left open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit import io
from onnxfit.data.calibration import CalibrationData
from onnxfit.errors import InputError

__all__ = [
    "DEFAULT_BATCH",
    "Feeds",
    "Inputs",
    "ModelArg",
    "feeds_of",
    "first_samples",
    "input_names",
    "iter_outputs",
    "merge_feeds",
    "run_all",
    "sample_count",
    "split_feed",
]

#: Batch used for models whose batch dimension is symbolic.
DEFAULT_BATCH = 8
ModelArg = ir.Model | str | os.PathLike[str]
Feeds = list[dict[str, np.ndarray]]
Inputs = CalibrationData | np.ndarray | Sequence[Mapping[str, np.ndarray]]


def feeds_of(inputs: Inputs, names: Sequence[str]) -> tuple[Feeds, bool]:
    """``inputs`` as a list of feed dicts, and whether they are synthetic. ``names``: the
    model's input names (an array feeds the only one)."""
    if isinstance(inputs, CalibrationData):
        return [dict(f) for f in inputs.feeds], inputs.synthetic
    if isinstance(inputs, np.ndarray):
        if len(names) != 1:
            raise InputError(
                f"an array feeds a single-input model; this one has {len(names)} inputs",
                hint="pass a list of {input name: array} dicts",
            )
        return [{names[0]: inputs}], False
    return [dict(f) for f in inputs], False


def sample_count(feeds: Sequence[Mapping[str, np.ndarray]]) -> int:
    """Samples in ``feeds`` (the sum of their leading dimensions)."""
    return sum(int(next(iter(f.values())).shape[0]) for f in feeds if f)


def first_samples(feeds: Sequence[Mapping[str, np.ndarray]], samples: int) -> Feeds:
    """The first ``samples`` samples of ``feeds`` (the last feed cut when needed)."""
    out: Feeds = []
    n = 0
    for f in feeds:
        if n >= samples:
            break
        total = next(iter(f.values())).shape[0]
        k = min(samples - n, total)
        out.append({name: _rows(v, 0, k, total) for name, v in f.items()})
        n += k
    return out


def merge_feeds(feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One feed from several, concatenated along axis 0; when some input is not batched along
    axis 0 (a scalar, a recurrent state ``[layers, batch, hidden]``), the first feed alone."""
    if not feeds:
        return {}
    counts = [next(iter(f.values())).shape[0] for f in feeds]
    batched = all(
        np.ndim(v) and v.shape[0] == n
        for f, n in zip(feeds, counts, strict=True)
        for v in f.values()
    )
    if not batched or len(feeds) == 1:
        return dict(feeds[0])
    return {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}


def _rows(v: np.ndarray, start: int, stop: int, total: int) -> np.ndarray:
    """Rows ``start:stop`` of a batched array; a scalar or an array whose leading dim is not
    the feed's sample count (a recurrent state, a sample rate) is passed whole."""
    return v[start:stop] if v.ndim and v.shape[0] == total else v


def split_feed(
    feed: Mapping[str, np.ndarray], size: int, whole: frozenset[str] = frozenset()
) -> Iterator[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into pieces of ``size`` samples (the last may be smaller).

    The first input sets the sample count; inputs named in ``whole``, scalars, and arrays of
    another leading size go whole into every piece."""
    n = next(iter(feed.values())).shape[0]
    for i in range(0, n, size):
        yield {k: v if k in whole else _rows(v, i, i + size, n) for k, v in feed.items()}


def _pad(piece: dict[str, np.ndarray], size: int, whole: frozenset[str]) -> dict[str, np.ndarray]:
    out = {}
    for k, v in piece.items():
        extra = 0 if k in whole or not v.ndim else size - v.shape[0]
        out[k] = np.concatenate([v, np.zeros((extra, *v.shape[1:]), v.dtype)]) if extra else v
    return out


def _unbatched(inputs: Sequence[Any], size: int) -> frozenset[str]:
    """Session inputs without a batch axis 0: scalars, and a fixed leading dim other than
    the first input's (a recurrent state of ``[layers, batch, hidden]``, a cache)."""
    out = set()
    for spec in inputs[1:]:
        shape = tuple(spec.shape or ())
        if not shape or (isinstance(shape[0], int) and shape[0] > 0 and shape[0] != size):
            out.add(spec.name)
    return frozenset(out)


@contextlib.contextmanager
def _opened(model: Any, session_args: Mapping[str, Any]) -> Iterator[Any]:
    from onnxfit.runtime.session import Session

    if isinstance(model, Session):
        yield model
        return
    with Session(model, **{"target": "cpu", **session_args}) as sess:
        yield sess


def iter_outputs(
    model: ModelArg | Any,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    batch: int = DEFAULT_BATCH,
    **session_args: Any,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on every feed, piece by piece (module docstring): one output dict per
    piece, padding rows removed. ``session_args`` go to :class:`Session` (``target``,
    ``providers``, ``threads``...)."""
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    with _opened(model, session_args) as sess:
        first = sess.inputs[0].shape[0] if sess.inputs and sess.inputs[0].shape else None
        fixed = first if isinstance(first, int) and first > 0 else None
        size = fixed or batch
        whole = _unbatched(sess.inputs, size) if fixed else _unbatched(sess.inputs, -1)
        for feed in feeds:
            for piece in split_feed(feed, size, whole):
                n = next(iter(piece.values())).shape[0]
                out = sess.run(_pad(piece, size, whole) if fixed and n < fixed else piece)
                yield {
                    k: np.asarray(v)[:n] if np.ndim(v) else np.asarray(v) for k, v in out.items()
                }


def run_all(
    model: ModelArg | Any,
    inputs: Inputs,
    *,
    batch: int = DEFAULT_BATCH,
    **session_args: Any,
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on all ``inputs``, concatenated along the batch axis, by name."""
    if isinstance(inputs, np.ndarray):
        names = input_names(model)
        feeds, _ = feeds_of(inputs, names)
    else:
        feeds, _ = feeds_of(inputs, [])
    parts: dict[str, list[np.ndarray]] = {}
    for out in iter_outputs(model, feeds, batch=batch, **session_args):
        for name, value in out.items():
            parts.setdefault(name, []).append(value)
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in parts.items()}


def input_names(model: ModelArg | Any) -> list[str]:
    """The real (non-initializer) input names of ``model``."""
    from onnxfit.runtime.session import Session

    if isinstance(model, Session):
        return [s.name for s in model.inputs]
    if isinstance(model, str | os.PathLike):
        model = io.load_proto(Path(model), with_external=False)
    if isinstance(model, ir.Model):
        graph = model.graph
        inits = set(graph.initializers)
        return [v.name or "" for v in graph.inputs if v.name not in inits]
    # an ORT-ready protobuf (per-node sensitivity hands those over)
    inits = {i.name for i in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in inits]
