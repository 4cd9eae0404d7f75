"""cleanup: constant folding, Identity / dead-code removal, initializer dedup (DESIGN habit 10)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto
from onnx import helper as oh

from onnxfit.passes.cleanup import CleanupPass
from passes_util import check, copy, max_abs, model, ops, run, tensor, vinfo


def _graph():  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 4)).astype(np.float32)
    nodes = [
        oh.make_node("Add", ["a", "b"], ["ab"]),  # constant subgraph -> folded
        oh.make_node("Mul", ["x", "ab"], ["m"]),
        oh.make_node("Identity", ["m"], ["mi"]),
        oh.make_node("MatMul", ["mi", "w1"], ["p"]),
        oh.make_node("MatMul", ["mi", "w2"], ["q"]),  # w2 == w1 -> deduplicated
        oh.make_node("Add", ["p", "q"], ["y"]),
        oh.make_node("Relu", ["x"], ["unused"]),  # dead
    ]
    inits = [
        tensor("a", np.full(4, 0.5, np.float32)),
        tensor("b", np.full(4, 1.5, np.float32)),
        tensor("w1", w),
        tensor("w2", w.copy()),
    ]
    return model(nodes, [vinfo("x", [2, 4])], [vinfo("y", [2, 4])], inits)


def test_cleanup_ops_parity_checker() -> None:
    m = _graph()
    ref = copy(m)
    p = CleanupPass()
    assert p(m).modified
    assert ops(m) == ["Mul", "MatMul", "MatMul", "Add"]
    assert len(m.graph.initializers) == 2  # folded ab + one of w1/w2
    s = p.stats
    assert s["nodes_before"] == 7 and s["nodes_after"] == 4
    assert s["identities_removed"] == 1
    assert s["folded"]["Add"] == 1  # type: ignore[index]
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    assert max_abs(run(ref, {"x": x}), run(m, {"x": x})) < 1e-6
    check(m)
    assert all(n.name for n in m.graph)  # NameFixPass named everything


def test_cleanup_keeps_quantize_dequantize() -> None:
    q = np.array([[1, -2], [3, 4]], np.int8)
    m = model(
        [
            oh.make_node("DequantizeLinear", ["wq", "s", "z"], ["w"]),
            oh.make_node("MatMul", ["x", "w"], ["y"]),
        ],
        [vinfo("x", [1, 2])],
        [vinfo("y", [1, 2])],
        [
            tensor("wq", q),
            tensor("s", np.array(0.1, np.float32)),
            tensor("z", np.array(0, np.int8)),
        ],
    )
    CleanupPass()(m)
    assert ops(m) == ["DequantizeLinear", "MatMul"]
    assert m.graph.initializers["wq"].dtype is not None
    assert m.graph.initializers["wq"].const_value.dtype.name == "INT8"  # type: ignore[union-attr]
    check(m)


def test_cleanup_initializer_inputs_become_constants() -> None:
    c = tensor("c", np.ones(3, np.float32))
    nodes = [oh.make_node("Neg", ["c"], ["nc"]), oh.make_node("Add", ["x", "nc"], ["y"])]
    m = model(nodes, [vinfo("x", [3]), vinfo("c", [3])], [vinfo("y", [3])], [c])
    assert len(m.graph.inputs) == 2
    CleanupPass()(m)
    assert [v.name for v in m.graph.inputs] == ["x"]
    assert ops(m) == ["Add"]  # Neg(c) folded once c is a constant
    x = np.arange(3, dtype=np.float32)
    np.testing.assert_allclose(run(m, {"x": x})[0], x - 1)
    _ = TensorProto  # keep import for readers building variants
