"""Quantization arithmetic shared by the dequantize pass: ranges, (de)quantize in numpy.

The formulas follow the ONNX operator definitions (onnx.ai/onnx/operators):
``DequantizeLinear: y = (x - zero_point) * scale`` with per-tensor, per-axis (``axis``, default
1) or blocked (``block_size``) scales; ``QuantizeLinear: y = saturate(round(x / scale) +
zero_point)`` with round-half-to-even. The difference ``x - zero_point`` is taken in int64 and
then converted to the scale's float type, as onnxruntime does.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

#: Integer quantized types and their (min, max) representable values.
QRANGE: dict[ir.DataType, tuple[int, int]] = {
    ir.DataType.INT8: (-128, 127),
    ir.DataType.UINT8: (0, 255),
    ir.DataType.INT16: (-32768, 32767),
    ir.DataType.UINT16: (0, 65535),
    ir.DataType.INT4: (-8, 7),
    ir.DataType.UINT4: (0, 15),
    ir.DataType.INT32: (-(2**31), 2**31 - 1),
}

Q_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


def const_array(value: ir.Value | None) -> np.ndarray | None:
    """The constant numpy value of ``value`` (initializer or Constant output), else None."""
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    if tensor is None:
        return None
    return np.asarray(tensor.numpy())


def int_attr(node: ir.Node, name: str, default: int) -> int:
    attr = node.attributes.get(name)
    return attr.as_int() if attr is not None else default


def _broadcast_scale(
    scale: np.ndarray, shape: tuple[int, ...], axis: int, block_size: int
) -> np.ndarray:
    """Reshape a per-axis or blocked scale / zero point so it broadcasts against ``shape``."""
    if scale.size == 1 and block_size == 0:
        return scale.reshape(())
    rank = len(shape)
    axis = axis % rank if rank else 0
    if block_size > 0:
        rep = np.repeat(scale, block_size, axis=axis)
        index = [slice(None)] * rank
        index[axis] = slice(0, shape[axis])
        return rep[tuple(index)]
    view = [1] * rank
    view[axis] = -1
    return scale.reshape(view)


def dequantize_array(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    *,
    axis: int = 1,
    block_size: int = 0,
) -> np.ndarray:
    """``(x - zero_point) * scale`` in the scale's float type."""
    s = _broadcast_scale(np.asarray(scale), x.shape, axis, block_size)
    diff = x.astype(np.int64)
    if zero_point is not None:
        diff = diff - _broadcast_scale(np.asarray(zero_point), x.shape, axis, block_size).astype(
            np.int64
        )
    return (diff.astype(s.dtype) * s).astype(s.dtype)


def quantize_array(
    x: np.ndarray,
    scale: np.ndarray,
    zero_point: np.ndarray | None,
    *,
    qtype: ir.DataType,
    axis: int = 1,
    block_size: int = 0,
) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)`` as int64 values of ``qtype``."""
    lo, hi = QRANGE[qtype]
    s = _broadcast_scale(np.asarray(scale), x.shape, axis, block_size)
    q = np.rint(x.astype(np.float32) / s).astype(np.int64)
    if zero_point is not None:
        q = q + _broadcast_scale(np.asarray(zero_point), x.shape, axis, block_size).astype(np.int64)
    return np.clip(q, lo, hi)


def quant_type(node: ir.Node) -> ir.DataType | None:
    """The integer type a QuantizeLinear writes (zero point's type; default uint8)."""
    zp = node.inputs[2] if len(node.inputs) > 2 else None
    if zp is not None and zp.dtype is not None:
        return zp.dtype
    out_dtype = node.attributes.get("output_dtype")
    if out_dtype is not None and out_dtype.as_int() != 0:
        return ir.DataType(out_dtype.as_int())
    return ir.DataType.UINT8 if zp is None else None
