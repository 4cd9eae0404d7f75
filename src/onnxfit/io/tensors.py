"""Every tensor a model stores, and whether its data agrees with its dims and dtype.

* :func:`all_tensors` walks a ModelProto and yields each stored tensor with a label saying
  where it sits: graph initializers, sparse initializers (values and indices), tensors inside
  node attributes (``Constant``'s ``value``...), subgraphs and model-local functions.
* :func:`check_tensor` refuses (:class:`ModelLoadError`) an unknown ``data_type``, a negative
  dim, more elements than any model can hold, and in-file data whose length does not match
  ``prod(dims)`` elements of that dtype. :func:`expected_nbytes` is the byte length that
  external data must have.
* :func:`densify_sparse_initializers` turns ``graph.sparse_initializer`` entries into ordinary
  initializers (onnx_ir does not read sparse initializers; ONNX Runtime does), after checking
  their indices are in range.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxfit.errors import ModelLoadError

#: No model can hold a tensor of more elements than this (2**40, about 10**12).
MAX_ELEMENTS = 2**40

#: dtype -> bits per element (STRING: None, variable length).
_BITS: dict[int, int | None] = {
    TensorProto.FLOAT: 32, TensorProto.UINT8: 8, TensorProto.INT8: 8, TensorProto.UINT16: 16,
    TensorProto.INT16: 16, TensorProto.INT32: 32, TensorProto.INT64: 64,
    TensorProto.STRING: None, TensorProto.BOOL: 8, TensorProto.FLOAT16: 16,
    TensorProto.DOUBLE: 64, TensorProto.UINT32: 32, TensorProto.UINT64: 64,
    TensorProto.COMPLEX64: 64, TensorProto.COMPLEX128: 128, TensorProto.BFLOAT16: 16,
    17: 8, 18: 8, 19: 8, 20: 8,  # FLOAT8 E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ
    21: 4, 22: 4, 23: 4,  # UINT4, INT4, FLOAT4E2M1
    24: 8,  # FLOAT8E8M0
    25: 2, 26: 2,  # UINT2, INT2
}  # fmt: skip

_INT32_FIELD = {2, 3, 4, 5, 6, 9, 10, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26}
_TYPED_FIELD: dict[int, str] = {
    TensorProto.FLOAT: "float_data",
    TensorProto.COMPLEX64: "float_data",
    TensorProto.INT64: "int64_data",
    TensorProto.DOUBLE: "double_data",
    TensorProto.COMPLEX128: "double_data",
    TensorProto.UINT32: "uint64_data",
    TensorProto.UINT64: "uint64_data",
    TensorProto.STRING: "string_data",
    **dict.fromkeys(_INT32_FIELD, "int32_data"),
}


def dtype_name(data_type: int) -> str:
    """``FLOAT``-style name of a TensorProto data type, or ``unknown (N)``."""
    try:
        return str(TensorProto.DataType.Name(data_type))
    except ValueError:
        return f"{data_type} (unknown)"


def is_known_dtype(data_type: int) -> bool:
    """True for a dtype onnxfit can size (every defined one except UNDEFINED and 6-bit)."""
    return data_type in _BITS


def all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, TensorProto]]:
    """Every stored tensor of ``model`` with a label (``initializer 'w'``, ``node 'c' attr``)."""
    yield from _graph_tensors(model.graph, "")
    for fn in model.functions:
        for node in fn.node:
            yield from _node_tensors(node, f"function {fn.domain}::{fn.name}: ")


def _graph_tensors(graph: onnx.GraphProto, prefix: str) -> Iterator[tuple[str, TensorProto]]:
    for t in graph.initializer:
        yield f"{prefix}initializer {t.name!r}", t
    for sp in graph.sparse_initializer:
        yield f"{prefix}sparse initializer {sp.values.name!r} (values)", sp.values
        yield f"{prefix}sparse initializer {sp.values.name!r} (indices)", sp.indices
    for node in graph.node:
        yield from _node_tensors(node, prefix)


def _node_tensors(node: onnx.NodeProto, prefix: str) -> Iterator[tuple[str, TensorProto]]:
    label = f"{prefix}node {node.name!r} ({node.op_type})"
    for attr in node.attribute:
        where = f"{label} attribute {attr.name!r}"
        if attr.HasField("t"):
            yield where, attr.t
        for t in attr.tensors:
            yield where, t
        if attr.HasField("sparse_tensor"):
            yield where, attr.sparse_tensor.values
            yield where, attr.sparse_tensor.indices
        for sp in attr.sparse_tensors:
            yield where, sp.values
            yield where, sp.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g, f"{label} subgraph {attr.name!r}: ")
        for g in attr.graphs:
            yield from _graph_tensors(g, f"{label} subgraph {attr.name!r}: ")


def num_elements(where: str, t: TensorProto) -> int:
    """``prod(dims)``; refuses a negative dim or more than :data:`MAX_ELEMENTS` elements."""
    dims = [int(d) for d in t.dims]
    if any(d < 0 for d in dims):
        raise ModelLoadError(f"{where}: negative dimension in dims {dims}", hint=_REEXPORT)
    n = math.prod(dims)
    if n > MAX_ELEMENTS:
        raise ModelLoadError(
            f"{where}: dims {dims} give {n:,} elements, more than any model can hold",
            hint=_REEXPORT,
        )
    return n


def expected_nbytes(where: str, t: TensorProto) -> int | None:
    """Bytes that ``t``'s raw or external data must have (None for strings)."""
    bits = _BITS.get(t.data_type)
    if t.data_type not in _BITS:
        raise ModelLoadError(
            f"{where}: data type {dtype_name(t.data_type)} is not one ONNX defines",
            hint="the file is damaged or made by a tool newer than this onnx; re-export it",
        )
    n = num_elements(where, t)
    return None if bits is None else (n * bits + 7) // 8


