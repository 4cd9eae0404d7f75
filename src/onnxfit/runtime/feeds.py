"""Model inputs and outputs as :class:`TensorSpec`, and checking feeds against them.

:func:`check_feeds` accepts a dict of input name -> array (a list or scalar is converted to the
input's dtype) and checks names (none missing, none unknown), dtype, rank, every fixed dimension,
and that inputs sharing a symbolic dimension agree on its size; an error names the input, the
expected and the given. :func:`spec_from_ort` turns an ONNX Runtime ``NodeArg`` into a spec
(free-dim overrides applied).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from onnxfit.errors import InputError

__all__ = ["Dim", "TensorSpec", "check_feeds", "fmt_shape", "spec_from_ort"]

Dim = int | str | None

#: ORT NodeArg.type -> numpy dtype (an unknown type reads as ``np.void``: not checked)
_ORT_DTYPES: dict[str, np.dtype] = {
    f"tensor({k})": np.dtype(v)
    for k, v in {
        "float": np.float32,
        "float16": np.float16,
        "double": np.float64,
        "int8": np.int8,
        "uint8": np.uint8,
        "int16": np.int16,
        "uint16": np.uint16,
        "int32": np.int32,
        "uint32": np.uint32,
        "int64": np.int64,
        "uint64": np.uint64,
        "bool": np.bool_,
        "string": np.object_,
    }.items()
}


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, shape (int = fixed, str = symbolic, None = unknown), dtype."""

    name: str
    shape: tuple[Dim, ...]
    dtype: np.dtype

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": str(self.dtype)}


def fmt_shape(shape: Sequence[Dim]) -> str:
    """``("batch", 3, None)`` -> ``"[batch, 3, ?]"``."""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def spec_from_ort(node_arg: Any, free_dims: Mapping[str, int]) -> TensorSpec:
    """The spec of an ORT ``NodeArg``; symbolic dims named in ``free_dims`` become those sizes."""
    shape: list[Dim] = []
    for d in node_arg.shape or ():
        if isinstance(d, str) and d in free_dims:
            shape.append(free_dims[d])
        elif isinstance(d, int) and d >= 0:
            shape.append(d)
        else:
            shape.append(d if isinstance(d, str) else None)
    dtype = _ORT_DTYPES.get(node_arg.type, np.dtype(np.void))
    return TensorSpec(node_arg.name, tuple(shape), dtype)


def check_feeds(feeds: Mapping[str, Any], inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Check feeds against the input specs; return them as arrays in the inputs' order.

    Raises :class:`InputError` naming the input and the expected and given names, dtype or shape.
    """
    if not isinstance(feeds, Mapping):
        raise InputError(
            f"feeds must be a dict of input name -> array, given {type(feeds).__name__}",
            hint=f"e.g. session.run({{{inputs[0].name!r}: array}})" if inputs else None,
        )
    names = [s.name for s in inputs]
    unknown = sorted(set(feeds) - set(names))
    missing = [n for n in names if n not in feeds]
    if unknown or missing:
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {', '.join(map(repr, unknown))}")
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        raise InputError(
            "; ".join(parts) + f"; the model's inputs are {', '.join(map(repr, names))}",
            hint="feed exactly the model's inputs, by name",
        )
    out: dict[str, np.ndarray] = {}
    symbols: dict[str, tuple[str, int]] = {}
    for spec in inputs:
        arr = feeds[spec.name]
        if not isinstance(
            arr, np.ndarray
        ):  # a list or scalar has no dtype of its own: take the input's
            known = spec.dtype != np.dtype(np.void)
            try:
                arr = np.asarray(arr, dtype=spec.dtype if known else None)
            except (TypeError, ValueError) as exc:
                raise InputError(
                    f"input {spec.name!r}: cannot convert the given {type(arr).__name__} to "
                    f"{spec.dtype} ({exc})"
                ) from None
        if spec.dtype != np.dtype(np.void) and arr.dtype != spec.dtype:
            raise InputError(
                f"input {spec.name!r}: expected dtype {spec.dtype}, given {arr.dtype}",
                hint=f"convert it with .astype(np.{spec.dtype.name})",
            )
        want = f"{fmt_shape(spec.shape)}"
        if arr.ndim != len(spec.shape):
            raise InputError(
                f"input {spec.name!r}: expected shape {want} (rank {len(spec.shape)}), "
                f"given {list(arr.shape)} (rank {arr.ndim})",
                hint="add or drop the batch dimension (np.expand_dims / squeeze)",
            )
        for i, (dim, got) in enumerate(zip(spec.shape, arr.shape, strict=True)):
            if isinstance(dim, int) and dim != got:
                raise InputError(
                    f"input {spec.name!r}: expected shape {want}, given {list(arr.shape)} "
                    f"(dimension {i} must be {dim})",
                    hint="resize the data, or build the session with other free_dims",
                )
            if isinstance(dim, str):
                seen = symbols.setdefault(dim, (spec.name, got))
                if seen[1] != got:
                    raise InputError(
                        f"input {spec.name!r}: dimension {i} ({dim!r}) is {got}, but input "
                        f"{seen[0]!r} has {dim!r} = {seen[1]}",
                        hint="inputs sharing a dimension name must agree on its size",
                    )
        out[spec.name] = arr
    return out
