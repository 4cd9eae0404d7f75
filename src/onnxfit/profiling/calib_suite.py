"""The fixed set of models and per-op probes ``onnxfit calibrate`` runs on a device.

:func:`calibration_suite` returns, in a stable order:

* **models** — the zoo's ResNet-18 and YOLOv3-tiny, and generated networks at several widths,
  each stressing one kind of kernel: ``cnn`` (3x3 convolutions), ``mobilenet`` (depthwise 3x3 +
  pointwise 1x1), ``bottleneck`` (1x1-heavy residual blocks) and ``transformer`` (MatMul blocks:
  attention with Softmax, MLP, LayerNorm, residual Adds); each at batch 1 and, in the full
  suite, again at batch 2 (``<name>-b2``: the batch the runtime's auto-tuner settles on for these
  models on a 2-core CPU, where throughput is flat beyond it);
* **probes** — single-op graphs over a range of sizes (3x3 / 1x1 / depthwise Conv, MatMul,
  elementwise, pooling, Softmax, Transpose, Concat, Resize), which give the fit clean samples
  of one kernel each.

Weights are seeded random values (``seed``): latency does not depend on them. Every graph is
opset 17, float32, with static shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

OPSET = 17


@dataclass(frozen=True)
class SuiteModel:
    """One graph of the suite: ``kind`` is ``model`` (validated) or ``probe`` (fit only)."""

    name: str
    model: ir.Model
    kind: str
    batch: int = 1


class _G:
    """A tiny graph builder on the IR: nodes, seeded initializers, unique names. A name an op
    reads that nothing defines becomes the graph input (its shape is set by :meth:`build`)."""

    def __init__(self, name: str, seed: int) -> None:
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.k = 0
        self.values: dict[str, ir.Value] = {}
        self.nodes: list[ir.Node] = []
        self.inits: list[ir.Value] = []
        self.inputs: list[ir.Value] = []

    def _id(self, base: str) -> str:
        self.k += 1
        return f"{base}_{self.k}"

    def _init(self, name: str, arr: np.ndarray) -> str:
        tensor = ir.tensor(arr, name=name)
        value = ir.Value(name=name, shape=ir.Shape(arr.shape), type=ir.TensorType(tensor.dtype))
        value.const_value = tensor
        self.values[name] = value
        self.inits.append(value)
        return name

    def w(self, *shape: int, scale: float = 0.05) -> str:
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        return self._init(self._id("w"), arr)

    def const(self, values: list[int] | list[float], dtype: type = np.int64) -> str:
        return self._init(self._id("c"), np.array(values, dtype))

    def _value(self, name: str) -> ir.Value:
        if name not in self.values:
            value = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT))
            self.values[name] = value
            self.inputs.append(value)
        return self.values[name]

    def op(self, op: str, inputs: list[str], **attrs: Any) -> str:
        out = self._id(op.lower())
        node = ir.node(op, [self._value(i) for i in inputs], attrs, name=out)
        node.outputs[0].name = out
        self.values[out] = node.outputs[0]
        self.nodes.append(node)
        return out

    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, group: int = 1) -> str:
        w = self.w(cout, cin // group, k, k)
        b = self.w(cout)
        p = k // 2
        return self.op("Conv", [x, w, b], pads=[p] * 4, strides=[stride] * 2, group=group)

    def build(self, inp: str, shape: list[int], out: str) -> ir.Model:
        x = self._value(inp)
        x.shape = ir.Shape(shape)
        graph = ir.Graph(
            [x],
            [self.values[out]],
            nodes=self.nodes,
            initializers=self.inits,
            opset_imports={"": OPSET},
            name=self.name,
        )
        model = ir.Model(graph, ir_version=8)
        ShapeInferencePass()(model)
        return model


def _head(g: _G, x: str, channels: int) -> str:
    x = g.op("GlobalAveragePool", [x])
    x = g.op("Flatten", [x])
    return g.op("Gemm", [x, g.w(10, channels), g.w(10)], transB=1)


def cnn(width: int, *, hw: int = 112, seed: int = 0, batch: int = 1) -> ir.Model:
    """3x3 convolutions: a stem at stride 2, then (3x3, 3x3 stride 2) doubling the width."""
    g = _G(f"cnn-w{width}", seed)
    x = g.op("Relu", [g.conv("x", 3, width, stride=2)])
    c = width
    for _ in range(3):
        x = g.op("Relu", [g.conv(x, c, c)])
        x = g.op("Relu", [g.conv(x, c, 2 * c, stride=2)])
        c *= 2
    return g.build("x", [batch, 3, hw, hw], _head(g, x, c))


def mobilenet(width: int, *, hw: int = 112, seed: int = 0, batch: int = 1) -> ir.Model:
    """Depthwise-separable blocks (MobileNet v1 style): dw 3x3 + Relu, pw 1x1 + Relu."""
    g = _G(f"mobilenet-w{width}", seed)
    x = g.op("Relu", [g.conv("x", 3, width, stride=2)])
    c = width
    for stride in (1, 2, 1, 2, 1, 2):
        x = g.op("Relu", [g.conv(x, c, c, stride=stride, group=c)])
        out = 2 * c if stride == 2 else c
        x = g.op("Relu", [g.conv(x, c, out, k=1)])
        c = out
    return g.build("x", [batch, 3, hw, hw], _head(g, x, c))


def bottleneck(width: int, *, hw: int = 56, seed: int = 0, batch: int = 1) -> ir.Model:
    """1x1-heavy residual blocks (ResNet-50 style): 1x1 reduce, 3x3, 1x1 expand, Add, Relu."""
    g = _G(f"bottleneck-w{width}", seed)
    x = g.op("Relu", [g.conv("x", 3, 4 * width, k=1)])
    for _ in range(3):
        y = g.op("Relu", [g.conv(x, 4 * width, width, k=1)])
        y = g.op("Relu", [g.conv(y, width, width)])
        y = g.conv(y, width, 4 * width, k=1)
        x = g.op("Relu", [g.op("Add", [y, x])])
    return g.build("x", [batch, 3, hw, hw], _head(g, x, 4 * width))


def transformer(
    dim: int, *, tokens: int = 128, heads: int = 4, seed: int = 0, batch: int = 1
) -> ir.Model:
    """Two pre-norm transformer blocks: attention (MatMul, Softmax) and an MLP, residual Adds."""
    g = _G(f"transformer-d{dim}", seed)
    x = "x"
    hd = dim // heads
    for _ in range(2):
        n = g.op("LayerNormalization", [x, g.w(dim, scale=1.0), g.w(dim)], axis=-1)
        q, k, v = (g.op("MatMul", [n, g.w(dim, dim)]) for _ in range(3))

        def split(t: str) -> str:
            t = g.op("Reshape", [t, g.const([batch, tokens, heads, hd])])
            return g.op("Transpose", [t], perm=[0, 2, 1, 3])

        qh, kh, vh = split(q), split(k), split(v)
        kt = g.op("Transpose", [kh], perm=[0, 1, 3, 2])
        s = g.op("Mul", [g.op("MatMul", [qh, kt]), g.const([hd**-0.5], np.float32)])
        a = g.op("MatMul", [g.op("Softmax", [s], axis=-1), vh])
        a = g.op(
            "Reshape", [g.op("Transpose", [a], perm=[0, 2, 1, 3]), g.const([batch, tokens, dim])]
        )
        x = g.op("Add", [x, g.op("MatMul", [a, g.w(dim, dim)])])
        n = g.op("LayerNormalization", [x, g.w(dim, scale=1.0), g.w(dim)], axis=-1)
        hmid = g.op("Relu", [g.op("Add", [g.op("MatMul", [n, g.w(dim, 4 * dim)]), g.w(4 * dim)])])
        x = g.op("Add", [x, g.op("MatMul", [hmid, g.w(4 * dim, dim)])])
    return g.build("x", [batch, tokens, dim], x)


def _probe(name: str, shape: list[int], make: object, seed: int) -> ir.Model:
    g = _G(name, seed)
    out = make(g)  # type: ignore[operator]
    return g.build("x", shape, out)


def probes(*, seed: int = 0) -> list[SuiteModel]:
    """Single-op graphs over a range of sizes (module docstring)."""
    out: list[tuple[str, list[int], object]] = []
    # the cost of a run itself: one tiny elementwise op (GPU providers' calibration uses it)
    out.append(("null", [1, 4], lambda g: g.op("Relu", ["x"])))
    for c, hw in ((16, 112), (32, 56), (64, 56), (128, 28), (256, 14)):
        out.append((f"conv3x3-c{c}-{hw}", [1, c, hw, hw], lambda g, c=c: g.conv("x", c, c)))
        out.append((f"conv1x1-c{c}-{hw}", [1, c, hw, hw], lambda g, c=c: g.conv("x", c, 2 * c, 1)))
        out.append((f"dw3x3-c{c}-{hw}", [1, c, hw, hw], lambda g, c=c: g.conv("x", c, c, group=c)))
    for m, k, n in ((128, 256, 256), (256, 512, 512), (64, 1024, 1024), (512, 128, 512)):
        out.append(
            (f"matmul-{m}x{k}x{n}", [1, m, k], lambda g, k=k, n=n: g.op("MatMul", ["x", g.w(k, n)]))
        )
    for c, hw in ((32, 112), (128, 28)):
        shape = [1, c, hw, hw]
        out.append((f"relu-c{c}-{hw}", shape, lambda g: g.op("Relu", ["x"])))
        out.append((f"add-c{c}-{hw}", shape, lambda g: g.op("Add", ["x", g.op("Sigmoid", ["x"])])))
        out.append(
            (
                f"maxpool-c{c}-{hw}",
                shape,
                lambda g: g.op("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2]),
            )
        )
        out.append(
            (f"transpose-c{c}-{hw}", shape, lambda g: g.op("Transpose", ["x"], perm=[0, 2, 3, 1]))
        )
        out.append(
            (
                f"concat-c{c}-{hw}",
                shape,
                lambda g: g.op("Concat", ["x", g.op("Relu", ["x"])], axis=1),
            )
        )
        out.append(
            (
                f"resize-c{c}-{hw}",
                shape,
                lambda g: g.op(
                    "Resize", ["x", "", g.const([1.0, 1.0, 2.0, 2.0], np.float32)], mode="nearest"
                ),
            )
        )
    for t, d in ((128, 256), (512, 128)):
        out.append((f"softmax-{t}x{d}", [1, t, d], lambda g: g.op("Softmax", ["x"], axis=-1)))
    return [SuiteModel(name, _probe(name, shape, make, seed), "probe") for name, shape, make in out]


def calibration_suite(*, quick: bool = False, seed: int = 0) -> list[SuiteModel]:
    """The models, then the probes (``quick``: fewer widths and batch 1 only)."""
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.zoo import build

    widths = (16, 32) if quick else (16, 32, 64)
    dims = (128,) if quick else (128, 256)
    models: list[SuiteModel] = []
    for batch in (1,) if quick else (1, 2):
        tail = "" if batch == 1 else f"-b{batch}"

        def item(name: str, model: ir.Model, batch: int = batch, tail: str = tail) -> SuiteModel:
            return SuiteModel(name + tail, model, "model", batch=batch)

        models += [
            item(z, infer_shapes(build(z, seed=seed), batch=batch))
            for z in ("resnet18", "yolov3-tiny")
        ]
        for make, sizes, stem in (
            (cnn, widths, "cnn-w"),
            (mobilenet, widths, "mobilenet-w"),
            (bottleneck, widths, "bottleneck-w"),
            (transformer, dims, "transformer-d"),
        ):
            models += [item(f"{stem}{w}", make(w, seed=seed, batch=batch)) for w in sizes]
    return models + probes(seed=seed)
