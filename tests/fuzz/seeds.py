"""Seed models and images for the fuzzer, built in code (valid: ORT runs each seed model).

* ``conv`` — Conv + BatchNormalization + Relu + MaxPool + Conv + GlobalAveragePool + Flatten +
  Gemm, with a Reshape and a Concat on the way (static shapes, opset 17);
* ``function`` — the same head behind a model-local function ``local::Act`` (Relu then
  Clip), called twice;
* ``qdq`` — a QuantizeLinear / DequantizeLinear INT8 conv net (per-tensor scales);
* ``real:*`` — the real models in ``../shared/data/models`` when they are there.

Seed images are small JPEG, PNG, BMP, GIF and WebP files of one colour plus noise.
"""

from __future__ import annotations

import io as pyio
import os
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from PIL import Image

F = TensorProto.FLOAT
_REPO = Path(__file__).resolve().parents[2]
SHARED_MODELS = (
    Path(os.environ.get("ONNXFIT_SHARED_DATA", _REPO.parent / "shared" / "data")) / "models"
)
REAL_MODELS = ("shufflenet-v2-12-qdq.onnx", "yolox_nano.onnx")


def _finish(
    graph: onnx.GraphProto,
    functions: list[onnx.FunctionProto] | None = None,
    extra_opsets: dict[str, int] | None = None,
) -> onnx.ModelProto:
    opsets = [oh.make_opsetid("", 17)]
    opsets += [oh.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = oh.make_model(graph, opset_imports=opsets, functions=functions or [])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _w(rng: np.random.Generator, name: str, *shape: int) -> TensorProto:
    return nh.from_array((rng.standard_normal(shape) * 0.3).astype(np.float32), name)


def conv_net() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    x = oh.make_tensor_value_info("x", F, [1, 3, 16, 16])
    y = oh.make_tensor_value_info("y", F, [1, 5])
    inits = [
        _w(rng, "w1", 8, 3, 3, 3),
        _w(rng, "b1", 8),
        _w(rng, "bn_s", 8),
        _w(rng, "bn_b", 8),
        _w(rng, "bn_m", 8),
        nh.from_array(np.abs(rng.standard_normal(8)).astype(np.float32) + 0.5, "bn_v"),
        _w(rng, "w2", 8, 8, 3, 3),
        nh.from_array(np.array([1, 8, 64], np.int64), "shape3"),
        nh.from_array(np.array([1, 8, 8, 8], np.int64), "shape4"),
        _w(rng, "fc", 5, 16),
        _w(rng, "fcb", 5),
    ]
    nodes = [
        oh.make_node(
            "Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        oh.make_node(
            "BatchNormalization",
            ["c1", "bn_s", "bn_b", "bn_m", "bn_v"],
            ["bn"],
            name="bn1",
            epsilon=1e-5,
        ),
        oh.make_node("Relu", ["bn"], ["r1"], name="relu1"),
        oh.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        oh.make_node("Reshape", ["p1", "shape3"], ["flat3"], name="reshape3"),
        oh.make_node("Reshape", ["flat3", "shape4"], ["p1b"], name="reshape4"),
        oh.make_node(
            "Conv",
            ["p1b", "w2"],
            ["c2"],
            name="conv2",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            group=1,
        ),
        oh.make_node("Sigmoid", ["c2"], ["s2"], name="sig2"),
        oh.make_node("GlobalAveragePool", ["s2"], ["g"], name="gap"),
        oh.make_node("GlobalMaxPool", ["r1"], ["gm"], name="gmp"),
        oh.make_node("Concat", ["g", "gm"], ["cat"], name="concat", axis=1),
        oh.make_node("Flatten", ["cat"], ["f"], name="flatten", axis=1),
        oh.make_node("Gemm", ["f", "fc", "fcb"], ["y"], name="fc", transB=1),
    ]
    return _finish(oh.make_graph(nodes, "conv", [x], [y], inits))


def function_net() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    act = oh.make_function(
        "local",
        "Act",
        ["a"],
        ["b"],
        [
            oh.make_node("Relu", ["a"], ["t"]),
            oh.make_node("Clip", ["t", "lo", "hi"], ["b"]),
            oh.make_node("Constant", [], ["lo"], value_float=0.0),
            oh.make_node("Constant", [], ["hi"], value_float=6.0),
        ],
        [oh.make_opsetid("", 17)],
    )
    # the Constants after their use: the seed itself is out of order inside the function
    act.node.sort(key=lambda n: n.op_type != "Constant")
    x = oh.make_tensor_value_info("x", F, [1, 3, 8, 8])
    y = oh.make_tensor_value_info("y", F, [1, 4])
    inits = [_w(rng, "w", 4, 3, 3, 3), _w(rng, "fc", 4, 4)]
    nodes = [
        oh.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3]),
        oh.make_node("Act", ["c"], ["a1"], name="act1", domain="local"),
        oh.make_node("GlobalAveragePool", ["a1"], ["g"], name="gap"),
        oh.make_node("Flatten", ["g"], ["f"], name="flatten"),
        oh.make_node("MatMul", ["f", "fc"], ["m"], name="matmul"),
        oh.make_node("Act", ["m"], ["y"], name="act2", domain="local"),
    ]
    graph = oh.make_graph(nodes, "function", [x], [y], inits)
    return _finish(graph, [act], {"local": 1})


