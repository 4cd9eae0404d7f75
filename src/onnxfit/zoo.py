"""Reference architectures built directly as ONNX (no PyTorch): ResNet-18 and Tiny-YOLOv3.

The layouts are exact; the weights are random but deterministic (``numpy.random.default_rng(seed)``)
and *calibrated*: while a model is built, the same operators run eagerly in numpy on one
N(0, 1) input (from the same generator), and every BatchNormalization gets that input's
per-channel mean and (biased) variance as its running statistics, so each BN output has about
unit variance and activations stay finite and of sane size through the whole net. The
statistics are rounded to 10 significant bits so that other BLAS builds almost always reproduce
the same bytes; on one machine the same seed always gives byte-identical files.

Every model: opset 17, IR version 8 (loads in onnxruntime >= 1.12), input ``"input"`` float32
with a dynamic batch dimension ``"batch"``, BN left as BatchNormalization nodes (folding them is
a pass), node names like ``layer1.0.conv1`` and initializer names like torchvision state_dict
keys (``layer1.0.conv1.weight``, ``bn1.running_mean``).

* :func:`resnet18`: torchvision's ``resnet18`` layout (He et al. 2015, "Deep Residual Learning",
  arXiv:1512.03385; torchvision/models/resnet.py). Input [batch, 3, 224, 224], output
  ``"logits"`` [batch, num_classes]. 11,689,512 parameters (torchvision's count: every weight
  and bias, not BN running statistics), 11,699,112 stored values with the 9,600 running
  statistics; 46,815,926 bytes (44.65 MiB) saved with seed 0.
* :func:`yolov3_tiny`: Darknet's ``cfg/yolov3-tiny.cfg`` (Redmon & Farhadi 2018,
  arXiv:1804.02767), input [batch, 3, 416, 416], raw head outputs ``"out13"``
  [batch, 255, 13, 13] and ``"out26"`` [batch, 255, 26, 26] (255 = 3 anchors x (5 + 80)),
  no YOLO decoding in the graph. Initializers are named ``layers.<darknet index>.conv.weight``,
  ``layers.<i>.bn.running_var`` .... 8,852,366 parameters, 8,858,734 values with the 6,368 BN
  running statistics; 35,447,242 bytes (33.81 MiB) saved with seed 0.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir
from numpy.lib.stride_tricks import sliding_window_view

from onnxfit import __version__
from onnxfit.errors import InputError
from onnxfit.io import FileSize, save

logger = logging.getLogger(__name__)

OPSET = 17
#: IR version 8 is what the ONNX release that introduced opset 17 (1.12) writes.
IR_VERSION = 8
BN_EPSILON = 1e-5
_STAT_BITS = 10
_FLOAT = ir.DataType.FLOAT


@dataclass
class _T:
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


class _Net:
    """Records nodes on an :class:`onnx_ir.tape.Tape` and runs each op eagerly in numpy."""

    def __init__(self, rng: np.random.Generator, shape: tuple[int, int, int]) -> None:
        self.rng = rng
        self.tape = ir.tape.Tape()
        data = rng.standard_normal((1, *shape), dtype=np.float32)
        self.input = _T(ir.val("input", _FLOAT, ["batch", *shape]), data)

    def param(self, name: str, array: np.ndarray) -> ir.Value:
        return self.tape.initializer(ir.tensor(np.asarray(array, np.float32), name=name))

    def op(self, op_type: str, name: str, inputs: Sequence[ir.Value | None], data: np.ndarray,
           out: str | None = None, **attrs: Any) -> _T:  # fmt: skip
        data = data.astype(np.float32, copy=False)
        value = ir.val(out or name, _FLOAT, ["batch", *data.shape[1:]])
        self.tape.op(op_type, inputs, attrs or None, name=name, output=value)
        return _T(value, data)

    def conv(self, x: _T, name: str, cout: int, k: int, *, std: float, stride: int = 1,
             bias: bool = False, out: str | None = None) -> _T:  # fmt: skip
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

    def bn(self, x: _T, name: str) -> _T:
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

    def relu(self, x: _T, name: str) -> _T:
        return self.op("Relu", name, [x.value], np.maximum(x.data, 0))

    def leaky(self, x: _T, name: str, alpha: float = 0.1) -> _T:
        y = np.where(x.data > 0, x.data, np.float32(alpha) * x.data)
        return self.op("LeakyRelu", name, [x.value], y, alpha=alpha)

    def add(self, a: _T, b: _T, name: str) -> _T:
        return self.op("Add", name, [a.value, b.value], a.data + b.data)

    def maxpool(self, x: _T, name: str, k: int, stride: int, pads: tuple[int, int, int, int]) -> _T:
        """MaxPool; ``pads`` as ONNX orders them: (top, left, bottom, right)."""
        y = _maxpool_np(x.data, k, stride, pads)
        return self.op(
            "MaxPool", name, [x.value], y, kernel_shape=[k, k], strides=[stride, stride],
            pads=list(pads),
        )  # fmt: skip

    def model(self, outputs: list[_T], *, name: str, doc: str, seed: int) -> ir.Model:
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


def _check_args(seed: int, num_classes: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise InputError(f"bad seed {seed!r}", hint="give a non-negative integer seed")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise InputError(f"bad num_classes {num_classes!r}", hint="give a positive integer")


def _basic_block(net: _Net, x: _T, name: str, planes: int, stride: int) -> _T:
    """torchvision BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, + identity (or 1x1 conv-BN), ReLU."""

    def he(cout: int, k: int) -> float:  # torchvision: kaiming_normal_(mode="fan_out")
        return float(np.sqrt(2.0 / (cout * k * k)))

    y = net.conv(x, f"{name}.conv1", planes, 3, stride=stride, std=he(planes, 3))
    y = net.relu(net.bn(y, f"{name}.bn1"), f"{name}.relu1")
    y = net.bn(net.conv(y, f"{name}.conv2", planes, 3, std=he(planes, 3)), f"{name}.bn2")
    identity = x
    if stride != 1 or x.data.shape[1] != planes:
        d = net.conv(x, f"{name}.downsample.0", planes, 1, stride=stride, std=he(planes, 1))
        identity = net.bn(d, f"{name}.downsample.1")
    return net.relu(net.add(y, identity, f"{name}.add"), f"{name}.relu2")


def resnet18(*, seed: int = 0, num_classes: int = 1000) -> ir.Model:
    """ResNet-18 exactly as torchvision lays it out, with seeded, BN-calibrated random weights.

    conv1 7x7/2 (64, no bias) - bn1 - relu - maxpool 3x3/2 pad 1 - layer1..layer4 (two
    BasicBlocks each; 64, 128, 256, 512 channels; the first block of layers 2-4 has stride 2 and
    a 1x1 conv + BN ``downsample``) - GlobalAveragePool - Flatten - Gemm ``fc`` (512 ->
    num_classes, with bias). Conv weights: Kaiming normal (fan_out, ReLU gain), as torchvision;
    fc: U(+-1/sqrt(512)) as ``nn.Linear``. With 1000 classes: 11,689,512 parameters
    (+ 9,600 BN running statistics). Input ``input`` [batch, 3, 224, 224]; output ``logits``.
    """
    _check_args(seed, num_classes)
    start = time.perf_counter()
    net = _Net(np.random.default_rng(seed), (3, 224, 224))
    x = net.conv(net.input, "conv1", 64, 7, stride=2, std=float(np.sqrt(2.0 / (64 * 49))))
    x = net.relu(net.bn(x, "bn1"), "relu")
    x = net.maxpool(x, "maxpool", 3, 2, (1, 1, 1, 1))
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            stride = 2 if (i > 1 and j == 0) else 1
            x = _basic_block(net, x, f"layer{i}.{j}", planes, stride)
    x = net.op("GlobalAveragePool", "avgpool", [x.value], x.data.mean(axis=(2, 3), keepdims=True))
    x = net.op("Flatten", "flatten", [x.value], x.data.reshape(x.data.shape[0], -1), axis=1)
    bound = 1.0 / np.sqrt(512)
    w = net.rng.uniform(-bound, bound, (num_classes, 512)).astype(np.float32)
    b = net.rng.uniform(-bound, bound, num_classes).astype(np.float32)
    inputs = [x.value, net.param("fc.weight", w), net.param("fc.bias", b)]
    logits = net.op("Gemm", "fc", inputs, x.data @ w.T + b, out="logits", transB=1)
    model = net.model([logits], name="resnet18", doc="ResNet-18 (torchvision layout)", seed=seed)
    logger.info("built resnet18 (seed %d) in %.2f s", seed, time.perf_counter() - start)
    return model


#: yolov3-tiny.cfg's convolutional layers before the first head: (darknet index, filters).
_YOLO_BACKBONE = ((0, 16), (2, 32), (4, 64), (6, 128), (8, 256), (10, 512))


def yolov3_tiny(*, seed: int = 0, num_classes: int = 80) -> ir.Model:
    """Tiny-YOLOv3 exactly as Darknet's ``cfg/yolov3-tiny.cfg``, seeded and BN-calibrated.

    Layers (darknet index): 0-11 alternate 3x3 conv (16, 32, 64, 128, 256, 512; BN +
    LeakyReLU 0.1) and 2x2 maxpool (stride 2; layer 11 has stride 1 and pads one row/column at
    the bottom/right, as darknet does, so 13x13 is kept); 12 conv 1024; 13 conv 1x1 256;
    14 conv 512; 15 conv 1x1 3*(5+num_classes) with bias, linear -> ``out13``; 17 route 13;
    18 conv 1x1 128; 19 upsample x2 (Resize nearest, asymmetric/floor: pixel replication);
    20 route 19, 8 (Concat: 128 + 256 channels); 21 conv 256; 22 conv 1x1 with bias, linear ->
    ``out26``. The yolo layers (16, 23) decode boxes and are not in the graph. Conv weights:
    Kaiming normal (fan_in, LeakyReLU-0.1 gain); head biases U(+-1/sqrt(fan_in)). With 80
    classes: 8,852,366 parameters (+ 6,368 BN running statistics = 8,858,734 values).
    Input ``input`` [batch, 3, 416, 416].
    """
    _check_args(seed, num_classes)
    start = time.perf_counter()
    net = _Net(np.random.default_rng(seed), (3, 416, 416))
    gain = np.sqrt(2.0 / (1.0 + 0.1**2))

    def cbl(x: _T, i: int, cout: int, k: int) -> _T:
        std = float(gain / np.sqrt(x.data.shape[1] * k * k))
        y = net.conv(x, f"layers.{i}.conv", cout, k, std=std)
        return net.leaky(net.bn(y, f"layers.{i}.bn"), f"layers.{i}.act")

    def head(x: _T, i: int, out: str) -> _T:
        std = float(gain / np.sqrt(x.data.shape[1]))
        return net.conv(x, f"layers.{i}.conv", 3 * (5 + num_classes), 1, std=std, bias=True,
                        out=out)  # fmt: skip

    x = net.input
    for i, filters in _YOLO_BACKBONE:
        x = cbl(x, i, filters, 3)
        if i == 8:
            route8 = x
        stride, pads = (1, (0, 0, 1, 1)) if i == 10 else (2, (0, 0, 0, 0))
        x = net.maxpool(x, f"layers.{i + 1}.maxpool", 2, stride, pads)
    x = cbl(x, 12, 1024, 3)
    route13 = cbl(x, 13, 256, 1)
    out13 = head(cbl(route13, 14, 512, 3), 15, "out13")
    x = cbl(route13, 18, 128, 1)
    scales = net.param("layers.19.scales", np.array([1, 1, 2, 2], np.float32))
    up = x.data.repeat(2, axis=2).repeat(2, axis=3)
    x = net.op(
        "Resize", "layers.19.upsample", [x.value, None, scales], up, mode="nearest",
        coordinate_transformation_mode="asymmetric", nearest_mode="floor",
    )  # fmt: skip
    cat = np.concatenate([x.data, route8.data], axis=1)
    x = net.op("Concat", "layers.20.route", [x.value, route8.value], cat, axis=1)
    out26 = head(cbl(x, 21, 256, 3), 22, "out26")
    doc = "Tiny-YOLOv3 (darknet cfg/yolov3-tiny.cfg), raw head outputs"
    model = net.model([out13, out26], name="yolov3-tiny", doc=doc, seed=seed)
    logger.info("built yolov3-tiny (seed %d) in %.2f s", seed, time.perf_counter() - start)
    return model


@dataclass(frozen=True)
class ZooSpec:
    """What a zoo model is: its input, outputs and parameter count (with default classes)."""

    name: str
    task: str
    input_shape: tuple[int | str, ...]
    outputs: dict[str, tuple[int | str, ...]]
    parameters: int
    description: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "input": {"input": list(self.input_shape)},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "parameters": self.parameters,
            "description": self.description,
        }


ZOO_SPECS: dict[str, ZooSpec] = {
    "resnet18": ZooSpec(
        "resnet18", "classification", ("batch", 3, 224, 224), {"logits": ("batch", 1000)},
        11_689_512, "ResNet-18, torchvision layout, ImageNet-1k head",
    ),
    "yolov3-tiny": ZooSpec(
        "yolov3-tiny", "detection", ("batch", 3, 416, 416),
        {"out13": ("batch", 255, 13, 13), "out26": ("batch", 255, 26, 26)},
        8_852_366, "Tiny-YOLOv3, darknet yolov3-tiny.cfg, COCO-80 heads (raw)",
    ),
}  # fmt: skip
ZOO_MODELS: tuple[str, ...] = tuple(ZOO_SPECS)
_BUILDERS: dict[str, Callable[..., ir.Model]] = {"resnet18": resnet18, "yolov3-tiny": yolov3_tiny}


def canonical_name(name: str) -> str:
    """``"yolov3_tiny"`` / ``"YOLOv3-Tiny"`` -> ``"yolov3-tiny"``; unknown names: InputError."""
    key = name.strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise InputError(
            f"unknown zoo model {name!r}", hint=f"known models: {', '.join(ZOO_MODELS)}"
        )
    return key


def build(name: str, **kwargs: Any) -> ir.Model:
    """Build zoo model ``name`` ("resnet18", "yolov3-tiny"); ``kwargs`` go to its builder."""
    return _BUILDERS[canonical_name(name)](**kwargs)


@dataclass(frozen=True)
class ParamCount:
    """Initializer sizes: ``parameters`` are ``*.weight`` / ``*.bias`` (torchvision's count),
    ``bn_statistics`` the ``running_mean`` / ``running_var`` buffers, ``other`` the rest."""

    parameters: int
    bn_statistics: int
    other: int

    @property
    def total(self) -> int:
        return self.parameters + self.bn_statistics + self.other

    def to_dict(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "bn_statistics": self.bn_statistics,
            "other": self.other,
            "total": self.total,
        }


def count_parameters(model: ir.Model) -> ParamCount:
    """Count initializer elements by name, the way torchvision's ``parameters()`` would."""
    params = stats = other = 0
    for name, value in model.graph.initializers.items():
        size = value.const_value.size if value.const_value is not None else 0
        if name.endswith((".weight", ".bias")):
            params += size
        elif name.endswith((".running_mean", ".running_var")):
            stats += size
        else:
            other += size
    return ParamCount(params, stats, other)


@dataclass(frozen=True)
class ZooBuild:
    """A zoo model built and saved: what, where, how big, and how long building took."""

    name: str
    seed: int
    params: ParamCount
    file: FileSize
    build_s: float

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "seed": self.seed,
            **self.params.to_dict(),
            **self.file.to_dict(),
            "build_s": round(self.build_s, 3),
        }


def build_and_save(
    name: str, path: str | os.PathLike[str], *, seed: int = 0, force: bool = False
) -> ZooBuild:
    """Build zoo model ``name`` and save it atomically with :func:`onnxfit.io.save`.

    An existing ``path`` is refused (``ModelLoadError``, nothing written) unless ``force``.
    """
    key = canonical_name(name)
    start = time.perf_counter()
    model = build(key, seed=seed)
    build_s = time.perf_counter() - start
    size = save(model, path, force=force)
    return ZooBuild(key, seed, count_parameters(model), size, build_s)