_REEXPORT = "the file is damaged; re-export or re-download the model"


def check_tensor(where: str, t: TensorProto) -> None:
    """Refuse a tensor whose in-file data disagrees with its dims and dtype (ModelLoadError)."""
    nbytes = expected_nbytes(where, t)
    n = num_elements(where, t)
    if t.data_location == TensorProto.EXTERNAL:
        return  # checked against the file by onnxfit.io.external
    dims = list(t.dims)
    if t.HasField("raw_data"):
        if nbytes is None:
            raise ModelLoadError(f"{where}: a STRING tensor cannot have raw data", hint=_REEXPORT)
        if len(t.raw_data) != nbytes:
            raise ModelLoadError(
                f"{where}: {len(t.raw_data):,} bytes of data for dims {dims} of "
                f"{dtype_name(t.data_type)} ({nbytes:,} expected)",
                hint=_REEXPORT,
            )
        return
    field = _TYPED_FIELD[t.data_type]
    count = len(getattr(t, field))
    per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
    allowed = {n * per}
    bits = _BITS[t.data_type]
    if bits is not None and bits < 8:  # sub-byte types: packed or one per element
        allowed.add((n * bits + 7) // 8)
    if count not in allowed and not (count == 0 and n == 0):
        empty = count == 0 and not _other_fields(t)
        what = "no data" if empty else f"{count:,} values in {field}"
        raise ModelLoadError(
            f"{where}: {what} for dims {dims} of {dtype_name(t.data_type)} ({n * per:,} expected)",
            hint=_REEXPORT,
        )


def _other_fields(t: TensorProto) -> bool:
    return any(
        len(getattr(t, f))
        for f in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data")
    )


def dense_array(
    sp: onnx.SparseTensorProto, read: Callable[[TensorProto], np.ndarray] | None = None
) -> np.ndarray:
    """The dense array of a sparse tensor; refuses indices out of range or of a wrong shape.

    ``read`` turns a (possibly external) TensorProto into an array (numpy_helper by default).
    """
    to_array = read or numpy_helper.to_array
    where = f"sparse initializer {sp.values.name!r}"
    shape = [int(d) for d in sp.dims]
    holder = TensorProto(dims=shape, data_type=sp.values.data_type)
    total = num_elements(where, holder)
    if total * max(1, (_BITS.get(sp.values.data_type) or 8) // 8) > 2**31:
        raise ModelLoadError(f"{where}: dense size of {shape} is over 2 GiB", hint=_REEXPORT)
    values = np.asarray(to_array(sp.values)).reshape(-1)
    indices = np.asarray(to_array(sp.indices)).astype(np.int64, copy=False)
    nnz = values.size
    if indices.ndim == 2 and indices.shape == (nnz, len(shape)) and shape:
        if (indices < 0).any() or (indices >= np.array(shape)).any():
            raise ModelLoadError(f"{where}: an index is outside dims {shape}", hint=_REEXPORT)
        flat = np.ravel_multi_index(tuple(indices.T), shape) if nnz else indices[:, 0]
    elif indices.ndim == 1 and indices.size == nnz:
        flat = indices
        if nnz and (flat.min() < 0 or flat.max() >= total):
            raise ModelLoadError(f"{where}: an index is outside dims {shape}", hint=_REEXPORT)
    else:
        raise ModelLoadError(
            f"{where}: indices of shape {list(indices.shape)} for {nnz} values", hint=_REEXPORT
        )
    out = np.zeros(total, dtype=values.dtype)
    out[flat] = values
    return out.reshape(shape)


def densify_sparse_initializers(
    model: onnx.ModelProto,
    read: Callable[[TensorProto], np.ndarray] | None = None,
    *,
    check_only: bool = False,
) -> int:
    """Replace ``graph.sparse_initializer`` by dense initializers (see :func:`dense_array`).

    Returns how many there were; ``check_only`` checks them and leaves the model as it is.
    """
    graph = model.graph
    dense: list[TensorProto] = []
    for sp in graph.sparse_initializer:
        array = dense_array(sp, read)
        if check_only:
            continue
        tensor = numpy_helper.from_array(array, sp.values.name)
        tensor.data_type = sp.values.data_type
        dense.append(tensor)
    count = len(graph.sparse_initializer)
    if not check_only and count:
        del graph.sparse_initializer[:]
        graph.initializer.extend(dense)
    return count
