"""Pruning with reconstruction: im2col, OBS updates, the prune pass's reconstruct method."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from onnxfit.errors import InputError
from onnxfit.pruning import obs
from onnxfit.pruning.activations import Layer
from onnxfit.pruning.channel_ls import ReconstructChannelsPass
from onnxfit.pruning.reconstruct import ReconstructPrunePass
from onnxfit.verify.runner import run_all
from passes_util import copy, model, tensor, vinfo


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"pads": [0, 1, 2, 1], "strides": [2, 1], "dilations": [1, 2]},
        {"pads": [1, 1, 1, 1], "group": 2},
        {"pads": [1, 1, 1, 1], "group": 4, "strides": [2, 2]},  # depthwise
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    ],
)
def test_patches_times_weight_matrix_is_the_conv(rng, attrs):
    groups = attrs.get("group", 1)
    w = rng.standard_normal((8, 4 // groups, 3, 3)).astype(np.float32)
    m = model(
        [oh.make_node("Conv", ["x", "w"], ["y"], name="conv", **attrs)],
        [vinfo("x", [2, 4, 9, 7])],
        [vinfo("y", None)],
        [tensor("w", w)],
    )
    x = rng.standard_normal((2, 4, 9, 7)).astype(np.float32)
    y = run_all(m, x)["y"]
    layer = Layer.of(next(iter(m.graph)), 1)
    p = layer.patches(x)  # [G, N, C]
    out = np.matmul(layer.matrix(), p.transpose(0, 2, 1))  # [G, R, N]
    b, o, ho, wo = y.shape
    got = out.reshape(o, b, ho, wo).transpose(1, 0, 2, 3)
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(layer.from_matrix(layer.matrix()), w)


def _layer_data(rng, rows=24, cols=96, n=3000):
    mix = rng.standard_normal((cols, cols)) / np.sqrt(cols)
    x = rng.standard_normal((n, cols)) @ mix + 0.3 * rng.standard_normal((n, cols))
    w = rng.standard_normal((1, rows, cols))
    return w, (x.T @ x)[None]


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.8])
def test_obs_beats_magnitude_at_equal_sparsity_and_is_exact(rng, sparsity):
    w, h = _layer_data(rng)
    k = round(sparsity * w.size)
    pruned, mask = obs.obs_prune(w, h, k, block=32)
    assert int(mask.sum()) == k and int(np.count_nonzero(pruned == 0)) == k
    assert np.all(pruned[mask] == 0) and not np.signbit(pruned[mask]).any()
    mag = w.copy()
    mag.reshape(-1)[np.argsort(np.abs(w).reshape(-1))[:k]] = 0
    assert obs.output_error(w, pruned, h) < 0.9 * obs.output_error(w, mag, h)


def test_obs_single_column_update_is_the_optimal_least_squares_fix(rng):
    # one row, two columns, the first one pruned: the update of the second (the only column to
    # its right) is the exact least-squares optimum without damping
    w, h = _layer_data(rng, rows=1, cols=2)
    w[0, 0, 0] = 1e-3
    pruned, mask = obs.obs_prune(w, h, 1, damp=0.0)
    assert mask[0, 0].tolist() == [True, False]
    best = h[0, 1] @ w[0, 0] / h[0, 1, 1]
    assert pruned[0, 0, 1] == pytest.approx(best, rel=1e-9)


def test_block_counts_sum_exactly():
    assert obs.block_counts(10, [3, 3, 4]) == [3, 3, 4]
    for count in range(0, 301, 7):
        assert sum(obs.block_counts(count, [128, 128, 44])) == count


def _net(rng, groups: int = 2):
    """conv0 (first) -> relu -> conv1 -> relu -> conv2 (grouped) -> relu -> conv3 (last)."""
    inits = [
        tensor("w0", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)),
        tensor("w1", rng.standard_normal((16, 8, 3, 3)).astype(np.float32) / 5),
        tensor("b1", rng.standard_normal(16).astype(np.float32)),
        tensor("w2", rng.standard_normal((16, 16 // groups, 3, 3)).astype(np.float32) / 4),
        tensor("w3", rng.standard_normal((4, 16, 1, 1)).astype(np.float32)),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], pads=[1, 1, 1, 1], name="conv0"),
        oh.make_node("Relu", ["c0"], ["r0"]),
        oh.make_node("Conv", ["r0", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        oh.make_node("Relu", ["c1"], ["r1"]),
        oh.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], group=groups, name="conv2"),
        oh.make_node("Relu", ["c2"], ["r2"]),
        oh.make_node("Conv", ["r2", "w3"], ["y"], name="conv3"),
    ]
    return model(nodes, [vinfo("x", ["n", 3, 10, 10])], [vinfo("y", None)], inits)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_reconstruct_pass_is_exact_and_closer_to_the_dense_model(rng, scope):
    m = _net(rng)
    x = rng.standard_normal((24, 3, 10, 10)).astype(np.float32)
    held = rng.standard_normal((24, 3, 10, 10)).astype(np.float32)
    dense = run_all(m, held)["y"]
    errors = {}
    for method in ("magnitude", "reconstruct"):
        c = copy(m)
        p = ReconstructPrunePass(sparsity=0.6, scope=scope, method=method, feeds=[{"x": x}])
        assert p(c).modified
        assert p.stats["method"] == method
        pruned = p.stats["weights_pruned"]
        assert pruned == round(0.6 * (16 * 8 * 9 * 2))  # conv1 + conv2: exact
        if scope == "layer":
            assert all(t.pruned == round(0.6 * t.size) for t in p.tensors)
        errors[method] = float(np.mean((run_all(c, held)["y"] - dense) ** 2))
    assert errors["reconstruct"] < 0.7 * errors["magnitude"]


def test_reconstruct_needs_feeds_and_a_sparsity(rng):
    m = _net(rng)
    with pytest.raises(InputError, match="calibration"):
        ReconstructPrunePass(sparsity=0.5, method="reconstruct")(m)
    with pytest.raises(InputError, match="threshold"):
        ReconstructPrunePass(
            sparsity=None,
            threshold=0.1,
            method="reconstruct",
            feeds=[{"x": np.ones((1, 3, 10, 10), np.float32)}],
        )(m)
    with pytest.raises(InputError, match="method"):
        ReconstructPrunePass(method="bogus")  # type: ignore[arg-type]


def _dup_net(rng):
    """conv0 (1x1, 6 -> 8 channels; 4..7 are half of 0..3) -> conv1 (3x3) = y."""
    w0 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)
    w1 = rng.standard_normal((4, 8, 3, 3)).astype(np.float32)
    w1[:, 4:] *= 0.1  # the duplicates score lowest: they are the ones removed
    inits = [
        tensor("w0", np.concatenate([w0, 0.5 * w0])),
        tensor("w1", w1),
        tensor("b1", rng.standard_normal(4).astype(np.float32)),
    ]
    nodes = [
        oh.make_node("Conv", ["x", "w0"], ["c0"], name="conv0"),
        oh.make_node("Conv", ["c0", "w1", "b1"], ["y"], pads=[1, 1, 1, 1], name="conv1"),
    ]
    return model(nodes, [vinfo("x", ["n", 6, 6, 6])], [vinfo("y", None)], inits)


def test_channel_refit_is_exact_when_the_kept_channels_span_the_removed_ones(rng):
    m = _dup_net(rng)
    x = rng.standard_normal((8, 6, 6, 6)).astype(np.float32)
    dense = run_all(m, x)["y"]
    p = ReconstructChannelsPass(
        ratio=0.5, multiple_of=1, method="reconstruct", feeds=[{"x": x}], damp=1e-9
    )
    assert p(m).modified
    assert m.graph.initializers["w0"].const_value.shape[0] == 4
    assert p.stats["refitted"] == 1 and p.stats["output_error"] < 1e-6
    np.testing.assert_allclose(run_all(m, x)["y"], dense, rtol=1e-3, atol=1e-3)


def test_channel_refit_beats_mean_compensation(rng):
    m = _net(rng, groups=1)
    x = rng.standard_normal((16, 3, 10, 10)).astype(np.float32)
    held = rng.standard_normal((16, 3, 10, 10)).astype(np.float32)
    dense = run_all(m, held)["y"]
    err = {}
    for method in ("magnitude", "reconstruct"):
        c = copy(m)
        p = ReconstructChannelsPass(ratio=0.25, multiple_of=4, method=method, feeds=[{"x": x}])
        p(c)
        assert p.stats["channels_after"] < p.stats["channels_before"]
        err[method] = float(np.mean((run_all(c, held)["y"] - dense) ** 2))
    assert err["reconstruct"] < err["magnitude"]


@pytest.mark.parametrize(("multiple", "kept"), [(1, 12), (4, 12), (8, 16)])
def test_channel_counts_round_to_the_multiple(rng, multiple, kept):
    m = _net(rng, groups=1)  # conv1 has 16 output channels; 0.25 asks to keep 12
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    ReconstructChannelsPass(
        ratio=0.25, multiple_of=multiple, method="reconstruct", feeds=[{"x": x}], exclude=["conv2"]
    )(m)
    assert m.graph.initializers["w1"].const_value.shape[0] == kept


def test_sensitivity_allocation_is_exact(rng):
    m = _net(rng, groups=1)
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    n = 16 * 8 * 9 + 16 * 16 * 9
    per = {}
    for allocation in ("output", "sensitivity"):
        p = ReconstructPrunePass(
            sparsity=0.5, method="reconstruct", feeds=[{"x": x}], allocation=allocation
        )
        p(copy(m))
        assert p.stats["weights_pruned"] == round(0.5 * n)
        per[allocation] = {t.name: t.pruned for t in p.tensors}
    assert sum(per["sensitivity"].values()) == sum(per["output"].values())
    with pytest.raises(InputError, match="allocation"):
        ReconstructPrunePass(allocation="bogus")  # type: ignore[arg-type]


def test_existing_zeros_are_pruned_first_and_counts_stay_exact(rng):
    m = _net(rng, groups=1)
    for name in ("w1", "w2"):  # a quantized model has many exact zeros
        v = m.graph.initializers[name]
        w = v.const_value.numpy().copy()
        w[rng.random(w.shape) < 0.3] = 0
        v.const_value = ir.tensor(w, name=name)
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    for sparsity in (0.4, 0.6):  # above the 30 % zeros already there
        c = copy(m)
        p = ReconstructPrunePass(sparsity=sparsity, method="reconstruct", feeds=[{"x": x}])
        p(c)
        n = 16 * 8 * 9 + 16 * 16 * 9
        assert p.stats["weights_pruned"] == round(sparsity * n)
        zeros = sum(int(np.count_nonzero(c.graph.initializers[k].const_value.numpy() == 0))
                    for k in ("w1", "w2"))  # fmt: skip
        assert zeros == round(sparsity * n)


def test_block_counts_give_zeros_first():
    assert obs.block_counts(10, [10, 10], [6, 0]) == [7, 3]  # 6 zeros + 4 over 4 / 10 left
    assert obs.block_counts(4, [10, 10], [6, 2]) == [3, 1]


def test_refit_is_the_identity_without_upstream_change_and_the_lstsq_fix_with_it(rng):
    from onnxfit.pruning.reconstruct import refit

    w, h = _layer_data(rng, rows=6, cols=10, n=400)
    np.testing.assert_allclose(refit(w, h, h, 0.1), w, rtol=1e-9, atol=1e-9)
    # upstream drift: the layer now sees x_now = x + noise; the undamped refit is the
    # least-squares map from x_now to the dense output w x
    x = rng.standard_normal((400, 10))
    now = x + 0.3 * rng.standard_normal((400, 10))
    got = refit(w, (x.T @ now)[None], (now.T @ now)[None], 0.0)
    want = np.linalg.lstsq(now, x @ w[0].T, rcond=None)[0].T
    np.testing.assert_allclose(got[0], want, rtol=1e-6, atol=1e-8)


def test_correction_brings_the_pruned_model_closer_to_the_dense_one(rng):
    """Sequential reconstruction fitted to the dense model's outputs (``correct=True``, the
    default) beats fitting each layer to its own drifted inputs, on held-out inputs."""
    m = _net(rng, groups=1)
    x = rng.standard_normal((32, 3, 10, 10)).astype(np.float32)
    held = rng.standard_normal((16, 3, 10, 10)).astype(np.float32)
    dense = run_all(m, held)["y"]
    err = {}
    for correct in (False, True):
        c = copy(m)
        ReconstructPrunePass(sparsity=0.6, method="reconstruct", feeds=[{"x": x}], correct=correct)(
            c
        )
        err[correct] = float(np.mean((run_all(c, held)["y"] - dense) ** 2))
    assert err[True] < err[False]


def test_propagation_probe_goes_past_the_zeros(rng):
    """A layer whose first-pass count covers only its zeros still gets a measured lambda (it
    was 1.0 for every layer of a quantized model: the zeros' -1 scores made ``own`` negative)."""
    from onnxfit.pruning import allocation as al
    from onnxfit.pruning.reconstruct import layers_of
    from onnxfit.pruning.unstructured import find_weights

    m = _net(rng, groups=1)
    for name in ("w1", "w2"):
        v = m.graph.initializers[name]
        w = v.const_value.numpy().copy()
        w[rng.random(w.shape) < 0.3] = 0
        v.const_value = ir.tensor(w, name=name)
    x = rng.standard_normal((8, 3, 10, 10)).astype(np.float32)
    refs, _ = find_weights(m)
    layers = layers_of(refs)
    scores = al.row_share(refs, layers, al.input_energy(m, list(layers.values()), [{"x": x}]))
    zeros = {r.name: int(np.count_nonzero(r.array() == 0)) for r in refs}
    lam = al.propagation(m, refs, layers, scores, zeros, [{"x": x}])
    assert set(lam) == {"w1", "w2"}
    assert all(v > 0 and v != 1.0 for v in lam.values()), lam