def qdq_net() -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    x = oh.make_tensor_value_info("x", F, [1, 3, 12, 12])
    y = oh.make_tensor_value_info("y", F, [1, 6, 10, 10])
    w = rng.integers(-100, 100, (6, 3, 3, 3), dtype=np.int8)
    inits = [
        nh.from_array(np.array(0.02, np.float32), "xs"),
        nh.from_array(np.array(0, np.int8), "xz"),
        nh.from_array(w, "wq"),
        nh.from_array(np.array(0.01, np.float32), "ws"),
        nh.from_array(np.array(0, np.int8), "wz"),
        nh.from_array(rng.integers(-50, 50, (6,), dtype=np.int32), "bq"),
        nh.from_array(np.array(0.0002, np.float32), "bs"),
        nh.from_array(np.array(0, np.int32), "bz"),
        nh.from_array(np.array(0.05, np.float32), "ys"),
        nh.from_array(np.array(0, np.int8), "yz"),
    ]
    nodes = [
        oh.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"], name="q_in"),
        oh.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_in"),
        oh.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], name="dq_w"),
        oh.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bd"], name="dq_b"),
        oh.make_node("Conv", ["xd", "wd", "bd"], ["c"], name="conv", kernel_shape=[3, 3]),
        oh.make_node("Relu", ["c"], ["r"], name="relu"),
        oh.make_node("QuantizeLinear", ["r", "ys", "yz"], ["rq"], name="q_out"),
        oh.make_node("DequantizeLinear", ["rq", "ys", "yz"], ["y"], name="dq_out"),
    ]
    return _finish(oh.make_graph(nodes, "qdq", [x], [y], inits))


@cache
def seed_models(real: bool = True) -> dict[str, bytes]:
    """Seed name -> serialized model (built once per process)."""
    seeds = {
        "conv": conv_net().SerializeToString(),
        "function": function_net().SerializeToString(),
        "qdq": qdq_net().SerializeToString(),
    }
    if real:
        for name in REAL_MODELS:
            path = SHARED_MODELS / name
            if path.is_file():
                seeds[f"real:{name.removesuffix('.onnx')}"] = path.read_bytes()
    return seeds


IMAGE_FORMATS = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "gif": "GIF", "webp": "WEBP"}


@cache
def seed_images() -> dict[str, bytes]:
    """Extension -> a valid 40 x 32 image file in that format."""
    rng = np.random.default_rng(4)
    pixels = np.clip(rng.normal(128, 60, (32, 40, 3)), 0, 255).astype(np.uint8)
    pixels[..., 0] = 220
    out: dict[str, bytes] = {}
    for ext, fmt in IMAGE_FORMATS.items():
        buf = pyio.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        out[ext] = buf.getvalue()
    return out
