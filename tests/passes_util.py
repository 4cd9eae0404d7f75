"""Helpers for the pass tests (tests/test_passes_*.py): tiny graphs, ORT runs, real-data caches."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from onnxfit import io

FLOAT = TensorProto.FLOAT


def tensor(name: str, array: np.ndarray) -> onnx.TensorProto:
    return nh.from_array(np.asarray(array), name)


def vinfo(name: str, shape: Sequence[int | str | None] | None, dtype: int = FLOAT):
    return oh.make_tensor_value_info(name, dtype, shape)


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    *,
    opset: int = 17,
    extra_opsets: Mapping[str, int] | None = None,
) -> ir.Model:
    """An IR model from onnx.helper pieces (ir_version 8), every node named."""
    for i, n in enumerate(nodes):
        if not n.name:
            n.name = f"{n.op_type.lower()}_{i}"
    graph = oh.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    opsets = [oh.make_opsetid("", opset)]
    opsets += [oh.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    proto = oh.make_model(graph, opset_imports=opsets, ir_version=8)
    return io.from_proto(proto)


def copy(m: ir.Model) -> ir.Model:
    return io.from_proto(io.to_proto(m))


def ops(m: ir.Model) -> list[str]:
    return [n.op_type for n in m.graph]


def check(m: ir.Model, *, full: bool = True) -> None:
    onnx.checker.check_model(io.to_proto(m), full_check=full)


def run(
    m: ir.Model | onnx.ModelProto,
    feeds: Mapping[str, np.ndarray],
    *,
    level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(io.to_bytes(m), options, providers=["CPUExecutionProvider"])
    return session.run(None, dict(feeds))


def max_abs(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    return max(
        float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max())
        for x, y in zip(a, b, strict=True)
    )


@functools.lru_cache(maxsize=2)
def imagenet_sample(root: str) -> tuple[np.ndarray, np.ndarray]:
    """All imagenet-sample images, preprocessed ("imagenet" preset), and their labels."""
    from onnxfit.data.images import preprocess
    from onnxfit.data.tasks import read_labels_tsv

    folder = Path(root) / "imagenet-sample"
    labels = read_labels_tsv(folder / "labels.tsv")
    names = sorted(labels)
    x = np.stack([preprocess(folder / "images" / n, "imagenet") for n in names])
    y = np.array([labels[n] for n in names])
    return x, y


def run_batches(m: ir.Model | onnx.ModelProto, x: np.ndarray, batch: int = 1) -> np.ndarray:
    """Logits of a fixed-batch-1 classifier over ``x``, with ORT's default optimizations."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(io.to_bytes(m), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate(
        [session.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    )


class NoiseReader:
    """An onnxruntime ``CalibrationDataReader``: 8 seeded standard-normal batches of
    ``x [1, 3, 8, 8]``."""

    def __init__(self) -> None:
        rng = np.random.default_rng(1)
        self.batches = iter(
            [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(8)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)
