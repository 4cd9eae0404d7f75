"""Structured channel pruning: coupling (residual adds, concat, split/slice, depthwise, BN, Gemm),
numerical equality with a precisely defined masked dense model, and real models.

The reference for "the dense model with the removed channels forced to zero": a Mul by a 0/1
channel mask is inserted in front of every layer that mixes channels (Conv with group 1, Gemm)
wherever it reads a pruned tensor, i.e. *after* the BatchNormalization / activation / residual
group that produced it. (Zeroing at the conv output would not do: a BN after it turns 0 into
``beta - mean * gamma / sqrt(var + eps)``.) The pruned model must compute exactly that, up to
float summation order.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from onnxfit import io
from onnxfit.pruning.channels import PruneChannelsPass, apply_plan, plan_channels
from passes_util import check, copy, model, ops, run, tensor, vinfo


def _conv(name, x, y, cin, cout, rng, *, k=1, group=1, bias=True):
    inits = [
        tensor(f"{name}.w", rng.standard_normal((cout, cin // group, k, k)).astype(np.float32))
    ]
    inputs = [x, f"{name}.w"]
    if bias:
        inits.append(tensor(f"{name}.b", rng.standard_normal(cout).astype(np.float32)))
        inputs.append(f"{name}.b")
    p = k // 2
    node = oh.make_node("Conv", inputs, [y], name=name, group=group, pads=[p] * 4)
    return [node], inits


def _bn(name, x, y, c, rng):
    inits = [
        tensor(f"{name}.g", rng.uniform(0.5, 1.5, c).astype(np.float32)),
        tensor(f"{name}.b", rng.standard_normal(c).astype(np.float32)),
        tensor(f"{name}.m", rng.standard_normal(c).astype(np.float32)),
        tensor(f"{name}.v", rng.uniform(0.5, 2, c).astype(np.float32)),
    ]
    ins = [x] + [f"{name}.{s}" for s in "gbmv"]
    return [oh.make_node("BatchNormalization", ins, [y], name=name)], inits


class _G:
    """Collects nodes and initializers of a test graph."""

    def __init__(self, rng):
        self.rng, self.nodes, self.inits = rng, [], []

    def add(self, pair):
        self.nodes += pair[0]
        self.inits += pair[1]

    def conv(self, name, x, y, cin, cout, **kw):
        self.add(_conv(name, x, y, cin, cout, self.rng, **kw))

    def bn(self, name, x, y, c):
        self.add(_bn(name, x, y, c, self.rng))

    def op(self, op, ins, outs, **attrs):
        self.nodes.append(oh.make_node(op, ins, outs, **attrs))

    def model(self, cin, outs, hw=6):
        return model(
            self.nodes, [vinfo("x", [1, cin, hw, hw])], [vinfo(n, s) for n, s in outs], self.inits
        )


def _reference(dense: ir.Model, pruned_of: ir.Model, plan) -> ir.Model:
    """``dense`` with Mul(mask) in front of every channel-mixing consumer of a pruned tensor."""
    cg = plan.graph
    roots = cg.uf.roots()
    gone = np.zeros(len(roots), bool)
    gone[list(plan.removed)] = True
    masks: dict[tuple[str, int], np.ndarray] = {}
    for node in pruned_of.graph:
        mixing = node.op_type in ("Gemm", "MatMul") or (
            node.op_type == "Conv"
            and node.attributes.get("group", ir.AttrInt64("group", 1)).value == 1
        )
        ids = cg.values.get(node.inputs[0]) if node.inputs else None
        if mixing and ids is not None and gone[roots[ids]].any():
            masks[(node.name, 0)] = (~gone[roots[ids]]).astype(np.float32)
    ref = copy(dense)
    for node in list(ref.graph):
        key = (node.name, 0)
        if key not in masks:
            continue
        m = masks[key]
        rank = 2 if node.op_type in ("Gemm", "MatMul") else 4
        shape = [1, m.size] + [1] * (rank - 2)
        mv = ir.Value(name=f"{node.name}.mask", const_value=ir.tensor(m.reshape(shape)))
        ref.graph.register_initializer(mv)
        out = ir.Value(name=f"{node.name}.masked")
        mul = ir.node("Mul", [node.inputs[0], mv], outputs=[out], name=f"{node.name}.mask_mul")
        ref.graph.insert_before(node, mul)
        node.replace_input_with(0, out)
    return ref


def _prune_and_compare(m: ir.Model, rng, *, cin: int, hw: int = 6, **opts):
    dense = copy(m)
    plan = plan_channels(m, multiple_of=1, **opts)
    ref = _reference(dense, m, plan)
    apply_plan(m, plan)
    check(m)
    x = {"x": rng.standard_normal((1, cin, hw, hw)).astype(np.float32)}
    got, want = run(m, x), run(ref, x)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # and it really differs from the unmasked dense model (the test can fail)
    assert any(not np.allclose(g, d, atol=1e-3) for g, d in zip(got, run(dense, x), strict=True))
    return plan


def _weights(m: ir.Model, name: str) -> np.ndarray:
    return m.graph.initializers[name].const_value.numpy()


def test_conv_bn_relu_chain(rng):
    g = _G(rng)
    g.conv("c1", "x", "a", 4, 16, k=3)
    g.bn("bn1", "a", "b", 16)
    g.op("Relu", ["b"], ["r"])
    g.conv("c2", "r", "y", 16, 8)
    m = g.model(4, [("y", [1, 8, 6, 6])])
    plan = _prune_and_compare(m, rng, cin=4, ratio=0.5)
    assert list(plan.removed_channels()) == ["c1"]  # c2 feeds the graph output: locked
    assert _weights(m, "c1.w").shape == (8, 4, 3, 3) and _weights(m, "bn1.v").shape == (8,)
    assert _weights(m, "c2.w").shape == (8, 8, 1, 1)
    assert ops(m) == ["Conv", "BatchNormalization", "Relu", "Conv"]


def _resnet_like(rng, c: int = 8):
    g = _G(rng)
    g.conv("c0", "x", "a0", 3, c, k=3, bias=False)
    g.bn("bn0", "a0", "b0", c)
    g.op("Relu", ["b0"], ["t0"])
    for i, (t_in, t_out) in enumerate([("t0", "t1"), ("t1", "t2")], start=1):
        g.conv(f"b{i}.c1", t_in, f"b{i}.a", c, c, k=3, bias=False)
        g.bn(f"b{i}.bn1", f"b{i}.a", f"b{i}.b", c)
        g.op("Relu", [f"b{i}.b"], [f"b{i}.r"])
        g.conv(f"b{i}.c2", f"b{i}.r", f"b{i}.c", c, c, k=3, bias=False)
        g.bn(f"b{i}.bn2", f"b{i}.c", f"b{i}.d", c)
        g.op("Add", [f"b{i}.d", t_in], [f"b{i}.s"])
        g.op("Relu", [f"b{i}.s"], [t_out])
    g.op("GlobalAveragePool", ["t2"], ["p"])
    g.op("Flatten", ["p"], ["f"])
    g.inits.append(tensor("fc.w", rng.standard_normal((5, c)).astype(np.float32)))
    g.op("Gemm", ["f", "fc.w"], ["y"], transB=1, name="fc")
    return g.model(3, [("y", [1, 5])])


def test_residual_group_is_pruned_together(rng):
    m = _resnet_like(rng)
    plan = _prune_and_compare(m, rng, cin=3, ratio=0.5)
    gone = plan.removed_channels()
    assert gone["c0"] == gone["b1.c2"] == gone["b2.c2"] and len(gone["c0"]) == 4
    assert {"b1.c1", "b2.c1"} <= set(gone)  # each block's inner conv is its own group
    labels = sorted(len(g.convs) for g in plan.groups)
    assert labels == [1, 1, 3]
    assert _weights(m, "fc.w").shape == (5, 4)  # Gemm after GAP + flatten lost the columns
    assert m.graph.outputs[0].shape.dims[1] == 5


def test_concat_offsets_and_bn_after_concat(rng):
    g = _G(rng)
    g.conv("ca", "x", "a", 3, 6, k=3)
    g.op("Relu", ["a"], ["ra"])
    g.conv("cb", "x", "b", 3, 10, k=3)
    g.op("Sigmoid", ["b"], ["sb"])
    g.op("Concat", ["ra", "sb"], ["cat"], axis=1)
    g.bn("bn", "cat", "n", 16)
    g.op("LeakyRelu", ["n"], ["r"], alpha=0.1)
    g.conv("cc", "r", "y", 16, 4)
    m = g.model(3, [("y", [1, 4, 6, 6])])
    bn_mean = _weights(m, "bn.m").copy()
    plan = _prune_and_compare(m, rng, cin=3, ratio=0.5)
    gone = plan.removed_channels()
    assert len(gone["ca"]) == 3 and len(gone["cb"]) == 5
    kept = [c for c in range(6) if c not in gone["ca"]] + [
        6 + c for c in range(10) if c not in gone["cb"]
    ]
    assert _weights(m, "cc.w").shape == (4, 8, 1, 1)
    np.testing.assert_array_equal(_weights(m, "bn.m"), bn_mean[kept])  # offset mapping


def test_depthwise_group_follows(rng):
    g = _G(rng)
    g.conv("c1", "x", "a", 4, 12)
    g.op("Relu", ["a"], ["r"])
    g.conv("dw", "r", "d", 12, 12, k=3, group=12)
    g.op("Clip", ["d"], ["c"])
    g.conv("c2", "c", "y", 12, 6)
    m = g.model(4, [("y", [1, 6, 6, 6])])
    _prune_and_compare(m, rng, cin=4, ratio=0.25)
    dw = next(n for n in m.graph if n.name == "dw")
    assert dw.attributes["group"].value == 9 and _weights(m, "dw.w").shape == (9, 1, 3, 3)


def test_split_and_slice_bounds_are_rewritten(rng):
    g = _G(rng)
    g.conv("c1", "x", "a", 3, 12, k=3)
    g.op("Relu", ["a"], ["r"])
    g.inits.append(tensor("sizes", np.array([4, 8], np.int64)))
    g.op("Split", ["r", "sizes"], ["s0", "s1"], axis=1)
    g.conv("ca", "s0", "ya", 4, 3)
    for n, v in (("st", [2]), ("en", [8]), ("ax", [1])):
        g.inits.append(tensor(n, np.array(v, np.int64)))
    g.op("Slice", ["s1", "st", "en", "ax"], ["sl"])
    g.conv("cb", "sl", "yb", 6, 3)
    g.op("Add", ["ya", "yb"], ["y"])
    m = g.model(3, [("y", [1, 3, 6, 6])])
    _prune_and_compare(m, rng, cin=3, ratio=0.5)
    assert _weights(m, "sizes").sum() == 6


def test_unknown_ops_and_outputs_lock_channels(rng):
    g = _G(rng)
    g.conv("c1", "x", "a", 3, 8)
    g.op("Softmax", ["a"], ["s"], axis=1)  # mixes channels: c1 must keep all of them
    g.conv("c2", "s", "b", 8, 8)
    g.op("Relu", ["b"], ["r"])
    g.op("Add", ["r", "b"], ["y"])  # a graph output downstream: c2 is locked too
    m = g.model(3, [("y", [1, 8, 6, 6])])
    p = PruneChannelsPass(ratio=0.5)
    assert not p(m).modified
    assert p.stats["locked"] == ["c1", "c2"]


def test_global_scope_counts_and_caps(rng):
    m = _resnet_like(rng)
    plan = plan_channels(m, ratio=0.5, scope="global", max_ratio=0.75, multiple_of=1)
    sizes = {g.label: g.sets.size for g in plan.groups}
    assert len(plan.removed) == round(0.5 * sum(sizes.values()))
    for grp in plan.groups:
        assert sum(int(r) in plan.removed for r in grp.sets) <= 0.75 * grp.sets.size


def test_multiple_of_rounds_kept_counts(rng):
    m = _resnet_like(rng)
    plan = plan_channels(m, ratio=0.3, multiple_of=4)
    for chans in plan.removed_channels().values():
        assert (8 - len(chans)) % 4 == 0


@pytest.mark.slow
def test_zoo_resnet18_30_percent(zoo_resnet18):
    from onnxfit.analysis.cost import analyze_cost
    from onnxfit.analysis.memory import plan_memory
    from onnxfit.analysis.shapes import infer_shapes

    m = io.load(zoo_resnet18)
    dense = copy(m)
    p = PruneChannelsPass(ratio=0.3)
    p(m)
    check(m)
    assert p.stats["params_after"] < 0.6 * p.stats["params_before"]

    def figures(x):
        shaped = infer_shapes(x)
        return analyze_cost(shaped, target="cpu").flops, plan_memory(shaped).arena_bytes

    (f0, a0), (f1, a1) = figures(dense), figures(m)
    assert f1 < 0.6 * f0 and a1 < a0
    x = {"input": np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)}
    assert run(m, x)[0].shape == (2, 1000)


@pytest.mark.needs_data
@pytest.mark.slow
@pytest.mark.parametrize("name", ["shufflenet", "yolox"])
def test_real_models_stay_valid(shared_data, name):
    from onnxfit.optimizer.registry import make_pass

    if name == "shufflenet":
        m = io.load(shared_data / "models" / "shufflenet-v2-12-qdq.onnx")
        make_pass("dequantize")(m)
        x = {"input": np.random.default_rng(0).uniform(-2, 2, (1, 3, 224, 224))}
    else:
        m = io.load(shared_data / "models" / "yolox_nano.onnx")
        x = {"images": np.random.default_rng(0).uniform(0, 255, (1, 3, 416, 416))}
    x = {k: v.astype(np.float32) for k, v in x.items()}
    dense_out = run(m, x)
    p = PruneChannelsPass(ratio=0.3)
    p(m)
    check(m)
    assert p.stats["channels_after"] < p.stats["channels_before"]
    out = run(m, x)
    assert [o.shape for o in out] == [o.shape for o in dense_out]
    assert all(np.isfinite(o).all() for o in out)


def test_data_driven_choice_and_mean_compensation(rng):
    """Channels that are constant on the data (zero filter, non-zero bias) cost nothing to
    remove once their mean goes into the next layer's bias: the pruned model equals the dense
    one. Without data they are removed too (zero filter norm) but forced to zero: it differs."""
    g = _G(rng)
    g.conv("c1", "x", "a", 3, 8, k=3)
    w = next(t for t in g.inits if t.name == "c1.w")
    arr = np.frombuffer(w.raw_data, np.float32).reshape(8, 3, 3, 3).copy()
    arr[[1, 4, 6, 7]] = 0
    w.CopyFrom(tensor("c1.w", arr))
    g.op("Relu", ["a"], ["r"])
    g.conv("c2", "r", "y", 8, 4)  # 1x1: no padding border, so the compensation is exact
    m = g.model(3, [("y", [1, 4, 6, 6])])
    dense = copy(m)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(4)]
    p = PruneChannelsPass(ratio=0.5, multiple_of=1, feeds=feeds)
    p(m)
    assert p.plan is not None and p.plan.removed_channels() == {"c1": [1, 4, 6, 7]}
    assert p.stats["compensated"] == 1
    check(m)
    x = {"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)}
    np.testing.assert_allclose(run(m, x)[0], run(dense, x)[0], rtol=1e-5, atol=1e-5)
    zeroed = copy(dense)
    PruneChannelsPass(ratio=0.5, multiple_of=1)(zeroed)
    assert not np.allclose(run(zeroed, x)[0], run(dense, x)[0], atol=1e-3)
