"""onnxfit.verify: error math on hand-made outputs, model comparison, sensitivity, eval sets."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from PIL import Image

from onnxfit import io, verify
from onnxfit.data.calibration import CalibrationData
from onnxfit.errors import InputError

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, inits=(), opset=17) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(inits))
    return io.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)]))


def _linear(w: np.ndarray, *, batch: int | str = "N") -> ir.Model:
    """y = x @ w: input x [batch, 4], output logits [batch, C]."""
    return _model(
        [oh.make_node("MatMul", ["x", "w"], ["logits"], name="mm")],
        [oh.make_tensor_value_info("x", F, [batch, 4])],
        [oh.make_tensor_value_info("logits", F, [batch, w.shape[1]])],
        [nh.from_array(w.astype(np.float32), "w")],
    )


def _chain(w1: np.ndarray, w2: np.ndarray) -> ir.Model:
    """x -> MatMul(w1) -> Relu -> MatMul(w2) -> y, nodes named a, r, b."""
    return _model(
        [
            oh.make_node("MatMul", ["x", "w1"], ["h"], name="a"),
            oh.make_node("Relu", ["h"], ["hr"], name="r"),
            oh.make_node("MatMul", ["hr", "w2"], ["y"], name="b"),
        ],
        [oh.make_tensor_value_info("x", F, ["N", 4])],
        [oh.make_tensor_value_info("y", F, ["N", 4])],
        [nh.from_array(w1.astype(np.float32), "w1"), nh.from_array(w2.astype(np.float32), "w2")],
    )


# ----------------------------------------------------------------------------- math


def test_cosine_per_sample_hand_made() -> None:
    ref = np.array([[1.0, 0.0], [1.0, 2.0], [1.0, 1.0], [0.0, 0.0], [0.0, 0.0]])
    cand = np.array([[0.0, 3.0], [2.0, 4.0], [-1.0, -1.0], [0.0, 0.0], [1.0, 0.0]])
    got = verify.cosine_per_sample(ref, cand)
    np.testing.assert_allclose(got, [0.0, 1.0, -1.0, 1.0, 0.0], atol=1e-12)


def test_cosine_per_sample_data_dependent_first_axis() -> None:
    """Detections after an in-graph NMS ([N, 7], N data-dependent): empty vs empty is a match,
    a different count is not, and nothing raises (yolox_nano_handsign raised in the gate)."""
    empty = np.zeros((0, 7), np.float32)
    assert verify.cosine_per_sample(empty, empty.copy()).tolist() == [1.0]
    assert verify.cosine_per_sample(empty, np.ones((2, 7), np.float32)).tolist() == [0.0]
    a = np.arange(14, dtype=np.float32).reshape(2, 7)
    assert verify.cosine_per_sample(a, a[:1]).tolist() == [0.0]
    assert verify.cosine_per_sample(np.float32(2.0), np.float32(2.0)).tolist() == [1.0]
    np.testing.assert_allclose(verify.cosine_per_sample(a, a), [1.0, 1.0])
    assert verify.top1_agreement(empty, empty) != verify.top1_agreement(empty, empty)  # NaN
    assert verify.top1_agreement(a, a[:1]) == 0.0 and verify.top1_agreement(a, a) == 1.0


def test_output_diff_hand_made() -> None:
    ref = np.array([[2.0, -4.0], [1.0, 0.0]], np.float32)
    cand = np.array([[2.0, -3.0], [1.5, 0.0]], np.float32)
    d = verify.output_diff("y", ref, cand)
    assert d.max_abs_error == pytest.approx(1.0)
    assert d.max_rel_error == pytest.approx(1.0 / 4.0)  # max |diff| / max |ref|
    assert d.mean_abs_error == pytest.approx(1.5 / 4)
    cos0 = (4 + 12) / (math.sqrt(20) * math.sqrt(13))
    assert d.cosine_min == pytest.approx(cos0)
    assert d.cosine == pytest.approx((cos0 + 1.0) / 2)
    with pytest.raises(InputError, match="shapes differ"):
        verify.output_diff("y", ref, cand[:1])


def test_top1_agreement_and_top_box() -> None:
    ref = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    cand = np.array([[0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.1, 0.2, 0.7]])
    assert verify.top1_agreement(ref, cand) == pytest.approx(2 / 3)
    det = np.zeros((2, 3, 7), np.float32)  # [N, boxes, 4 + obj + 2 classes]
    det[0, 1, 4], det[0, 1, 6] = 0.9, 0.8  # sample 0: box 1, class 1
    det[1, 2, 4], det[1, 2, 5] = 0.7, 0.9  # sample 1: box 2, class 0
    np.testing.assert_array_equal(verify.top_box(det), [[1, 1], [2, 0]])


# ----------------------------------------------------------------------------- compare_models


def test_compare_identical_models_is_exact(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 10))
    x = rng.standard_normal((12, 4)).astype(np.float32)
    r = verify.compare_models(_linear(w), _linear(w), x)
    assert r.samples == 12 and not r.synthetic
    assert r.max_abs_error == 0.0 and r.max_rel_error == 0.0
    assert r.cosine_min == pytest.approx(1.0)
    assert r.agreement == 1.0 and r.task == "classify" and r.agreement_output == "logits"
    assert r.accuracy_drop is None
    d = r.to_dict()
    assert d["outputs"][0]["shape"] == [12, 10] and d["synthetic"] is False


def test_compare_accuracy_and_agreement_match_numpy(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 10))
    w2 = w + 0.8 * rng.standard_normal((4, 10))
    x = rng.standard_normal((40, 4)).astype(np.float32)
    labels = (x.astype(np.float64) @ w).argmax(axis=1)
    labels[:10] = (labels[:10] + 1) % 10  # the reference gets 75 % right
    r = verify.compare_models(
        _linear(w), _linear(w2), [{"x": x[:25]}, {"x": x[25:]}], labels=labels
    )
    ref_pred, cand_pred = (x @ w).argmax(1), (x @ w2).argmax(1)
    assert r.agreement == pytest.approx(np.mean(ref_pred == cand_pred))
    assert r.reference_accuracy["top1"] == pytest.approx(0.75)
    assert r.candidate_accuracy["top1"] == pytest.approx(np.mean(cand_pred == labels))
    assert r.accuracy_drop == pytest.approx(100 * (0.75 - np.mean(cand_pred == labels)))
    assert set(r.reference_accuracy) == {"top1", "top5"}
    assert r.max_abs_error > 0 and r.cosine_min < 1.0
    assert r.to_dict()["accuracy_drop_pts"] == pytest.approx(r.accuracy_drop)


def test_compare_top1_top5_hand_made() -> None:
    """Identity vs negation on hand-made scores: every accuracy is countable by hand."""

    def scores(op: str) -> ir.Model:
        return _model(
            [oh.make_node(op, ["x"], ["logits"], name="op")],
            [oh.make_tensor_value_info("x", F, ["N", 8])],
            [oh.make_tensor_value_info("logits", F, ["N", 8])],
        )

    x = np.array([np.arange(8.0), np.arange(8.0)[::-1], np.arange(8.0)], np.float32)
    # ranks in x: row 0 and 2 best class 7 (top-5 = 3..7), row 1 best class 0 (top-5 = 0..4)
    labels = [7, 2, 0]  # top-1 hit, top-5 hit, miss
    r = verify.compare_models(scores("Identity"), scores("Neg"), x, labels=labels)
    assert r.reference_accuracy == pytest.approx({"top1": 1 / 3, "top5": 2 / 3})
    # negated: row 0 and 2 best class 0 (top-5 = 0..4), row 1 best class 7 (top-5 = 3..7)
    assert r.candidate_accuracy == pytest.approx({"top1": 1 / 3, "top5": 1 / 3})
    assert r.agreement == 0.0 and r.cosine_min == pytest.approx(-1.0)
    assert r.accuracy_drop == pytest.approx(0.0)


def test_compare_bad_labels(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 10))
    x = rng.standard_normal((5, 4)).astype(np.float32)
    with pytest.raises(InputError, match="10 classes"):
        verify.compare_models(_linear(w), _linear(w), x, labels=[0, 1, 2, 3, 999])
    with pytest.raises(InputError, match="3 labels for 5 samples"):
        verify.compare_models(_linear(w), _linear(w), x, labels=[0, 1, 2])


def test_compare_splits_feeds_for_fixed_batch_and_flags_synthetic(rng: np.random.Generator) -> None:
    w = rng.standard_normal((4, 6))
    x = rng.standard_normal((6, 4)).astype(np.float32)
    data = CalibrationData([{"x": x}], "noise", synthetic=True)
    r = verify.compare_models(_linear(w, batch=1), _linear(w, batch=1), data)
    assert r.samples == 6 and r.synthetic
    assert verify.compare_models(_linear(w), _linear(w), data, synthetic=False).synthetic is False


def test_compare_detect_task(rng: np.random.Generator) -> None:
    def sig(scale: float) -> ir.Model:
        return _model(
            [
                oh.make_node("Mul", ["x", "s"], ["xs"], name="mul"),
                oh.make_node("Sigmoid", ["xs"], ["boxes"], name="sig"),
            ],
            [oh.make_tensor_value_info("x", F, ["N", 20, 9])],
            [oh.make_tensor_value_info("boxes", F, ["N", 20, 9])],
            [nh.from_array(np.array(scale, np.float32), "s")],
        )

    x = rng.standard_normal((8, 20, 9)).astype(np.float32)
    r = verify.compare_models(sig(1.0), sig(1.0), x, task="detect")
    assert r.task == "detect" and r.agreement == 1.0
    assert verify.compare_models(sig(1.0), sig(1.0), x).task == "detect"  # found by shape
    with pytest.raises(InputError, match="task 'classify'"):
        verify.compare_models(sig(1.0), sig(1.0), x, task="classify")


# ----------------------------------------------------------------------------- sensitivity


def test_sensitivity_ranks_the_perturbed_node_first(rng: np.random.Generator) -> None:
    w1, w2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    x = rng.standard_normal((16, 4)).astype(np.float32)
    ref = _chain(w1, w2)
    cand = _chain(w1, w2 * 1.5)  # only node "b" is wrong
    drifts = verify.per_node_sensitivity(ref, cand, x)
    assert drifts[0].node == "b" and drifts[0].output == "y"
    assert drifts[0].rel_error == pytest.approx(0.5, rel=1e-5)
    assert drifts[0].added == pytest.approx(0.5, rel=1e-5)
    assert {d.node: d.rel_error for d in drifts}["a"] == pytest.approx(0.0, abs=1e-7)
    assert drifts[0].to_dict()["nodes"] == ["b"]
    cand2 = _chain(w1 * 1.2, w2)  # error enters at "a" and only passes through "b"
    drifts2 = verify.per_node_sensitivity(ref, cand2, x, top=1)
    assert len(drifts2) == 1 and drifts2[0].node == "a"
    assert set(drifts2[0].nodes) == {"a", "r"}  # its consumer r keeps the tensor float


def test_sensitivity_non_finite_candidate(rng: np.random.Generator) -> None:
    """An overflowing node (inf/nan, as fp16 can give) ranks first with an infinite error."""
    w1, w2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    x = rng.standard_normal((8, 4)).astype(np.float32)
    cand = _model(
        [
            oh.make_node("MatMul", ["x", "w1"], ["h"], name="a"),
            oh.make_node("Relu", ["h"], ["hr"], name="r"),
            oh.make_node("Div", ["hr", "zero"], ["y"], name="b"),
        ],
        [oh.make_tensor_value_info("x", F, ["N", 4])],
        [oh.make_tensor_value_info("y", F, ["N", 4])],
        [
            nh.from_array(w1.astype(np.float32), "w1"),
            nh.from_array(np.zeros(4, np.float32), "zero"),
        ],
    )
    drifts = verify.per_node_sensitivity(_chain(w1, w2), cand, x)
    assert drifts[0].node == "b" and math.isinf(drifts[0].rel_error)
    assert math.isinf(drifts[0].added) and drifts[0].cosine == 0.0
    assert all(not math.isnan(d.added) for d in drifts)


# ----------------------------------------------------------------------------- eval sets


def _eval_folder(root: Path, rng: np.random.Generator, classes: list[int]) -> Path:
    (root / "images").mkdir(parents=True)
    rows = ["file\twnid\tclass_index\tclass_name"]
    for i, cls in enumerate(classes):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        rows.append(f"images/{name}\tn0\t{cls}\tthing")
    (root / "labels.tsv").write_text("\n".join(rows) + "\n")
    return root


def test_load_eval_set(tmp_path: Path, rng: np.random.Generator) -> None:
    root = _eval_folder(tmp_path / "ev", rng, [3, 1, 4, 1])
    (root / "images" / "img9.png").write_bytes(b"not a png")  # unlisted: ignored
    x, y = verify.load_eval_set(root, "imagenet")
    assert x.shape == (4, 3, 224, 224) and x.dtype == np.float32
    assert y.tolist() == [3, 1, 4, 1]
    x2, y2 = verify.load_eval_set(root, "imagenet", limit=2)
    assert x2.shape[0] == 2 and y2.tolist() == [3, 1]


def test_load_eval_set_errors(tmp_path: Path, rng: np.random.Generator) -> None:
    root = _eval_folder(tmp_path / "ev", rng, [3, 1, 900])
    with pytest.raises(InputError, match="10 classes"):
        verify.load_eval_set(root, "imagenet", num_classes=10)
    (root / "images" / "img0.png").write_bytes(b"")  # unreadable: skipped, the rest loads
    _, y = verify.load_eval_set(root, "imagenet")
    assert y.tolist() == [1, 900]
    with pytest.raises(InputError, match=r"no labels\.tsv"):
        verify.load_eval_set(tmp_path, "imagenet")


@pytest.mark.needs_data
def test_real_eval_set_and_self_comparison(shared_data: Path) -> None:
    x, y = verify.load_eval_set(shared_data / "imagenet-sample", "imagenet", limit=8)
    assert x.shape == (8, 3, 224, 224) and y.min() >= 0 and y.max() < 1000
    model = shared_data / "models" / "shufflenet-v2-12-qdq.onnx"
    r = verify.compare_models(model, model, x, labels=y)  # fixed batch 1: split into 8 runs
    assert r.samples == 8 and r.agreement == 1.0 and r.accuracy_drop == 0.0
    assert r.reference_accuracy["top1"] >= 0.5  # 76 % on the full sample
