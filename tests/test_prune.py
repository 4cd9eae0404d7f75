"""Unstructured magnitude pruning: exact counts, caps, exclusions, ties; scores on their own."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper as oh

from onnxfit.errors import InputError
from onnxfit.pruning import scores as sc
from onnxfit.pruning.unstructured import PrunePass, find_weights, make_masks
from passes_util import check, model, ops, run, tensor, vinfo


def _net(rng: np.random.Generator, *, ties: bool = False):
    """conv0 (first) -> relu -> conv1 -> relu -> conv2 -> GAP -> flatten -> fc (last)."""

    def w(*shape: int) -> np.ndarray:
        if ties:  # few distinct magnitudes: many ties at every threshold
            mag = rng.integers(1, 4, shape) * rng.choice([-1, 1], shape)
            return mag.astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    inits = [
        tensor("w0", w(8, 3, 3, 3)),
        tensor("w1", w(16, 8, 3, 3)),
        tensor("w2", 5 * w(16, 16, 1, 1)),  # larger scale: global pruning spares it
        tensor("fc", w(10, 16)),
        tensor("fc_b", np.zeros(10, np.float32)),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        oh.make_node("Relu", ["c0"], ["r0"]),
        oh.make_node("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2"),
        oh.make_node("GlobalAveragePool", ["c2"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", "fc", "fc_b"], ["y"], transB=1, name="fc"),
    ]
    return model(nodes, [vinfo("x", [1, 3, 8, 8])], [vinfo("y", [1, 10])], inits)


def _zeros(m, name: str) -> int:
    return int(np.count_nonzero(m.graph.initializers[name].const_value.numpy() == 0))


def test_first_and_last_layers_are_excluded_by_default(rng):
    m = _net(rng)
    refs, excluded = find_weights(m)
    assert [r.name for r in refs] == ["w1", "w2"]
    assert set(excluded) == {"w0", "fc"}
    refs, excluded = find_weights(m, exclude_first=False, exclude_last=False, exclude=["conv2"])
    assert [r.name for r in refs] == ["w0", "w1", "fc"]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.37, 0.5, 0.7, 0.9])
def test_global_sparsity_is_exact(rng, sparsity, ties):
    m = _net(rng, ties=ties)
    p = PrunePass(sparsity=sparsity)
    p(m)
    n = 16 * 8 * 9 + 16 * 16
    pruned = _zeros(m, "w1") + _zeros(m, "w2")
    assert pruned == sc.exact_count(sparsity, n) == p.stats["weights_pruned"]
    assert _zeros(m, "w0") == 0 and _zeros(m, "fc") == 0  # excluded layers untouched
    assert ops(m) == ops(_net(rng))  # only weights change
    check(m)


def test_global_prunes_the_globally_smallest(rng):
    m = _net(rng)
    before = {k: m.graph.initializers[k].const_value.numpy().copy() for k in ("w1", "w2")}
    PrunePass(sparsity=0.5)(m)
    after = {k: m.graph.initializers[k].const_value.numpy() for k in before}
    pruned = np.concatenate([np.abs(before[k][after[k] == 0]) for k in before])
    kept = np.concatenate([np.abs(before[k][after[k] != 0]) for k in before])
    assert pruned.max() <= kept.min()
    assert _zeros(m, "w2") < _zeros(m, "w1")  # the 5x larger layer loses less


@pytest.mark.parametrize("sparsity", [0.25, 0.6, 0.95])
def test_layer_scope_is_exact_per_tensor(rng, sparsity):
    m = _net(rng, ties=True)
    PrunePass(sparsity=sparsity, scope="layer")(m)
    assert _zeros(m, "w1") == sc.exact_count(sparsity, 16 * 8 * 9)
    assert _zeros(m, "w2") == sc.exact_count(sparsity, 256)


def test_per_layer_cap_holds_and_total_stays_exact(rng):
    m = _net(rng)
    m.graph.initializers["w2"].const_value = tensor_ir(
        1e-3 * m.graph.initializers["w2"].const_value.numpy()
    )  # tiny weights: global magnitude would prune all of w2
    PrunePass(sparsity=0.3, max_sparsity=0.5)(m)
    assert _zeros(m, "w2") == 128  # capped at 50 %
    assert _zeros(m, "w1") + _zeros(m, "w2") == sc.exact_count(0.3, 1152 + 256)


def tensor_ir(array: np.ndarray):
    import onnx_ir as ir

    return ir.tensor(array.astype(np.float32))


def test_threshold_and_ratios(rng):
    m = _net(rng)
    w1 = m.graph.initializers["w1"].const_value.numpy().copy()
    PrunePass(sparsity=None, threshold=0.5)(m)
    assert _zeros(m, "w1") == int(np.count_nonzero(np.abs(w1) < 0.5))
    m = _net(rng)
    p = PrunePass(ratios={"conv1": 0.25})
    p(m)
    assert _zeros(m, "w1") == sc.exact_count(0.25, 1152) and _zeros(m, "w2") == 0
    assert p.stats["tensors_pruned"] == 1


def test_zeros_are_positive_and_outputs_match_a_masked_reference(rng):
    m = _net(rng)
    ref = _net(np.random.default_rng(0))
    m = _net(np.random.default_rng(0))
    PrunePass(sparsity=0.6)(m)
    for k in ("w1", "w2"):
        a = m.graph.initializers[k].const_value.numpy()
        assert not np.signbit(a[a == 0]).any()  # +0.0 only
        ref.graph.initializers[k].const_value = tensor_ir(
            np.where(a == 0, 0, ref.graph.initializers[k].const_value.numpy())
        )
    x = {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    np.testing.assert_array_equal(run(m, x)[0], run(ref, x)[0])


def test_bad_requests_raise_input_error(rng):
    refs, _ = find_weights(_net(rng))
    with pytest.raises(InputError):
        make_masks(refs, sparsity=0.97, scope="layer", max_sparsity=0.95)
    with pytest.raises(InputError):
        make_masks(refs, sparsity=0.99, max_sparsity=0.5)  # more than the caps allow
    with pytest.raises(InputError):
        make_masks(refs, sparsity=1.5)
    with pytest.raises(InputError):
        make_masks(refs)


# ---------------------------------------------------------------------------- scores


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    frac=st.floats(0, 1),
    cap_frac=st.floats(0.2, 1),
    seed=st.integers(0, 2**16),
)
def test_prune_counts_water_filling(sizes, frac, cap_frac, seed):
    rng = np.random.default_rng(seed)
    scores = [rng.integers(0, 5, n).astype(float) for n in sizes]  # ties on purpose
    caps = [int(cap_frac * n) for n in sizes]
    k = min(int(frac * sum(sizes)), sum(caps))
    counts = sc.prune_counts(scores, k, caps)
    assert sum(counts) == k
    assert all(0 <= c <= cap for c, cap in zip(counts, caps, strict=True))
    # uncapped arrays take their globally smallest: nothing kept there is below a pruned score
    pruned = [np.sort(s)[:c] for s, c in zip(scores, counts, strict=True)]
    kept_free = [np.sort(s)[c:] for s, c, cap in zip(scores, counts, caps, strict=True) if c < cap]
    if any(p.size for p in pruned) and any(q.size for q in kept_free):
        assert max(p.max() for p in pruned if p.size) <= min(q.min() for q in kept_free if q.size)


def test_channel_norms_and_smallest():
    w = np.arange(24, dtype=np.float32).reshape(4, 2, 3) - 10
    np.testing.assert_allclose(sc.channel_norms(w), np.abs(w).reshape(4, -1).sum(1))
    np.testing.assert_allclose(
        sc.channel_norms(w, norm="l2", scale=np.array([1, -2, 0, 1])),
        np.sqrt((w.reshape(4, -1) ** 2).sum(1)) * np.array([1, 2, 0, 1]),
    )
    assert sc.smallest(np.array([3, 1, 1, 0, 1]), 3).tolist() == [1, 2, 3]  # ties: lower index
    assert sc.magnitude(np.array([np.nan, -1.0]))[0] == np.inf  # NaN never pruned first
