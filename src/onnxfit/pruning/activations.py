"""Layer inputs on calibration data, as the matrices layer-wise reconstruction needs.

A weighted layer (:class:`Layer`: a Conv, a Gemm or a MatMul with a constant 2-D weight) is a
linear map ``Y = W X`` per group once its input is unfolded:

* :meth:`Layer.matrix` views the weight as ``[G, R, C]`` (groups, output rows per group, input
  columns per group; a Conv's columns are ``(channel, kh, kw)``, its weight's own order) and
  :meth:`Layer.from_matrix` turns such a matrix back into the weight's shape;
* :meth:`Layer.patches` unfolds an input batch into ``[G, N, C]`` rows (im2col for a Conv:
  one row per output position, honouring pads, strides, dilations and groups; a depthwise conv
  has ``G`` = channels and ``C`` = kh x kw);
* :func:`input_batches` runs a model (onnx_ir, via :func:`onnxfit.verify.runner.iter_outputs`)
  up to the given values only (``onnx_ir.convenience.extract``) and yields them batch by batch,
  so that a caller can stream them into a Hessian ``H = X^T X`` (:func:`accumulate`) without
  holding every image's patches at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.verify.runner import iter_outputs


def _ints(node: ir.Node, name: str, default: Sequence[int]) -> tuple[int, ...]:
    attr = node.attributes.get(name)
    return tuple(int(v) for v in attr.as_ints()) if attr is not None else tuple(default)


@dataclass
class Layer:
    """One weighted node and how its weight maps inputs to outputs (module docstring)."""

    node: ir.Node
    weight: ir.Value
    transposed: bool = False  # Gemm transB=0 / MatMul: the weight is [K, N]

    @classmethod
    def of(cls, node: ir.Node, weight_index: int) -> Layer:
        """The layer of ``node`` whose constant weight is input ``weight_index``."""
        value = node.inputs[weight_index]
        assert value is not None
        if node.op_type == "Conv":
            return cls(node, value)
        shape = value.const_value.shape if value.const_value is not None else None
        if shape is None or len(shape) != 2 or weight_index != 1:
            raise InputError(f"{node.name}: only a 2-D right-hand weight can be reconstructed")
        if node.op_type == "Gemm":
            trans_a = node.attributes.get("transA")
            if trans_a is not None and trans_a.as_int():
                raise InputError(f"{node.name}: Gemm with transA=1 is not supported")
            trans_b = node.attributes.get("transB")
            return cls(node, value, transposed=not (trans_b is not None and trans_b.as_int()))
        return cls(node, value, transposed=True)

    @property
    def name(self) -> str:
        return str(self.weight.name)

    @property
    def input(self) -> ir.Value:
        value = self.node.inputs[0]
        assert value is not None
        return value

    def array(self) -> np.ndarray:
        assert self.weight.const_value is not None
        return np.asarray(self.weight.const_value.numpy())

    @property
    def groups(self) -> int:
        attr = self.node.attributes.get("group")
        return int(attr.as_int()) if attr is not None and self.node.op_type == "Conv" else 1

    def matrix(self, w: np.ndarray | None = None) -> np.ndarray:
        """The weight (or ``w`` of its shape) as ``[G, R, C]`` float64."""
        w = self.array() if w is None else w
        w = np.asarray(w, np.float64)
        if self.node.op_type != "Conv":
            return (w.T if self.transposed else w)[None]
        g = self.groups
        return w.reshape(g, w.shape[0] // g, -1)

    def from_matrix(self, m: np.ndarray) -> np.ndarray:
        """``m`` ``[G, R, C]`` back in the weight's shape and dtype."""
        w = self.array()
        if self.node.op_type != "Conv":
            out = m[0].T if self.transposed else m[0]
        else:
            out = m.reshape(w.shape)
        return np.ascontiguousarray(out).astype(w.dtype)

    def _geometry(self, spatial: Sequence[int]) -> tuple[list[int], list[int], list[int]]:
        k = list(self.array().shape[2:])
        n = len(k)
        strides = list(_ints(self.node, "strides", [1] * n))
        dil = list(_ints(self.node, "dilations", [1] * n))
        pads = list(_ints(self.node, "pads", [0] * 2 * n))
        auto = self.node.attributes.get("auto_pad")
        mode = auto.as_string() if auto is not None else "NOTSET"
        if mode in ("SAME_UPPER", "SAME_LOWER"):
            for i, size in enumerate(spatial):
                out = -(-size // strides[i])
                total = max(0, (out - 1) * strides[i] + dil[i] * (k[i] - 1) + 1 - size)
                small, big = total // 2, total - total // 2
                pads[i], pads[i + n] = (small, big) if mode == "SAME_UPPER" else (big, small)
        elif mode == "VALID":
            pads = [0] * 2 * n
        return strides, dil, pads

    def patches(self, x: np.ndarray) -> np.ndarray:
        """The input batch ``x`` unfolded to ``[G, N, C]`` float32 rows (module docstring)."""
        x = np.asarray(x, np.float32)
        if self.node.op_type != "Conv":
            return x.reshape(1, -1, x.shape[-1])
        w = self.array()
        if x.ndim != 4 or w.ndim != 4:
            raise InputError(f"{self.node.name}: only 2-D convolutions can be reconstructed")
        kh, kw = w.shape[2:]
        strides, dil, pads = self._geometry(x.shape[2:])
        xp = np.pad(x, ((0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        eh, ew = dil[0] * (kh - 1) + 1, dil[1] * (kw - 1) + 1
        win = np.lib.stride_tricks.sliding_window_view(xp, (eh, ew), axis=(2, 3))
        win = win[:, :, :: strides[0], :: strides[1], :: dil[0], :: dil[1]]
        b, c, ho, wo = win.shape[:4]
        g = self.groups
        rows = win.transpose(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, g, (c // g) * kh * kw)
        return np.ascontiguousarray(rows.transpose(1, 0, 2))


def accumulate(
    h: np.ndarray | None, patches: np.ndarray, *, max_rows: int | None = None
) -> np.ndarray:
    """``h + P^T P`` per group (float64 ``[G, C, C]``); ``max_rows`` keeps an evenly spaced
    subset of the rows (the same for every group) to bound the cost on large feature maps."""
    return accumulate_cross(h, patches, patches, max_rows=max_rows)


def accumulate_cross(
    c: np.ndarray | None, left: np.ndarray, right: np.ndarray, *, max_rows: int | None = None
) -> np.ndarray:
    """``c + L^T R`` per group (float64 ``[G, C, C]``) for two unfoldings of the same samples
    (the dense and the pruned model's input of one layer); ``max_rows`` as
    :func:`accumulate`, the same rows of both."""
    if max_rows is not None and left.shape[1] > max_rows:
        idx = np.linspace(0, left.shape[1] - 1, max_rows).astype(np.int64)
        left, right = left[:, idx], right[:, idx]
    add = np.matmul(left.transpose(0, 2, 1), right).astype(np.float64)
    return add if c is None else c + add


def layer_hessian(
    model: ir.Model,
    layer: Layer,
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    max_rows_per_sample: int,
) -> np.ndarray:
    """``H = X^T X`` (``[G, C, C]`` float64) of ``layer``'s unfolded input as ``model``
    computes it now on ``feeds``, at most ``max_rows_per_sample`` rows per sample."""
    h: np.ndarray | None = None
    for out in input_batches(model, [str(layer.input.name)], feeds):
        x = next(iter(out.values()))
        h = accumulate(h, layer.patches(x), max_rows=max_rows_per_sample * x.shape[0])
    assert h is not None
    return h


def probe_model(model: ir.Model, values: Sequence[str]) -> ir.Model:
    """A model computing only ``values`` from the graph inputs (weights as they are now)."""
    graph = model.graph
    inputs = [v for v in graph.inputs if not v.is_initializer()]
    sub = ir.convenience.extract(graph, inputs, list(values))
    return ir.Model(sub, ir_version=model.ir_version, functions=list(model.functions.values()))


def input_batches(
    model: ir.Model,
    values: Sequence[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    batch: int = 8,
) -> Iterator[dict[str, np.ndarray]]:
    """``values`` of ``model`` on ``feeds``, one dict per batch of at most ``batch`` samples."""
    yield from iter_outputs(probe_model(model, values), feeds, batch=batch)
