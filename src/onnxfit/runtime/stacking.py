"""Single items to one batch and back: the data half of
:class:`~onnxfit.runtime.batching.BatchEngine`.

* :func:`check_item` checks one item (a dict of input name -> array with a leading batch
  dimension of 1) against the session's input specs: names, leading 1, dtype, rank and every
  fixed trailing dimension; an error names the item, the input, the expected and the given.
* :func:`signature` keys items by trailing shapes and dtypes: only items with the same key can
  share a batch.
* :func:`stack_items` concatenates items along the batch dimension, padding with copies of the
  last item up to a fixed batch; :func:`split_outputs` hands each item its rows of every output
  (whole, for an output without the batch dimension), the padding's rows dropped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxfit.errors import InputError

__all__ = ["Feeds", "check_item", "fixed_batch_dim", "signature", "split_outputs", "stack_items"]

logger = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def fixed_batch_dim(specs: Sequence[Any]) -> int | None:
    """The fixed leading dim shared by the inputs, or None when it is symbolic/unknown."""
    dims = {s.shape[0] if len(s.shape) else None for s in specs}
    fixed = {d for d in dims if isinstance(d, int) and d > 0}
    if not fixed:
        return None
    if len(fixed) > 1:
        raise InputError(f"inputs disagree on the fixed batch dimension: {sorted(fixed)}")
    return fixed.pop()


def check_item(
    item: Mapping[str, np.ndarray], specs: Sequence[Any], index: int | None = None
) -> Feeds:
    """``item`` as arrays, checked against ``specs`` (objects with name, shape and, optionally,
    dtype); ``index`` names the item in errors."""
    where = "item" if index is None else f"item {index}"
    if not isinstance(item, Mapping):
        raise InputError(f"{where}: expected a dict of input name -> array, got {type(item)}")
    names = [s.name for s in specs]
    missing = [n for n in names if n not in item]
    if missing:
        raise InputError(f"{where}: missing input(s) {missing}", hint=f"inputs: {names}")
    out: Feeds = {}
    for spec in specs:
        name = spec.name
        arr = np.asarray(item[name])
        if arr.ndim == 0 or arr.shape[0] != 1:
            raise InputError(
                f"{where}: input {name!r} has shape {arr.shape}; expected a leading batch "
                "dimension of 1",
                hint="add one with arr[None] (one item per dict)",
            )
        # checked here so that a bad item fails its own caller, not a whole dynamic batch
        want = getattr(spec, "dtype", None)
        if want is not None and want != np.dtype(np.void) and arr.dtype != want:
            raise InputError(
                f"{where}: input {name!r} has dtype {arr.dtype}, expected {want}",
                hint=f"convert it with .astype(np.{np.dtype(want).name})",
            )
        shape = tuple(spec.shape)
        bad = len(shape) != arr.ndim or any(
            isinstance(d, int) and d != g for d, g in zip(shape[1:], arr.shape[1:], strict=False)
        )
        if shape and bad:
            raise InputError(
                f"{where}: input {name!r} has shape {list(arr.shape)}, expected "
                f"{['?' if d is None else d for d in shape]} (batch dimension 1)"
            )
        out[name] = arr
    return out


def signature(feeds: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """Inputs' names, trailing shapes and dtypes: items batch together only when these match."""
    return tuple(sorted((k, v.shape[1:], v.dtype.str) for k, v in feeds.items()))


def stack_items(
    items: Sequence[Feeds], names: Sequence[str], fixed_batch: int | None
) -> tuple[Feeds, int]:
    """(one batch of ``items``, its row count): padded to ``fixed_batch`` with the last item."""
    padded = list(items)
    if fixed_batch is not None and len(items) < fixed_batch:
        padded += [items[-1]] * (fixed_batch - len(items))
    run_n = len(padded)
    if run_n == 1:
        return dict(padded[0]), 1
    return {k: np.concatenate([it[k] for it in padded], axis=0) for k in names}, run_n


def split_outputs(outs: Feeds, n: int, run_n: int) -> list[Feeds]:
    """The first ``n`` items' outputs from a batch of ``run_n`` rows (each keeps a leading 1)."""
    if run_n == 1:
        return [outs]
    result: list[Feeds] = [{} for _ in range(n)]
    for name, arr in outs.items():
        if arr.ndim >= 1 and arr.shape[0] == run_n:
            for i in range(n):
                result[i][name] = arr[i : i + 1]
        else:  # no batch dimension on this output: every item gets it whole
            logger.debug("output %r has no batch dim (shape %s)", name, arr.shape)
            for i in range(n):
                result[i][name] = arr
    return result
