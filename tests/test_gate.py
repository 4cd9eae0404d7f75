"""The accuracy gate (optimizer.gate.Judge) and the label-free distances it stands on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.data.calibration import CalibrationData
from onnxfit.data.detection import Detections
from onnxfit.data.model_info import describe_model
from onnxfit.optimizer.data import RunData, image_model_info
from onnxfit.optimizer.gate import Judge
from onnxfit.verify import distance
from onnxfit.verify.evalset import EvalSet
from onnxfit.verify.evaluator import Evaluator
from onnxfit.verify.runner import run_all
from test_optimize import tiny_classifier

# ----------------------------------------------------------------------------- distances


def test_expected_drop_counts_the_margin_of_a_flip_not_the_image() -> None:
    ref = np.log(np.array([[0.50, 0.49, 0.01], [0.9, 0.05, 0.05]]))
    near_tie = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # flips sample 0 only
    assert distance.expected_top1_drop(ref, ref) == 0.0
    assert distance.expected_top1_drop(ref, near_tie) == pytest.approx((0.50 - 0.49) / 2)
    assert distance.top1_agreement(ref, near_tie) == 0.5  # the count says a whole image
    assert distance.expected_top1_drop(ref, np.full((2, 3), np.nan)) == 1.0


def test_mean_kl_and_probabilities() -> None:
    p = np.array([[0.7, 0.2, 0.1]])
    assert np.allclose(distance.probabilities(p), p)  # already a distribution: kept
    logits = np.log(p) + 3.0
    assert np.allclose(distance.probabilities(logits), p)  # softmax of logits
    q = np.array([[0.6, 0.3, 0.1]])
    want = float(np.sum(p * np.log(p / q)))
    assert distance.mean_kl(p, q) == pytest.approx(want, rel=1e-6)
    assert distance.mean_kl(p, p) == pytest.approx(0.0, abs=1e-9)


def test_paired_standard_error() -> None:
    a = np.array([1, 1, 0, 0, 1, 1, 1, 1], bool)
    b = np.array([1, 0, 1, 0, 1, 1, 1, 1], bool)  # two discordant images
    assert distance.paired_standard_error(a, b) == pytest.approx(np.sqrt(2) / 8)


def test_box_agreement_matches_by_class_and_iou() -> None:
    def dets(boxes, classes):  # type: ignore[no-untyped-def]
        b = np.asarray(boxes, np.float32).reshape(-1, 4)
        return Detections(b, np.linspace(0.9, 0.5, len(b)).astype(np.float32),
                          np.asarray(classes, np.int64))  # fmt: skip

    ref = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    same = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 2])
    moved = dets([[0, 0, 10, 10], [25, 25, 35, 35]], [1, 2])  # IoU 25/175 < 0.5
    relabelled = dets([[0, 0, 10, 10], [20, 20, 30, 30]], [1, 3])
    assert distance.box_agreement([ref], [same]) == (1.0, 2, 4)
    assert distance.box_agreement([ref], [moved])[0] == pytest.approx(0.5)
    assert distance.box_agreement([ref], [relabelled])[0] == pytest.approx(0.5)
    assert distance.box_agreement([Detections.empty()], [Detections.empty()])[0] == 1.0


# ----------------------------------------------------------------------------- the judge


def _data(model_path: Path, n: int, *, labels: bool, rng: np.random.Generator) -> RunData:
    model = io.load(model_path)
    info = image_model_info(model)
    assert info is not None
    x = rng.standard_normal((n, 3, 32, 32)).astype(np.float32)
    cal = CalibrationData([{"x": x[i : i + 1]} for i in range(n)], "test", False)
    ev = None
    if labels:
        y = next(iter(run_all(model, x).values())).argmax(1)
        ev = Evaluator(EvalSet("classify", x, [f"{i}" for i in range(n)], "t", "imagenet", y), info)
    return RunData(cal, x if labels else cal, "v", "c", False, evaluator=ev, info=info)


def _perturbed(src: Path, dst: Path, scale: float) -> Path:
    m = io.load(src)
    w = m.graph.initializers["fw"]
    arr = np.asarray(w.const_value.numpy())
    rng = np.random.default_rng(5)
    import onnx_ir as ir

    w.const_value = ir.tensor(arr + scale * rng.standard_normal(arr.shape).astype(np.float32))
    io.save(m, dst)
    return dst


def test_labelled_classifier_gate_and_resolution_warning(tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    src = tiny_classifier(tmp_path / "m.onnx")
    data = _data(src, 10, labels=True, rng=rng)
    ref = io.load(src)
    judge = Judge(ref, data, budget=1.0, cosine_floor=0.99)
    assert judge.measure == "top1_drop" and judge.reference_score == 100.0
    assert judge.warnings and "one labelled image of 10 is 10.00 pt" in judge.warnings[0]
    same = judge.judge(ref)
    assert same.passed and same.value == 0.0 and same.details["standard_error_pts"] == 0.0
    bad = judge.judge(io.load(_perturbed(src, tmp_path / "p.onnx", 3.0)))
    assert not bad.passed and bad.value > 1.0 and "top-1 drop" in bad.describe()


def test_label_free_classifier_gate_is_the_expected_drop(tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    src = tiny_classifier(tmp_path / "m.onnx")
    data = _data(src, 32, labels=False, rng=rng)
    ref = io.load(src)
    judge = Judge(ref, data, budget=1.0, cosine_floor=0.99)
    assert judge.measure == "expected_top1_drop" and not judge.warnings
    assert judge.judge(ref).value == pytest.approx(0.0, abs=1e-9)
    slight = judge.judge(io.load(_perturbed(src, tmp_path / "s.onnx", 0.01)))
    heavy = judge.judge(io.load(_perturbed(src, tmp_path / "h.onnx", 3.0)))
    assert 0.0 <= slight.value < heavy.value and heavy.details["mean_kl"] > 0
    assert not heavy.passed and "expected top-1 drop" in heavy.describe()
    assert "p_ref[top-1 of ref]" in heavy.rule


def _detector(path: Path) -> Path:
    """A YOLOX-shaped detector for 32x32 inputs: [N, 21, 5 + 2] (strides 8/16/32)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 21 * 7)).astype(np.float32)
    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "w"], ["m"]),
        helper.make_node("Sigmoid", ["m"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["out"]),
    ]
    g = helper.make_graph(
        nodes,
        "det",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 21, 7])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([1, 21, 7]), "shape")],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    io.save(m, path)
    return path


