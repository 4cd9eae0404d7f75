"""Running models for verification: inputs to feed dicts, fixed-batch splitting, ORT runs."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.data.calibration import CalibrationData
from onnxfit.errors import InputError

ModelArg = ir.Model | str | os.PathLike[str]
Inputs = CalibrationData | np.ndarray | Sequence[Mapping[str, np.ndarray]]


def feeds_of(inputs: Inputs, names: Sequence[str]) -> tuple[list[dict[str, np.ndarray]], bool]:
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


def split_feed(feed: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into pieces of ``size`` samples."""
    n = next(iter(feed.values())).shape[0]
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in feed.items()}


def iter_runs(
    model: ModelArg | onnx.ModelProto, feeds: list[dict[str, np.ndarray]], batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on every feed, split to its fixed batch size (else to ``batch``)."""
    from onnxfit.runtime.session import Session

    with Session(model, target="cpu") as sess:
        first = sess.inputs[0].shape[0] if sess.inputs and sess.inputs[0].shape else None
        size = first if isinstance(first, int) and first > 0 else batch
        for feed in feeds:
            for piece in split_feed(feed, size):
                yield sess.run(piece)


def run_all(
    model: ModelArg, feeds: list[dict[str, np.ndarray]], batch: int
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on all feeds, concatenated along the batch axis."""
    parts: dict[str, list[np.ndarray]] = {}
    for out in iter_runs(model, feeds, batch):
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in parts.items()}


def input_names(model: ModelArg) -> list[str]:
    graph = model.graph if isinstance(model, ir.Model) else None
    if graph is None:
        proto = io.load_proto(Path(model), with_external=False)  # type: ignore[arg-type]
        inits = {i.name for i in proto.graph.initializer}
        return [i.name for i in proto.graph.input if i.name not in inits]
    inits = set(graph.initializers)
    return [v.name or "" for v in graph.inputs if v.name not in inits]
