"""Tiny image models and image files for the pipeline, run and eval tests.

* :func:`colour_classifier` — ``[N, 3, S, S]`` -> global average pool -> identity "logits"
  ``[N, 3]``: the class is the image's dominant RGB channel (after ImageNet normalization a
  pure red image gives class 0, green 1, blue 2).
* :func:`constant_detector` — a YOLOX-shaped model ``[N, 3, 64, 64]`` -> ``[N, 84, 5 + C]``
  whose output ignores the image: one box at anchor (3, 3) of stride 8 — centre (28, 28),
  32 x 32 in network pixels, objectness 0.9, class ``cls`` 0.8 (score 0.72).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from onnxfit import io

COLOURS = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
CLASS_OF = {"red": 0, "green": 1, "blue": 2}
NAMES = ["red", "green", "blue"]


def _save(graph: onnx.GraphProto, path: Path, opset: int = 17) -> Path:
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    onnx.checker.check_model(proto)
    io.save(io.from_proto(proto), path)
    return path


def colour_classifier(path: Path, *, batch: int | str = "batch", size: int = 32) -> Path:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Mul", ["flat", "gain"], ["logits"]),
    ]
    gain = numpy_helper.from_array(np.array([4.0], np.float32), "gain")
    return _save(helper.make_graph(nodes, "colour", [x], [y], [gain]), path)


def constant_detector(path: Path, *, cls: int = 3, classes: int = 80) -> Path:
    anchors = 8 * 8 + 4 * 4 + 2 * 2
    const = np.zeros((1, anchors, 5 + classes), np.float32)
    const[0, :, 2:4] = np.log(0.5)  # every other anchor: tiny boxes, score 0
    row = const[0, 3 * 8 + 3]
    row[0:2] = 0.5
    row[2:4] = np.log(4.0)
    row[4] = 0.9
    row[5 + cls] = 0.8
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 64, 64])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", anchors, 5 + classes])
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], axes=[1, 2, 3], keepdims=1),
        helper.make_node("Reshape", ["m", "shape"], ["m3"]),
        helper.make_node("Mul", ["m3", "zero"], ["z"]),
        helper.make_node("Add", ["z", "const"], ["output"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([-1, 1, 1], np.int64), "shape"),
        numpy_helper.from_array(np.array([0.0], np.float32), "zero"),
        numpy_helper.from_array(const, "const"),
    ]
    return _save(helper.make_graph(nodes, "const-det", [x], [y], inits), path, opset=13)


def colour_image(path: Path, colour: str, size: tuple[int, int] = (48, 40)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, COLOURS[colour]).save(path)
    return path


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut in half (truncated)."""
    tmp = path.with_suffix(".full.jpg")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp, quality=95)
    data = tmp.read_bytes()
    tmp.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def huge_png_header(path: Path, w: int = 10000, h: int = 6000) -> Path:
    """A PNG whose header claims w x h pixels (the pixel limit refuses it before decoding)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    body = zlib.compress(b"\x00" * 16)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")
    )
    return path
