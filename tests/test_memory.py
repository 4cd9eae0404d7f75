"""Tests of the activation-memory plan: lifetimes, offsets, plan, runtime estimate, rendering."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxfit import io
from onnxfit.analysis.lifetimes import ALIAS_OPS, execution_order, is_constant
from onnxfit.analysis.memory import (
    STRATEGIES,
    MemoryPlan,
    TensorLife,
    estimate_runtime_memory,
    greedy_by_size,
    lower_bound,
    plan_memory,
    plan_offsets,
    tensor_lifetimes,
)
from onnxfit.analysis.offsets import arena_size, live_profile
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.errors import InputError
from onnxfit.report.memory import memory_rows, memory_summary_rows, memory_table, plot_memory_plan

MIB = 1024 * 1024
FLOAT = TensorProto.FLOAT


# ----------------------------------------------------------------------------- helpers


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    *,
    initializers: Sequence[onnx.TensorProto] = (),
    value_info: Sequence[onnx.ValueInfoProto] = (),
    infer: bool = True,
) -> ir.Model:
    graph = helper.make_graph(
        list(nodes), "g", list(inputs), list(outputs), list(initializers), value_info=value_info
    )
    model = io.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return infer_shapes(model) if infer else model


def vi(name: str, shape: Sequence[int | str] | None, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def check_offsets(lives: Sequence[TensorLife], offsets: Sequence[int], alignment: int) -> None:
    """The invariants every placement must keep."""
    assert len(offsets) == len(lives)
    arena = arena_size(lives, offsets)
    assert arena >= lower_bound(lives)
    for t, o in zip(lives, offsets, strict=True):
        assert o >= 0 and o % alignment == 0
        assert o + t.size_bytes <= arena
    for i, (a, oa) in enumerate(zip(lives, offsets, strict=True)):
        for b, ob in zip(lives[i + 1 :], offsets[i + 1 :], strict=True):
            if a.overlaps(b) and a.size_bytes and b.size_bytes:
                assert oa + a.size_bytes <= ob or ob + b.size_bytes <= oa, (a, oa, b, ob)


def check_plan(plan: MemoryPlan) -> None:
    lives = [TensorLife(b.name, b.size, b.first, b.last, b.values) for b in plan.buffers]
    check_offsets(lives, [b.offset for b in plan.buffers], plan.alignment)
    assert plan.arena_bytes == arena_size(lives, [b.offset for b in plan.buffers])
    assert plan.lower_bound_bytes == lower_bound(lives) == max(plan.live_bytes, default=0)
    assert plan.lower_bound_bytes <= plan.arena_bytes
    assert sum(b.size for b in plan.buffers) <= plan.naive_bytes
    json.dumps(plan.to_dict())


# ----------------------------------------------------------------------------- offsets


def test_greedy_by_size_hand_computed() -> None:
    lives = [TensorLife("a", 100, 0, 1), TensorLife("b", 50, 1, 2), TensorLife("c", 100, 2, 3)]
    # a, c (100 each, disjoint) share offset 0; b overlaps both and goes on top
    assert greedy_by_size(lives, alignment=1) == [0, 100, 0]
    assert lower_bound(lives) == 150 and live_profile(lives) == [100, 150, 150, 100]
    assert greedy_by_size(lives, alignment=64) == [0, 128, 0]
    # late (placed last) reuses mid's bytes: mid is dead by step 3
    lives2 = [
        TensorLife("big", 100, 0, 5),
        TensorLife("mid", 60, 0, 1),
        TensorLife("top", 80, 0, 5),
        TensorLife("late", 50, 3, 4),  # overlaps big@0 and top@100, and not mid (dead at 1)
    ]
    assert greedy_by_size(lives2, alignment=1) == [0, 180, 100, 180]


def test_greedy_by_size_uses_lowest_gap() -> None:
    lives = [
        TensorLife("p", 100, 0, 9),
        TensorLife("q", 100, 0, 9),
        TensorLife("gap", 90, 0, 1),  # placed at 200, dies at 1: leaves [200, 290) free
        TensorLife("t", 40, 5, 6),
    ]
    assert greedy_by_size(lives, alignment=1) == [0, 100, 200, 200]


def test_bad_lifetimes_and_alignment() -> None:
    with pytest.raises(InputError):
        greedy_by_size([TensorLife("x", 8, 3, 1)])
    with pytest.raises(InputError):
        greedy_by_size([TensorLife("x", 8, 0, 1)], alignment=0)
    with pytest.raises(InputError):
        plan_offsets([TensorLife("x", 8, 0, 1)], strategies=["nope"])
    assert greedy_by_size([]) == [] and lower_bound([]) == 0


lifetimes = st.lists(
    st.tuples(st.integers(0, 5000), st.integers(0, 30), st.integers(0, 12)),
    min_size=0,
    max_size=40,
).map(lambda xs: [TensorLife(f"t{i}", s, f, f + d) for i, (s, f, d) in enumerate(xs)])


@settings(max_examples=150, deadline=None)
@given(lives=lifetimes, alignment=st.sampled_from([1, 8, 64]))
def test_offsets_invariants(lives: list[TensorLife], alignment: int) -> None:
    greedy = greedy_by_size(lives, alignment=alignment)
    check_offsets(lives, greedy, alignment)
    for s in STRATEGIES:
        offsets, name = plan_offsets(lives, alignment=alignment, strategies=[s])
        assert name == s
        check_offsets(lives, offsets, alignment)
    best, _ = plan_offsets(lives, alignment=alignment)
    check_offsets(lives, best, alignment)
    assert arena_size(lives, best) <= arena_size(lives, greedy)
    assert plan_offsets(lives, alignment=alignment) == plan_offsets(lives, alignment=alignment)


@st.composite
def dag_lifetimes(draw: st.DrawFn) -> list[TensorLife]:
    """Lifetimes of a random DAG: value i is written at step i and read by later steps."""
    n = draw(st.integers(1, 30))
    last = list(range(n))
    for j in range(1, n):
        for i in draw(st.sets(st.integers(0, j - 1), min_size=1, max_size=3)):
            last[i] = max(last[i], j)
    sizes = draw(st.lists(st.sampled_from([64, 256, 1000, 4096, 12288]), min_size=n, max_size=n))
    return [TensorLife(f"v{i}", sizes[i], i, last[i]) for i in range(n)]


@settings(max_examples=100, deadline=None)
@given(lives=dag_lifetimes())
def test_offsets_invariants_dag(lives: list[TensorLife]) -> None:
    offsets, _ = plan_offsets(lives, alignment=64)
    check_offsets(lives, offsets, 64)


# ----------------------------------------------------------------------------- lifetimes


def relu_chain(n: int = 3, width: int = 256) -> ir.Model:
    names = ["x"] + [f"r{i}" for i in range(n)]
    nodes = [
        helper.make_node("Relu", [a], [b], name=f"n{i}")
        for i, (a, b) in enumerate(itertools.pairwise(names))
    ]
    return make_model(nodes, [vi("x", [1, width])], [vi(names[-1], [1, width])])


def test_lifetimes_chain_hand_computed() -> None:
    model = relu_chain(3)  # x -> r0 -> r1 -> r2 (output); 1 KiB each
    lives = tensor_lifetimes(model, inplace=False)
    assert [(t.name, t.size_bytes, t.first, t.last) for t in lives] == [
        ("r0", 1024, 0, 1),
        ("r1", 1024, 1, 2),
    ]
    (shared,) = tensor_lifetimes(model)  # r1 overwrites r0 in place
    assert (shared.values, shared.size_bytes, shared.first, shared.last) == (
        ("r0", "r1"),
        1024,
        0,
        2,
    )
    plan = plan_memory(model, inplace=False, alignment=1)
    assert (plan.arena_bytes, plan.lower_bound_bytes, plan.naive_bytes) == (2048, 2048, 2048)
    assert (plan.input_bytes, plan.output_bytes, plan.batch) == (1024, 1024, 1)
    assert [b.offset for b in plan.buffers] == [0, 1024]
    plan = plan_memory(model)
    assert (plan.arena_bytes, plan.lower_bound_bytes, plan.naive_bytes) == (1024, 1024, 2048)
    assert plan_memory(model, precision="fp16").arena_bytes == 512
    check_plan(plan)


def test_alias_extends_lifetime_and_inplace_needs_last_use() -> None:
    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [16, 16])
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="relu"),
        helper.make_node("Reshape", ["a", "shape"], ["v"], name="view"),  # alias of a
        helper.make_node("Sigmoid", ["a"], ["s"], name="sig"),  # a still read later (via v)
        helper.make_node("Add", ["v", "s"], ["y"], name="add"),
        helper.make_node("Reshape", ["x", "shape"], ["xv"], name="xview"),  # view of an input
        helper.make_node("Neg", ["xv"], ["z"], name="neg"),
    ]
    model = make_model(
        nodes, [vi("x", [1, 256])], [vi("y", [16, 16]), vi("z", [16, 16])], initializers=[shape]
    )
    lives = {t.name: t for t in tensor_lifetimes(model)}
    # v shares a's buffer until add (step 3); s cannot overwrite a (a's buffer lives on)
    assert lives["a"].values == ("a", "v") and (lives["a"].first, lives["a"].last) == (0, 3)
    assert lives["s"].values == ("s",) and "xv" not in {v for t in lives.values() for v in t.values}
    # without aliasing, sig is a's last reader: s overwrites a in place; v and xv are copies
    no_alias = {t.name: t.values for t in tensor_lifetimes(model, alias=False)}
    assert no_alias == {"a": ("a", "s"), "v": ("v",), "xv": ("xv",)}


def test_unknown_shape_names_the_tensor() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["mystery"]),
        helper.make_node("Relu", ["mystery"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", ["n", 8])], [vi("y", ["n", 8])], infer=False)
    with pytest.raises(InputError, match="mystery") as err:
        plan_memory(model)
    assert err.value.hint


def test_symbolic_batch_zoo_model_is_refused(zoo_resnet18: Path) -> None:
    with pytest.raises(InputError, match="unknown shape"):
        plan_memory(io.load(zoo_resnet18))  # batch dim still "batch"
    with pytest.raises(InputError):
        plan_memory(relu_chain(), precision="fp8")


def test_data_dependent_shapes_are_unsized_not_errors() -> None:
    nodes = [
        helper.make_node("NonZero", ["x"], ["nz"]),
        helper.make_node("Relu", ["nz"], ["r"]),
        helper.make_node("Shape", ["r"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [4, 4])], [vi("y", [2], TensorProto.INT64)])
    plan = plan_memory(model)
    assert set(plan.unsized) >= {"nz", "r"}
    check_plan(plan)


def test_unsorted_nodes_and_constant_branches_run_just_in_time() -> None:
    w = helper.make_tensor("w", TensorProto.INT8, [1, 4096], [1] * 4096)
    nodes = [
        helper.make_node("Add", ["h2", "wf"], ["y"], name="last"),  # stored first: not topological
        helper.make_node("DequantizeLinear", ["w", "sc"], ["wf"], name="dq"),  # constant-only
        helper.make_node("Relu", ["x"], ["h1"], name="first"),
        helper.make_node("Sigmoid", ["h1"], ["h2"], name="mid"),
    ]
    sc = helper.make_tensor("sc", FLOAT, [], [0.5])
    model = make_model(  # stored out of order, so shapes are given (onnx_ir cannot clone it)
        nodes,
        [vi("x", [1, 4096])],
        [vi("y", [1, 4096])],
        initializers=[w, sc],
        value_info=[vi(n, [1, 4096]) for n in ("wf", "h1", "h2")],
        infer=False,
    )
    order = [n.name for n in execution_order(model.graph)]
    assert order == ["first", "mid", "dq", "last"]
    from onnxfit.analysis.lifetimes import analyze_lifetimes

    lives = {t.name: t for t in analyze_lifetimes(model, qdq=False).lives}
    assert (lives["wf"].first, lives["wf"].last) == (2, 3)
    # with QDQ fusion (the default) a dequantized weight is a weight, not an activation
    assert "wf" not in {t.name for t in tensor_lifetimes(model)}


def test_zoo_resnet18_plan(zoo_resnet18: Path) -> None:
    model = infer_shapes(io.load(zoo_resnet18), batch=1)
    plan = plan_memory(model)
    conv1, pool = 64 * 112 * 112 * 4, 64 * 56 * 56 * 4  # FINDINGS: 3.83 MiB "in place"
    assert plan.lower_bound_bytes == conv1 + pool
    assert plan.arena_bytes <= 1.02 * plan.lower_bound_bytes
    assert plan.peak_node == "maxpool" and plan.batch == 1
    assert plan.input_bytes == 3 * 224 * 224 * 4 and plan.output_bytes == 1000 * 4
    check_plan(plan)
    separate = plan_memory(model, alias=False, inplace=False)  # FINDINGS: 6.13 MiB
    assert separate.lower_bound_bytes == 2 * conv1
    assert separate.arena_bytes <= 1.02 * separate.lower_bound_bytes
    assert separate.naive_bytes == plan.naive_bytes > 5 * plan.arena_bytes
    half = plan_memory(model, precision="fp16")
    assert half.lower_bound_bytes * 2 == plan.lower_bound_bytes
    assert half.naive_bytes * 2 == plan.naive_bytes
    check_plan(half)


def test_zoo_yolov3_tiny_plan(zoo_yolov3_tiny: Path) -> None:
    model = infer_shapes(io.load(zoo_yolov3_tiny), batch=1)
    plan = plan_memory(model)
    conv0, pool1 = 16 * 416 * 416 * 4, 16 * 208 * 208 * 4  # FINDINGS: 13.2 MiB in place
    assert plan.lower_bound_bytes == conv0 + pool1
    assert plan.arena_bytes <= 1.02 * plan.lower_bound_bytes
    assert plan.output_bytes == 255 * (13 * 13 + 26 * 26) * 4
    check_plan(plan)
    separate = plan_memory(model, alias=False, inplace=False)  # FINDINGS: 21.1 MiB
    assert separate.lower_bound_bytes == 2 * conv0
    assert plan_memory(model, precision="fp16").lower_bound_bytes * 2 == plan.lower_bound_bytes
    batch2 = plan_memory(infer_shapes(io.load(zoo_yolov3_tiny), batch=2))
    assert batch2.lower_bound_bytes == 2 * plan.lower_bound_bytes and batch2.batch == 2


def test_estimate_runtime_memory(zoo_resnet18: Path) -> None:
    model = io.load(zoo_resnet18)
    mem = estimate_runtime_memory(model, batch=1)
    assert mem.weights_bytes == 4 * (11_689_512 + 9_600)  # params + BN running statistics
    assert int(mem) == mem.total == mem.weights_bytes + mem.arena_bytes + mem.io_bytes
    assert mem.arena_bytes == mem.plan.arena_bytes and mem.io_bytes == 602_112 + 4_000
    assert mem < 60 * MIB and json.dumps(mem.to_dict())
    mem4 = estimate_runtime_memory(model, batch=4)
    assert mem4.weights_bytes == mem.weights_bytes
    assert mem4.arena_bytes >= 4 * mem.plan.lower_bound_bytes
    half = estimate_runtime_memory(model, batch=1, precision="fp16")
    assert half.weights_bytes * 2 == mem.weights_bytes
    with pytest.raises(InputError):
        estimate_runtime_memory(model, batch=0)
    assert model.graph.inputs[0].shape is not None
    assert not model.graph.inputs[0].shape.is_static()  # the caller's model is not changed


@pytest.mark.needs_data
def test_shared_models(shared_data: Path) -> None:
    for name in ("shufflenet-v2-12-qdq.onnx", "yolox_nano.onnx"):
        plan = plan_memory(infer_shapes(io.load(shared_data / "models" / name)))
        check_plan(plan)
        assert 0 < plan.arena_bytes <= 1.02 * plan.lower_bound_bytes < plan.naive_bytes


# ----------------------------------------------------------------------------- random graphs

_UNARY = ["Relu", "Sigmoid", "Neg", "Identity", "Reshape"]
_BINARY = ["Add", "Sub", "Concat"]


def _apply(op: str, args: list[np.ndarray]) -> np.ndarray:
    if op == "Relu":
        return np.maximum(args[0], 0)
    if op == "Sigmoid":
        return 1 / (1 + np.exp(-args[0]))
    if op == "Neg":
        return -args[0]
    if op == "Identity":
        return args[0].copy()
    if op == "Reshape":
        return args[0].reshape(tuple(int(d) for d in args[1])).copy()
    if op == "Add":
        return args[0] + args[1]
    if op == "Sub":
        return args[0] - args[1]
    if op == "Concat":
        return np.concatenate(args, axis=0)
    raise AssertionError(op)


@st.composite
def random_graphs(draw: st.DrawFn) -> ir.Model:
    """A random DAG of elementwise, view and concat ops over [rows, 8] float tensors."""
    shapes: dict[str, tuple[int, int]] = {"x": (1, 8), "c": (1, 8)}
    inits = [helper.make_tensor("c", FLOAT, [1, 8], np.linspace(-1, 1, 8).tolist())]
    nodes = []
    for i in range(draw(st.integers(1, 14))):
        names = list(shapes)
        a = draw(st.sampled_from(names))
        op = draw(st.sampled_from(_UNARY + _BINARY))
        out = f"v{i}"
        if op in _BINARY:
            same = [n for n in names if shapes[n] == shapes[a]]
            stackable = [n for n in names if shapes[n][1] == shapes[a][1]]
            b = draw(st.sampled_from(same if op != "Concat" else stackable))
            if op == "Concat" and shapes[a][0] + shapes[b][0] > 6:
                op, b = "Relu", ""
            if op == "Concat":
                shapes[out] = (shapes[a][0] + shapes[b][0], shapes[a][1])
            else:
                shapes[out] = shapes[a]
            node = helper.make_node(op, [a, b] if b else [a], [out], name=f"n{i}")
            if op == "Concat":
                node.attribute.append(helper.make_attribute("axis", 0))
            nodes.append(node)
        elif op == "Reshape":
            rows, cols = shapes[a]
            target = (rows * 2, cols // 2) if cols == 8 else (rows // 2, cols * 2)
            sname = f"s{i}"
            inits.append(helper.make_tensor(sname, TensorProto.INT64, [2], list(target)))
            shapes[out] = target
            nodes.append(helper.make_node("Reshape", [a, sname], [out], name=f"n{i}"))
        else:
            shapes[out] = shapes[a]
            nodes.append(helper.make_node(op, [a], [out], name=f"n{i}"))
    produced = [f"v{i}" for i in range(len(nodes))]
    extra = draw(st.sets(st.sampled_from(produced), max_size=2))
    outs = sorted({produced[-1], *extra})
    return make_model(
        nodes, [vi("x", [1, 8])], [vi(o, list(shapes[o])) for o in outs], initializers=inits
    )


def simulate(model: ir.Model, plan: MemoryPlan) -> dict[str, np.ndarray]:
    """Run ``model`` with every planned value stored at its offset in one arena.

    A buffer is filled with NaN when first written, *before* its node reads its inputs, so a
    planned overlap with any value still needed shows up as NaN or a wrong number.
    """
    g = model.graph
    home = {v: b for b in plan.buffers for v in b.values}
    arena = np.zeros(max(plan.arena_bytes, 1), np.uint8)
    shapes = {
        str(v.name): tuple(int(d) for d in v.shape.numpy())
        for n in g
        for v in n.outputs
        if v.shape is not None
    }

    def view(name: str) -> np.ndarray:
        b = home[name]
        size = int(np.prod(shapes[name])) * 4
        return arena[b.offset : b.offset + size].view(np.float32).reshape(shapes[name])

    outside: dict[str, np.ndarray] = {"x": np.linspace(-2, 3, 8, dtype=np.float32).reshape(1, 8)}
    outside.update(
        {
            str(k): v.const_value.numpy()
            for k, v in g.initializers.items()
            if v.const_value is not None
        }
    )
    for node in (n for n in execution_order(g) if not is_constant(n)):
        out = str(node.outputs[0].name)
        if out in home and home[out].values[0] == out:
            arena[home[out].offset : home[out].offset + home[out].size] = 0xFF  # NaN
        args = [
            view(str(v.name)) if str(v.name) in home else outside[str(v.name)]
            for v in node.inputs
            if v is not None
        ]
        result = _apply(node.op_type, [np.array(a) for a in args])
        if out in home:
            view(out)[...] = result
        else:
            # not in the arena: a graph output, or a view of the graph input / an initializer
            assert node.outputs[0].is_graph_output() or (
                node.op_type in ALIAS_OPS
                and node.inputs[0] is not None
                and str(node.inputs[0].name) not in home
            ), out
            outside[out] = result
    return {str(v.name): outside[str(v.name)] for v in g.outputs}


def reference(model: ir.Model) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {"x": np.linspace(-2, 3, 8, dtype=np.float32).reshape(1, 8)}
    env.update(
        {
            str(k): v.const_value.numpy()
            for k, v in model.graph.initializers.items()
            if v.const_value is not None
        }
    )
    for node in execution_order(model.graph):
        env[str(node.outputs[0].name)] = _apply(
            node.op_type, [env[str(v.name)] for v in node.inputs if v is not None]
        )
    return {str(v.name): env[str(v.name)] for v in model.graph.outputs}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    model=random_graphs(),
    alias=st.booleans(),
    inplace=st.booleans(),
    alignment=st.sampled_from([1, 64]),
)
def test_random_graphs_plan_is_valid_and_runs(
    model: ir.Model, alias: bool, inplace: bool, alignment: int
) -> None:
    plan = plan_memory(model, alias=alias, inplace=inplace, alignment=alignment)
    check_plan(plan)
    got, want = simulate(model, plan), reference(model)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-6, equal_nan=False, err_msg=name)
    if not alias and not inplace:
        assert plan.naive_bytes == sum(b.size for b in plan.buffers)


def test_simulation_catches_a_bad_plan() -> None:
    """The random-graph check can fail: a plan with every buffer at offset 0 is caught."""
    nodes = [
        helper.make_node("Relu", ["x"], ["a"]),
        helper.make_node("Neg", ["x"], ["b"]),
        helper.make_node("Add", ["a", "b"], ["y"]),
    ]
    model = make_model(nodes, [vi("x", [1, 8])], [vi("y", [1, 8])])
    plan = plan_memory(model)
    assert len(plan.buffers) == 2
    np.testing.assert_allclose(simulate(model, plan)["y"], reference(model)["y"])
    bad = dataclasses.replace(
        plan, buffers=tuple(dataclasses.replace(b, offset=0) for b in plan.buffers)
    )
    assert not np.allclose(simulate(model, bad)["y"], reference(model)["y"])


# ----------------------------------------------------------------------------- rendering


def test_report_rows_table_and_plot(tmp_path: Path) -> None:
    plan = plan_memory(relu_chain(4, width=1024), inplace=False)
    rows = memory_rows(plan, top=2)
    assert len(rows) == 2 and rows[0]["size_bytes"] >= rows[1]["size_bytes"]
    assert memory_table(plan).row_count == len(plan.buffers)
    assert dict(memory_summary_rows(plan))["arena"].endswith("KiB")
    out = plot_memory_plan(plan, tmp_path / "plan.png", title="chain")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = plan_memory(
        make_model([helper.make_node("Relu", ["x"], ["y"])], [vi("x", [1, 8])], [vi("y", [1, 8])])
    )
    assert empty.buffers == () and empty.arena_bytes == 0 and empty.peak_step == -1
    plot_memory_plan(empty, tmp_path / "empty.svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.svg", "plan.png"]  # no temps
    with pytest.raises(InputError):
        plot_memory_plan(plan, tmp_path / "plan.gif")
    with pytest.raises(InputError):
        plot_memory_plan(plan, tmp_path / "missing" / "plan.png")


def _qdq_chain() -> ir.Model:
    """x -> Q -> DQ -> Conv -> Q -> DQ -> Conv -> out, 8x16x16 activations (2048 B as uint8)."""
    from onnx import numpy_helper

    inits = [
        numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w"),
        numpy_helper.from_array(np.ones((8, 8, 3, 3), np.float32), "w2"),
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(0, np.uint8), "z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q1"),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dq1"),
        helper.make_node("Conv", ["xf", "w"], ["y"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"], name="q2"),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["yf"], name="dq2"),
        helper.make_node("Conv", ["yf", "w2"], ["out"], pads=[1, 1, 1, 1], name="c2"),
    ]
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        nodes,
        "qdq",
        [vi("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [vi("out", TensorProto.FLOAT, [1, 8, 16, 16])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return infer_shapes(io.from_proto(proto))


def test_qdq_fusion_counts_quantized_width() -> None:
    """ORT fuses DQ -> Conv -> Q: only the uint8 tensors exist (hand-computed: 2 x 2048 B)."""
    from onnxfit.analysis.lifetimes import analyze_lifetimes

    model = _qdq_chain()
    plan = plan_memory(model)
    assert [(b.name, b.size, b.first, b.last) for b in plan.buffers] == [
        ("xq", 2048, 0, 2),
        ("y", 2048, 2, 5),
    ]
    assert plan.arena_bytes == plan.lower_bound_bytes == 4096
    unfused = analyze_lifetimes(model, qdq=False)
    assert sum(life.size_bytes for life in unfused.lives) == 2048 + 8192 + 8192 + 2048 + 8192