def test_label_free_detector_gate_is_box_disagreement(tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    src = _detector(tmp_path / "d.onnx")
    model = io.load(src)
    info = describe_model(
        [type("S", (), {"name": "x", "shape": [1, 3, 32, 32], "dtype": np.float32})()],
        [type("S", (), {"name": "out", "shape": [1, 21, 7], "dtype": np.float32})()],
        preset="yolox",
    )
    x = rng.standard_normal((24, 3, 32, 32)).astype(np.float32) * 3
    cal = CalibrationData([{"x": x[i : i + 1]} for i in range(24)], "t", False)
    data = RunData(cal, cal, "v", "c", False, info=info)
    judge = Judge(model, data, budget=1.0, cosine_floor=0.99, score_threshold=0.25)
    assert judge.measure == "box_disagreement"
    same = judge.judge(model)
    assert same.passed and same.value == 0.0 and same.details["detections"] > 0
    w = model.graph.initializers["w"]
    import onnx_ir as ir

    w.const_value = ir.tensor(-np.asarray(w.const_value.numpy()))  # every score flips
    flipped = judge.judge(model)
    assert not flipped.passed and flipped.value > 1.0 and "box disagreement" in flipped.describe()


def test_labelled_detector_gate_is_the_map50_drop(tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    from onnxfit.verify.evaluator import decode_detections

    src = _detector(tmp_path / "d.onnx")
    model = io.load(src)
    info = image_model_info(model, preset="yolox", task="detect")
    assert info is not None and info.decoder == "yolox"
    x = rng.standard_normal((12, 3, 32, 32)).astype(np.float32) * 3
    outs = [next(iter(run_all(model, x).values()))]
    truth_dets = decode_detections(outs, info, [None] * 12, score_threshold=0.3)
    truth = [(d.boxes, d.classes) for d in truth_dets]  # the model's own confident boxes
    assert sum(len(c) for _, c in truth) > 0
    es = EvalSet("detect", x, [str(i) for i in range(12)], "t", "yolox", truth=truth,
                 metas=[None] * 12)  # type: ignore[list-item]  # fmt: skip
    cal = CalibrationData([{"x": x[:1]}], "t", False)
    data = RunData(cal, x, "v", "c", False, evaluator=Evaluator(es, info), info=info)
    judge = Judge(model, data, budget=1.0, cosine_floor=0.99)
    assert judge.measure == "map50_drop" and judge.reference_score > 50.0
    same = judge.judge(model)
    assert same.passed and same.value == 0.0 and "candidate_map50" in same.details
    w = model.graph.initializers["w"]
    import onnx_ir as ir

    w.const_value = ir.tensor(-np.asarray(w.const_value.numpy()))
    assert not judge.judge(model).passed


def test_optimize_eval_takes_a_detection_folder(tmp_path: Path, rng) -> None:  # type: ignore[no-untyped-def]
    """``optimize --eval`` on YOLO images/ + labels/: the gate is the mAP@0.5 drop, and the
    images used for calibration are left out of the evaluation."""
    from PIL import Image

    from onnxfit.optimizer import optimize

    src = _detector(tmp_path / "d.onnx")
    root = tmp_path / "det"
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    for i in range(6):
        img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(img).save(root / "images" / "val" / f"{i}.png")
        (root / "labels" / "val" / f"{i}.txt").write_text(f"{i % 2} 0.5 0.5 0.4 0.5\n")
    result = optimize(
        src, tmp_path / "o.onnx", target="xbox-series-s", eval=root, preset="yolox",
        max_accuracy_drop=100.0, measure_runs=0,
    )  # fmt: skip
    assert result.gate.measure == "map50_drop" and result.gate.passed
    assert "candidate_map50" in result.gate.details
    assert result.data["task"] == "detect"
    assert "first 3 evaluation images" in result.data["calibration"]  # half calibrates
    assert "(3 images with boxes" in result.data["verification"]  # the other half judges
