"""The builder the zoo models share: ONNX nodes recorded on a tape while each op also runs
eagerly in numpy, so that every BatchNormalization gets calibrated running statistics.

:class:`Net` draws weights from one ``numpy.random.Generator`` in call order (so a seed fixes every
byte), runs Conv / BatchNormalization / Relu / LeakyRelu / Add / MaxPool in numpy on one
N(0, 1) input, and gives each BN the per-channel mean and (biased) variance of its input,
rounded to 10 significant bits. :meth:`Net.model` wraps the tape as an opset-17, IR-version-8
model with the input ``"input"`` [batch, ...].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnxfit import __version__
from onnxfit.errors import InputError

OPSET = 17
#: IR version 8 is what the ONNX release that introduced opset 17 (1.12) writes.
IR_VERSION = 8
BN_EPSILON = 1e-5
_STAT_BITS = 10
_FLOAT = ir.DataType.FLOAT


@dataclass
class Traced:
    """A tensor under construction: its graph value and its eager numpy value (calibration)."""

    value: ir.Value
    data: np.ndarray


def _round_bits(x: np.ndarray, bits: int = _STAT_BITS) -> np.ndarray:
    mant, exp = np.frexp(x.astype(np.float64))
    return np.ldexp(np.round(mant * 2.0**bits) / 2.0**bits, exp).astype(np.float32)


def _conv_np(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    kh, kw = w.shape[2:]
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    y = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # n, h, w, o
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def _maxpool_np(x: np.ndarray, k: int, stride: int, pads: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = pads
    if any(pads):
        x = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=-np.inf)
    win = sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.ascontiguousarray(win.max(axis=(4, 5)))


class Net:
    """Records nodes on an :class:`onnx_ir.tape.Tape` and runs each op eagerly in numpy."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int]) -> None:
        self.rng = rng
        self.tape = ir.tape.Tape()
        data = rng.standard_normal((1, *shape), dtype=np.float32)
        self.input = Traced(ir.val("input", _FLOAT, ["batch", *shape]), data)

    def param(self, name: str, array: np.ndarray) -> ir.Value:
        return self.tape.initializer(ir.tensor(np.asarray(array, np.float32), name=name))

    def op(self, op_type: str, name: str, inputs: Sequence[ir.Value | None], data: np.ndarray,
           out: str | None = None, **attrs: Any) -> Traced:  # fmt: skip
        data = data.astype(np.float32, copy=False)
        value = ir.val(out or name, _FLOAT, ["batch", *data.shape[1:]])
        self.tape.op(op_type, inputs, attrs or None, name=name, output=value)
        return Traced(value, data)

    def conv(self, x: Traced, name: str, cout: int, k: int, *, std: float, stride: int = 1,
             bias: bool = False, out: str | None = None) -> Traced:  # fmt: skip
        """Conv k x k (pad k // 2), weights N(0, std^2), optional bias U(+-1/sqrt(fan_in))."""
        cin = x.data.shape[1]
        w = self.rng.standard_normal((cout, cin, k, k), dtype=np.float32) * np.float32(std)
        inputs = [x.value, self.param(f"{name}.weight", w)]
        y = _conv_np(x.data, w, stride, k // 2)
        if bias:
            bound = 1.0 / np.sqrt(cin * k * k)
            b = self.rng.uniform(-bound, bound, cout).astype(np.float32)
            inputs.append(self.param(f"{name}.bias", b))
            y += b[None, :, None, None]
        p = k // 2
        return self.op(
            "Conv", name, inputs, y, out, kernel_shape=[k, k], strides=[stride, stride],
            pads=[p, p, p, p],
        )  # fmt: skip

    def bn(self, x: Traced, name: str) -> Traced:
        """BatchNormalization whose running statistics are those of ``x`` (calibration)."""
        c = x.data.shape[1]
        gamma = np.clip(1 + 0.1 * self.rng.standard_normal((c,), dtype=np.float32), 0.5, 1.5)
        beta = 0.05 * self.rng.standard_normal((c,), dtype=np.float32)
        mean = _round_bits(x.data.mean(axis=(0, 2, 3), dtype=np.float64))
        var = _round_bits(np.maximum(x.data.var(axis=(0, 2, 3), dtype=np.float64), 1e-4))
        scale = gamma / np.sqrt(var + np.float32(BN_EPSILON))
        y = (x.data - mean[None, :, None, None]) * scale[None, :, None, None]
        y += beta[None, :, None, None]
        names = ("weight", "bias", "running_mean", "running_var")
        params = [
            self.param(f"{name}.{n}", a)
            for n, a in zip(names, (gamma, beta, mean, var), strict=True)
        ]
        return self.op("BatchNormalization", name, [x.value, *params], y, epsilon=BN_EPSILON)

    def relu(self, x: Traced, name: str) -> Traced:
        return self.op("Relu", name, [x.value], np.maximum(x.data, 0))

    def leaky(self, x: Traced, name: str, alpha: float = 0.1) -> Traced:
        y = np.where(x.data > 0, x.data, np.float32(alpha) * x.data)
        return self.op("LeakyRelu", name, [x.value], y, alpha=alpha)

    def add(self, a: Traced, b: Traced, name: str) -> Traced:
        return self.op("Add", name, [a.value, b.value], a.data + b.data)

    def maxpool(
        self, x: Traced, name: str, k: int, stride: int, pads: tuple[int, int, int, int]
    ) -> Traced:
        """MaxPool; ``pads`` as ONNX orders them: (top, left, bottom, right)."""
        y = _maxpool_np(x.data, k, stride, pads)
        return self.op(
            "MaxPool", name, [x.value], y, kernel_shape=[k, k], strides=[stride, stride],
            pads=list(pads),
        )  # fmt: skip

    def model(self, outputs: list[Traced], *, name: str, doc: str, seed: int) -> ir.Model:
        graph = ir.Graph(
            inputs=[self.input.value],
            outputs=[t.value for t in outputs],
            nodes=self.tape.nodes,
            initializers=self.tape.initializers,
            opset_imports={"": OPSET},
            name=name,
        )
        return ir.Model(
            graph,
            ir_version=IR_VERSION,
            producer_name="onnxfit",
            producer_version=__version__,
            doc_string=doc,
            metadata_props={"onnxfit.zoo": name, "onnxfit.zoo.seed": str(seed)},
        )


def check_args(seed: int, num_classes: int) -> None:
    """Refuse a bad seed or class count (:class:`InputError`), before anything is built."""
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"bad seed {seed!r}", hint="give a non-negative integer seed")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"bad num_classes {num_classes!r}", hint="give a positive integer")
