"""``onnxfit eval``: synthetic datasets with every kind of mismatch, and the two real checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import shufflenet_qdq_top1
from onnxfit.apps.evaluation import dataset_task, evaluate
from onnxfit.cli import main
from onnxfit.errors import InputError
from pipeline_util import colour_classifier, colour_image, constant_detector, corrupt_jpeg

pytestmark = pytest.mark.timeout(300)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def cls_set(tmp_path) -> Path:
    """labels.tsv + images: 5 usable (4 right, 1 wrong label), 1 corrupt, 1 unlabelled,
    1 label outside the 3 classes, 1 row without an image, 1 stray non-image file."""
    root = tmp_path / "cls"
    rows = [
        ("images/a_red.png", 0),
        ("images/b_green.png", 1),
        ("images/c_blue.png", 2),
        ("images/sub/d_red.png", 0),
        ("images/e_green.png", 0),  # wrong on purpose: the model says green (1)
        ("images/f_bad.jpg", 1),
        ("images/g_far.png", 7),  # outside 0..2
        ("images/h_gone.png", 1),  # no such image
    ]
    for f, _ in rows[:5]:
        colour_image(root / f, Path(f).stem.split("_")[1])
    corrupt_jpeg(root / "images" / "f_bad.jpg")
    colour_image(root / "images" / "g_far.png", "red")
    colour_image(root / "images" / "z_unlisted.png", "blue")
    (root / "images" / "stray.bin").write_bytes(b"\x00")
    (root / "labels.tsv").write_text(
        "file\twnid\tclass_index\tclass_name\n" + "".join(f"{f}\tn0\t{c}\tx\n" for f, c in rows)
    )
    (root / "synset.txt").write_text("n01 red\nn02 green\nn03 blue\n")
    return root


def test_eval_classification_counts_every_mismatch(tmp_path, cls_set):
    model = colour_classifier(tmp_path / "colour.onnx")
    r = invoke("eval", model, cls_set, "--json", "--batch", "2")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["task"] == "classify"
    assert d["evaluated"] == 5  # the corrupt one was tried and failed
    assert d["metrics"]["top1"] == pytest.approx(4 / 5)
    assert d["metrics"]["top5"] == pytest.approx(1.0)
    assert d["bad_by_kind"] == {
        "label without image": 1,
        "not an image": 1,
        "unlabelled": 1,
        "bad label": 1,
        "unreadable image": 1,
    }
    reasons = {Path(b["path"]).name: b["reason"] for b in d["bad"]}
    assert "h_gone.png" in reasons["labels.tsv"]
    assert "outside the model's classes 0..2" in reasons["g_far.png"]
    assert "truncated" in reasons["f_bad.jpg"]
    assert "z_unlisted.png" in reasons
    assert "stray.bin" in reasons
    assert "synset.txt" not in reasons  # the dataset's own files are not reported
    # the table names them too
    r = invoke("eval", model, cls_set)
    assert r.exit_code == 0
    assert "80.00 %" in r.output and "5 input(s) not used" in r.output
    # --limit keeps the first usable images
    r = invoke("eval", model, cls_set, "--limit", "2", "--json")
    assert json.loads(r.output)["evaluated"] == 2


@pytest.fixture
def det_set(tmp_path) -> Path:
    """images/val + labels/val (YOLO) for the constant detector (one class-3 box, normalized
    [24, 24, 88, 88] on 128 x 128 = cx 0.4375, w 0.5): a perfect match, a miss, a label
    with class 99, a bad label file, an image without labels and labels without an image."""
    root = tmp_path / "det"
    img, lbl = root / "images" / "val", root / "labels" / "val"
    lbl.mkdir(parents=True)
    for stem in ("a", "b", "c", "d", "e"):
        colour_image(img / f"{stem}.png", "green", size=(128, 128))
    hit = "3 0.4375 0.4375 0.5 0.5\n"
    (lbl / "a.txt").write_text(hit)
    (lbl / "b.txt").write_text(hit + "5 0.5 0.5 0.2 0.2\n")  # class 5 never detected
    (lbl / "c.txt").write_text(hit + "99 0.5 0.5 0.1 0.1\n")  # outside 0..79: dropped
    (lbl / "d.txt").write_text("3 0.5 0.5\n")  # bad line: the image is left out
    (lbl / "orphan.txt").write_text(hit)
    (root / "names.txt").write_text("".join(f"c{i}\n" for i in range(80)))
    return root


def test_eval_detection_counts_every_mismatch(tmp_path, det_set):
    model = constant_detector(tmp_path / "det.onnx", cls=3)
    result = evaluate(model, det_set)
    assert result.task == "detect" and result.evaluated == 3
    # class 3: 3 boxes, 3 hits -> AP 1; class 5: 1 box, no detection -> AP 0
    assert result.metrics["map50"] == pytest.approx(0.5)
    assert result.metrics["map50_95"] == pytest.approx(0.5)
    kinds = {(Path(b.path).name, b.kind) for b in result.bad}
    assert kinds == {
        ("e.png", "unlabelled"),
        ("orphan.txt", "label without image"),
        ("c.txt", "bad label"),
        ("d.txt", "bad label"),
    }
    d = result.to_dict()
    assert d["detection"]["ap50_per_class"] == {"c3": 1.0, "c5": 0.0}
    r = invoke("eval", model, det_set)
    assert r.exit_code == 0
    assert "50.00 %" in r.output and "orphan.txt" in r.output


def test_eval_user_errors_exit_2(tmp_path, cls_set, det_set):
    model = colour_classifier(tmp_path / "colour.onnx")
    r = invoke("eval", model, tmp_path / "nope")
    assert r.exit_code == 2 and r.output.startswith("error:")
    r = invoke("eval", tmp_path / "missing.onnx", cls_set)
    assert r.exit_code == 2 and "missing.onnx" in r.output
    (tmp_path / "plain").mkdir()
    r = invoke("eval", model, tmp_path / "plain")
    assert r.exit_code == 2 and "labels.tsv" in r.output
    r = invoke("eval", model, det_set)  # a classifier on a detection set
    assert r.exit_code == 2 and "look like classify" in r.output
    r = invoke("eval", model, cls_set, "--task", "detect")
    assert r.exit_code == 2 and "classify dataset" in r.output
    assert dataset_task(cls_set) == "classify" and dataset_task(det_set) == "detect"
    with pytest.raises(InputError, match="limit"):
        evaluate(model, cls_set, limit=0)


@pytest.mark.needs_data
@pytest.mark.slow
@pytest.mark.parametrize(
    ("model_file", "dataset", "count", "metric", "expected", "tolerance"),
    [
        # SOURCES.md: top-1 77.80 % on the 500 images (within 0.5 pt) on a VNNI CPU; the figure
        # of this CPU's ORT kernels otherwise (conftest.shufflenet_qdq_top1)
        pytest.param(
            "shufflenet-v2-12-qdq.onnx", "imagenet-sample", 500, "top1", None, 0.5, id="shufflenet"
        ),
        # SOURCES.md: mAP@0.5 52.06 % on the 64 images (within 1.5 pt)
        pytest.param("yolox_nano.onnx", "coco-sample", 64, "map50", 52.06, 1.5, id="yolox"),
    ],
)
def test_eval_reference_accuracy(
    shared_data, model_file, dataset, count, metric, expected, tolerance
):
    """The published accuracy of the shared models on the shared samples (SOURCES.md)."""
    model = shared_data / "models" / model_file
    r = invoke("eval", model, shared_data / dataset, "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["evaluated"] == count and d["bad_count"] == 0
    if expected is None:
        expected = shufflenet_qdq_top1()
    assert abs(100 * d["metrics"][metric] - expected) <= tolerance
    if metric == "top1":
        assert d["metrics"]["top5"] >= d["metrics"]["top1"]
    else:
        assert 0 < d["metrics"]["map50_95"] < d["metrics"]["map50"]
        assert "person" in d["detection"]["ap50_per_class"]
