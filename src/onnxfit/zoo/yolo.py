"""Tiny-YOLOv3 as Darknet's ``cfg/yolov3-tiny.cfg`` (Redmon & Farhadi 2018, arXiv:1804.02767),
built as ONNX with raw head outputs (no box decoding in the graph)."""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir

from onnxfit.zoo._builder import Net, Traced, check_args

logger = logging.getLogger(__name__)

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
    check_args(seed, num_classes)
    start = time.perf_counter()
    net = Net(np.random.default_rng(seed), (3, 416, 416))
    gain = np.sqrt(2.0 / (1.0 + 0.1**2))

    def cbl(x: Traced, i: int, cout: int, k: int) -> Traced:
        std = float(gain / np.sqrt(x.data.shape[1] * k * k))
        y = net.conv(x, f"layers.{i}.conv", cout, k, std=std)
        return net.leaky(net.bn(y, f"layers.{i}.bn"), f"layers.{i}.act")

    def head(x: Traced, i: int, out: str) -> Traced:
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
