"""Made-up inputs: the one maker of random feeds (for benchmarks, and for the synthetic
calibration data of :func:`onnxfit.data.calibration.synthetic_inputs`), the free dimensions to
fix, and input specs read from a ModelProto or an ORT session.

The leading (batch) dimension of every input comes from the batch size asked for (or the model's
own fixed one); other unknown dimensions from ``input_shapes`` (``--input-shape
name=1x3x224x224``). Feeds are seeded standard-normal floats, zero integers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from onnxfit.errors import InputError


def make_feeds(
    inputs: Sequence[Any],
    *,
    batch: int | None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    seed: int | np.random.Generator = 0,
) -> dict[str, np.ndarray]:
    """Random feeds for ``inputs`` (objects with ``name``, ``shape``, ``dtype``) at ``batch``.

    A symbolic or unknown leading dimension becomes ``batch`` (1 when None); ``input_shapes``
    gives full shapes for inputs with other unknown dimensions. A fixed leading dimension is
    kept when ``batch`` is None and raises :class:`InputError` when it differs from ``batch``.
    Floats are standard normal (``seed``: an int or a Generator to draw from), integers zero.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    shapes = dict(input_shapes or {})
    feeds: dict[str, np.ndarray] = {}
    for spec in inputs:
        if spec.name in shapes:
            shape = [int(d) for d in shapes[spec.name]]
        else:
            shape = []
            for i, d in enumerate(spec.shape):
                if isinstance(d, int) and d > 0:
                    if i == 0 and batch is not None and d != batch:
                        raise InputError(
                            f"input {spec.name!r} has a fixed batch of {d}; batch {batch} cannot "
                            "run",
                            hint=f"use --batch {d}, or export the model with a dynamic batch",
                        )
                    shape.append(d)
                elif i == 0:
                    shape.append(1 if batch is None else batch)
                else:
                    raise InputError(
                        f"input {spec.name!r} has an unknown dimension {i} ({d!r})",
                        hint=f"give its full shape (--input-shape {spec.name}=1x3x224x224) or "
                        "real data",
                    )
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "biu":
            feeds[spec.name] = np.zeros(shape, dtype)
        else:
            raise InputError(f"input {spec.name!r} has dtype {dtype}; random feeds hold numbers")
    return feeds


def free_dims_for(
    inputs: Sequence[Any], batch: int, input_shapes: Mapping[str, Sequence[int]] | None
) -> dict[str, int]:
    """Symbolic dimension name -> size, from ``batch`` (leading dims) and ``input_shapes``."""
    out: dict[str, int] = {}
    shapes = dict(input_shapes or {})
    for spec in inputs:
        dims = list(spec.shape)
        given = shapes.get(spec.name)
        for i, d in enumerate(dims):
            if isinstance(d, str) and d:
                if given is not None and i < len(given):
                    out.setdefault(d, int(given[i]))
                elif i == 0:
                    out.setdefault(d, batch)
    return out


def proto_specs(proto: Any) -> list[Any]:
    """Input specs (name, shape, dtype) of a ModelProto's graph inputs that are not weights."""
    from types import SimpleNamespace

    from onnx import helper

    weights = {t.name for t in proto.graph.initializer}
    out = []
    for vi in proto.graph.input:
        if vi.name in weights:
            continue
        tt = vi.type.tensor_type
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim
        )
        out.append(
            SimpleNamespace(
                name=vi.name, shape=shape, dtype=helper.tensor_dtype_to_np_dtype(tt.elem_type)
            )
        )
    return out


def ort_specs(node_args: Sequence[Any]) -> list[Any]:
    from types import SimpleNamespace

    dtypes = {
        "tensor(float)": np.float32,
        "tensor(float16)": np.float16,
        "tensor(double)": np.float64,
        "tensor(int64)": np.int64,
        "tensor(int32)": np.int32,
        "tensor(int8)": np.int8,
        "tensor(uint8)": np.uint8,
        "tensor(bool)": np.bool_,
    }
    out = []
    for a in node_args:
        shape = tuple(d if isinstance(d, int | str) else None for d in (a.shape or ()))
        out.append(SimpleNamespace(name=a.name, shape=shape, dtype=dtypes.get(a.type, np.object_)))
    return out
