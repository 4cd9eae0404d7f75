"""Sparse storage: lossless round trip (to the bit), ORT loads it and folds the decode, sizes."""

from __future__ import annotations

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper as oh

from onnxfit import io
from onnxfit.pruning.sparse import (
    SparseStoragePass,
    decode,
    densify,
    encode,
    is_encoded,
    storage_sizes,
)
from passes_util import check, copy, model, ops, run, tensor, vinfo


def _sparse(rng: np.random.Generator, shape, density: float, dtype=np.float32) -> np.ndarray:
    w = rng.standard_normal(shape).astype(dtype)
    w[rng.random(shape) >= density] = 0
    return w


def _net(w1: np.ndarray, w2: np.ndarray, *, opset: int = 17):
    nodes = [
        oh.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "w2"], ["y"], name="conv2"),
    ]
    dtype = 1 if w1.dtype == np.float32 else 10  # FLOAT or FLOAT16
    return model(
        nodes,
        [vinfo("x", [1, w1.shape[1], 6, 6], dtype)],
        [vinfo("y", [1, w2.shape[0], 6, 6], dtype)],
        [tensor("w1", w1), tensor("w2", w2)],
        opset=opset,
    )


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view(f"u{a.dtype.itemsize}")


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 300),
    density=st.floats(0, 1),
    dtype=st.sampled_from([np.float32, np.float16, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_encode_decode_is_bit_exact(n, density, dtype, seed):
    rng = np.random.default_rng(seed)
    a = _sparse(rng, (n,), density, dtype)
    if n > 3:
        a[:3] = np.array([-0.0, np.nan, np.inf], dtype)  # -0.0 and NaN must survive
    mask, values = encode(a)
    assert mask.dtype == np.uint8 and mask.shape == ((n + 7) // 8, 1)
    assert values.size == int(np.count_nonzero(_bits(a))) + 1
    np.testing.assert_array_equal(_bits(decode(mask, values, a.shape)), _bits(a))


def test_pass_output_loads_in_ort_and_matches_the_dense_model_exactly(rng, tmp_path):
    w1, w2 = _sparse(rng, (16, 8, 3, 3), 0.2), _sparse(rng, (32, 16, 1, 1), 0.25)
    w1[0, 0, 0, :2] = [-0.0, 0.0]
    dense = _net(w1, w2)
    m = _net(w1, w2)
    p = SparseStoragePass(min_elements=64)
    assert p(m).modified
    assert p.stats["tensors_encoded"] == 2 and is_encoded(m)
    assert "BitShift" in ops(m) and "w1" not in m.graph.initializers
    check(m)
    x = {"x": rng.standard_normal((1, 8, 6, 6)).astype(np.float32)}
    for level in (
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    ):
        np.testing.assert_array_equal(run(m, x, level=level)[0], run(dense, x, level=level)[0])
    # ORT folds the decode at session creation: the optimized graph holds only the convs
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(io.to_bytes(m), opts, providers=["CPUExecutionProvider"])
    folded = onnx.load(str(tmp_path / "opt.onnx"))
    assert sorted({n.op_type for n in folded.graph.node}) == ["Conv", "Relu"]
    # and saving + loading + densify gives back the same bits under the same names
    io.save(m, tmp_path / "s.onnx")
    back = io.load(tmp_path / "s.onnx")
    assert densify(back) == 2 and not is_encoded(back)
    for name, w in (("w1", w1), ("w2", w2)):
        np.testing.assert_array_equal(
            _bits(back.graph.initializers[name].const_value.numpy()), _bits(w)
        )
    assert ops(back) == ops(dense)


def test_fp16_weights_and_a_size_not_multiple_of_8(rng):
    w1 = _sparse(rng, (15, 7, 3, 3), 0.3, np.float16)  # 945 elements: 945 % 8 == 1
    w2 = _sparse(rng, (7, 15, 1, 1), 0.3, np.float16)  # too small to gain: stays dense
    dense, m = _net(w1, w2), _net(w1, w2)
    p = SparseStoragePass(min_elements=1, min_sparsity=0.5)
    p(m)
    assert "Slice" in ops(m) and p.stats["tensors_encoded"] == 1
    x = {"x": rng.standard_normal((1, 7, 6, 6)).astype(np.float16)}
    np.testing.assert_array_equal(run(m, x)[0], run(dense, x)[0])


def test_gate_and_size_rules(rng):
    w1, w2 = _sparse(rng, (16, 8, 3, 3), 0.5), _sparse(rng, (8, 16, 1, 1), 0.5)
    m = _net(w1, w2)
    p = SparseStoragePass(min_elements=64)  # overall sparsity 0.5 < 0.7: nothing done
    assert not p(m).modified and "skipped" in p.stats and not is_encoded(m)
    m = _net(_sparse(rng, (16, 8, 3, 3), 0.1), _sparse(rng, (8, 16, 1, 1), 0.1))
    p = SparseStoragePass(min_elements=200)  # w2 (128 elements) is below min_elements
    p(m)
    assert p.stats["tensors_encoded"] == 1
    assert m.graph.initializers["w2"].const_value is not None
    m = _net(w1, w2, opset=10)
    p = SparseStoragePass(min_sparsity=0.0)
    assert not p(m).modified and "opset" in str(p.stats["skipped"])


def test_storage_sizes_coo_loses_for_fp16():
    a = np.zeros(10_000, np.float16)
    a[::10] = 1  # 10 % dense
    s = storage_sizes(a)
    assert s.dense == 20_000 and s.coo == 1_000 * 10 and s.bitmask == 1_250 + 1_001 * 2
    b = np.zeros(10_000, np.float16)
    b[:3_000] = 1  # 30 % dense: COO (10 B/nnz) beats dense no more, the bitmask does
    s = storage_sizes(b)
    assert s.coo > s.dense > s.bitmask


@pytest.mark.slow
def test_zoo_yolov3_tiny_fp16_pruned_70_is_under_30_percent_of_fp32(zoo_yolov3_tiny, tmp_path):
    from onnxfit.passes.fp16 import Fp16Pass
    from onnxfit.pruning.unstructured import PrunePass

    m = io.load(zoo_yolov3_tiny)
    PrunePass(sparsity=0.7)(m)
    Fp16Pass()(m)
    io.save(m, tmp_path / "dense16.onnx")
    p = SparseStoragePass()
    p(m)
    size = io.save(m, tmp_path / "sparse16.onnx").bytes
    fp32 = os.path.getsize(zoo_yolov3_tiny)
    assert p.stats["tensors_encoded"] == 10
    assert size <= 0.30 * fp32, size / fp32
    x = {"input": np.random.default_rng(0).standard_normal((1, 3, 416, 416)).astype(np.float32)}
    a = run(io.load(tmp_path / "dense16.onnx"), x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    b = run(io.load(tmp_path / "sparse16.onnx"), x, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


def test_int8_qdq_weights_are_encoded_and_ort_still_fuses(rng, tmp_path):
    from onnxfit.data.calibration import synthetic_inputs
    from onnxfit.passes.int8 import Int8StaticPass

    w1, w2 = _sparse(rng, (32, 16, 3, 3), 0.25), _sparse(rng, (32, 32, 1, 1), 0.25)
    m = _net(w1, w2)
    Int8StaticPass(calibration=synthetic_inputs(m, 4, seed=0))(m)
    dense = copy(m)
    p = SparseStoragePass(min_elements=64)
    p(m)
    assert p.stats["tensors_encoded"] == 2
    x = {"x": rng.standard_normal((1, 16, 6, 6)).astype(np.float32)}
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    np.testing.assert_array_equal(run(m, x, level=level)[0], run(dense, x, level=level)[0])
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(io.to_bytes(m), opts, providers=["CPUExecutionProvider"])
    assert "QLinearConv" in {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
