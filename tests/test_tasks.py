"""Tasks: top-k, accuracy, labels; YOLO decodes, NMS, mAP on hand-computed cases; the
SOURCES.md reference figures reproduced with onnxruntime on the real data."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import shufflenet_qdq_top1
from onnxfit.data.detection import YOLOV3_TINY_ANCHORS
from onnxfit.data.images import ImageMeta, Preprocessor, list_images
from onnxfit.data.metrics import DetectionEvaluator, average_precision, read_yolo_labels
from onnxfit.data.tasks import (
    Detections,
    batched_nms,
    box_iou,
    classify,
    decode_yolov3_tiny,
    decode_yolox,
    detect,
    labels_for,
    nms,
    read_class_names,
    read_labels_tsv,
    softmax,
    topk,
    topk_accuracy,
)
from onnxfit.errors import InputError

pytestmark = pytest.mark.timeout(120)


# -- classification ----------------------------------------------------------------------------
def test_softmax_and_topk() -> None:
    x = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, -1.0, 5.0, 1.0]], np.float32)
    p = softmax(x)
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-6)
    idx, vals = topk(x, 3)
    assert idx.tolist() == [[1, 3, 2], [2, 3, 0]]  # tie 3.0 / 3.0: lower index first
    assert vals.tolist() == [[3.0, 3.0, 2.0], [5.0, 1.0, 0.0]]
    idx1, _ = topk(x[0], 10)  # k clipped to C
    assert idx1.tolist() == [1, 3, 2, 0]
    with pytest.raises(InputError):
        topk(x, 0)


def test_topk_accuracy_hand_computed() -> None:
    logits = np.array(
        [[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.1, 0.3]], np.float32
    )
    labels = [1, 1, 0, 2]
    acc = topk_accuracy(logits, labels, ks=(1, 2, 3))
    # top-1 hits: row 0 only; top-2: rows 0, 1, 3; top-3: all
    assert acc == {1: 0.25, 2: 0.75, 3: 1.0}
    with pytest.raises(InputError):
        topk_accuracy(logits, [1, 2])
    with pytest.raises(InputError):
        topk_accuracy(logits, [1, 2, 3, 4])


def test_classify_with_names(tmp_path: Path) -> None:
    synset = tmp_path / "synset.txt"
    synset.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\nn01484850 shark\n\n")
    names = read_class_names(synset)
    assert names == ["tench, Tinca tinca", "goldfish", "shark"]
    res = classify(np.array([[0.0, 2.0, 1.0]]), k=2, names=names)
    assert res[0].indices == (1, 2) and res[0].names == ("goldfish", "shark")
    assert sum(softmax(np.array([0.0, 2.0, 1.0]))[[1, 2]]) == pytest.approx(
        sum(res[0].probabilities)
    )
    probs = classify(np.array([0.2, 0.5, 0.3]), k=1)  # already probabilities: kept as they are
    assert probs[0].probabilities == (pytest.approx(0.5),)
    assert probs[0].to_dict()["names"] is None
    with pytest.raises(InputError, match="3 class names"):
        classify(np.zeros((1, 4)), names=names)


def test_read_labels_tsv(tmp_path: Path) -> None:
    tsv = tmp_path / "labels.tsv"
    tsv.write_text(
        "file\twnid\tclass_index\tclass_name\nimages/a.JPEG\tn1\t3\tx\nb.JPEG\tn2\t7\ty\n"
    )
    labels = read_labels_tsv(tsv)
    assert labels == {"a.JPEG": 3, "b.JPEG": 7}
    idx, missing = labels_for([Path("x/a.JPEG"), "c.JPEG", "b.JPEG"], labels)
    assert idx.tolist() == [3, -1, 7] and missing == ["c.JPEG"]
    bad = tmp_path / "bad.tsv"
    bad.write_text("name\tlabel\na\t1\n")
    with pytest.raises(InputError, match="not a labels table"):
        read_labels_tsv(bad)
    bad.write_text("file\tclass_index\na\tseven\n")
    with pytest.raises(InputError, match=r"bad.tsv:2: bad class_index"):
        read_labels_tsv(bad)


# -- boxes and NMS -----------------------------------------------------------------------------
def test_box_iou_hand_computed() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], np.float32)
    b = np.array([[5, 5, 15, 15], [0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    iou = box_iou(a, b)
    np.testing.assert_allclose(iou[0], [25 / 175, 1.0, 0.0])
    np.testing.assert_allclose(iou[1], [0.0, 0.0, 0.0])


def test_nms_hand_computed() -> None:
    boxes = np.array(
        [
            [0, 0, 10, 10],  # 0: best
            [1, 1, 11, 11],  # 1: IoU with 0 = 81/119 = 0.68 -> suppressed
            [20, 20, 30, 30],  # 2: far away -> kept
            [0, 0, 10, 5],  # 3: IoU with 0 = 0.5 -> kept at 0.5, dropped at 0.45
        ],
        np.float32,
    )
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    assert nms(boxes, scores, 0.5).tolist() == [0, 2, 3]
    assert nms(boxes, scores, 0.45).tolist() == [0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [0, 1, 2, 3]
    # the same two overlapping boxes in different classes do not suppress each other
    assert sorted(batched_nms(boxes[:2], scores[:2], np.array([0, 1]), 0.45).tolist()) == [0, 1]
    assert batched_nms(boxes[:2], scores[:2], np.array([4, 4]), 0.45).tolist() == [0]
    assert nms(np.zeros((0, 4)), np.zeros(0)).tolist() == []


def test_batched_nms_equals_per_class_loop() -> None:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 300, (400, 2))
    wh = rng.uniform(5, 80, (400, 2))
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    classes = rng.integers(0, 5, 400)
    got = set(batched_nms(boxes, scores, classes, 0.45).tolist())
    want: set[int] = set()
    for c in range(5):
        ids = np.nonzero(classes == c)[0]
        want |= set(ids[nms(boxes[ids], scores[ids], 0.45)].tolist())
    assert got == want


# -- decodes -----------------------------------------------------------------------------------
def test_decode_yolox_hand_computed() -> None:
    out = np.zeros((3549, 85), np.float32)
    i = 3 * 52 + 2  # stride 8, grid x=2, y=3
    out[i, :4] = [0.5, 0.5, math.log(4.0), math.log(2.0)]
    out[i, 4] = 0.8
    out[i, 5 + 17] = 0.5
    j = 52 * 52 + 26 * 26 + 0  # stride 32, cell (0, 0)
    out[j, :4] = [0.0, 0.0, 0.0, 0.0]
    out[j, 4] = 1.0
    out[j, 5] = 0.9
    boxes, scores = decode_yolox(out[None])
    assert boxes.shape == (3549, 4) and scores.shape == (3549, 80)
    # center ((0.5 + 2) * 8, (0.5 + 3) * 8) = (20, 28); w = 4 * 8 = 32, h = 2 * 8 = 16
    np.testing.assert_allclose(boxes[i], [4, 20, 36, 36], rtol=1e-6)
    assert scores[i, 17] == pytest.approx(0.4)
    np.testing.assert_allclose(boxes[j], [-16, -16, 16, 16])
    dets = detect(boxes, scores, score_threshold=0.3)
    assert dets.classes.tolist() == [0, 17] and dets.scores.tolist() == pytest.approx([0.9, 0.4])
    with pytest.raises(InputError, match="expected \\[3549"):
        decode_yolox(np.zeros((100, 85)))


def test_decode_yolov3_tiny_hand_computed() -> None:
    c = 80
    coarse = np.full((3 * (5 + c), 13, 13), -20.0, np.float32)
    fine = np.full((3 * (5 + c), 26, 26), -20.0, np.float32)
    # coarse head, anchor 1 (135, 169), cell x=1, y=2: tx = ty = 0 -> sigmoid 0.5; tw = log 2
    a = 1
    coarse[a * 85 + 0, 2, 1] = 0.0
    coarse[a * 85 + 1, 2, 1] = 0.0
    coarse[a * 85 + 2, 2, 1] = math.log(2.0)
    coarse[a * 85 + 3, 2, 1] = 0.0
    coarse[a * 85 + 4, 2, 1] = 20.0  # objectness ~1
    coarse[a * 85 + 5 + 3, 2, 1] = 0.0  # class 3 -> sigmoid 0.5
    boxes, scores = decode_yolov3_tiny([fine[None], coarse[None]])  # any order
    assert boxes.shape == (3 * 13 * 13 + 3 * 26 * 26, 4) and scores.shape[1] == c
    k = a * 13 * 13 + 2 * 13 + 1
    cx, cy = 1.5 * 32, 2.5 * 32
    w, h = 2 * 135, 169
    np.testing.assert_allclose(boxes[k], [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1e-5)
    assert scores[k, 3] == pytest.approx(0.5, abs=1e-6)
    assert scores.max() == pytest.approx(0.5, abs=1e-6)
    assert YOLOV3_TINY_ANCHORS[1][0] == (10, 14)
    with pytest.raises(InputError):
        decode_yolov3_tiny([coarse])


def test_detect_undoes_letterbox_and_clips() -> None:
    boxes = np.array([[10, 60, 110, 160], [300, 300, 500, 500]], np.float32)
    scores = np.array([[0.9, 0.0], [0.0, 0.8]], np.float32)
    meta = ImageMeta("x.jpg", size=(400, 300), resized=(200, 150), scale=(0.5, 0.5), offset=(0, 50))
    dets = detect(boxes, scores, meta=meta)
    np.testing.assert_allclose(dets.boxes[0], [20, 20, 220, 220])
    np.testing.assert_allclose(dets.boxes[1], [400, 300, 400, 300])  # clipped to the image
    assert dets.to_dict(["cat", "dog"])["detections"][0]["name"] == "cat"
    single = detect(boxes, np.array([[0.9, 0.5], [0.1, 0.8]]), multi_label=False)
    assert single.classes.tolist() == [0, 1]
    multi = detect(boxes, np.array([[0.9, 0.5], [0.1, 0.8]]), multi_label=True)
    assert len(multi) == 4
    assert len(detect(boxes, scores, score_threshold=0.95)) == 0


# -- mAP ---------------------------------------------------------------------------------------
def _dets(rows: list[tuple[list[float], float, int]]) -> Detections:
    if not rows:
        return Detections.empty()
    return Detections(
        np.array([r[0] for r in rows], np.float32),
        np.array([r[1] for r in rows], np.float32),
        np.array([r[2] for r in rows], np.int64),
    )


def test_average_precision_all_point() -> None:
    # precision 1, .5, .667 at recall .5, .5, 1 -> envelope: .5 * 1 + .5 * .667
    ap = average_precision(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3]))
    assert ap == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert average_precision(np.array([]), np.array([])) == 0.0


def test_map_hand_computed() -> None:
    ev = DetectionEvaluator()
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    ev.add(
        _dets(
            [
                ([0, 0, 10, 10], 0.9, 0),  # TP
                ([50, 50, 60, 60], 0.8, 0),  # FP
                ([20, 20, 30, 30], 0.7, 0),  # TP
                ([0, 0, 10, 10], 0.6, 0),  # duplicate of a matched GT -> FP
                ([0, 0, 5, 5], 0.9, 7),  # class 7 has no ground truth: not averaged
            ]
        ),
        gt,
        np.array([0, 0]),
    )
    # class 2 has ground truth in a second image but no detection -> AP 0, averaged in
    ev.add(_dets([]), np.array([[0, 0, 4, 4]]), np.array([2]))
    r = ev.result()
    ap0 = 0.5 + 0.5 * 2 / 3
    assert r.ap[0][0] == pytest.approx(ap0)
    assert r.ap[2] == [0.0] * 10
    assert 7 not in r.ap
    assert r.classes_present == 2 and r.images == 2 and r.ground_truth == 3
    assert r.map50 == pytest.approx(ap0 / 2)
    assert r.map50_95 == pytest.approx(ap0 / 2)  # exact boxes: TP at every threshold
    assert r.to_dict()["ap50_per_class"]["0"] == pytest.approx(ap0)


def test_map_iou_thresholds() -> None:
    ev = DetectionEvaluator()
    # IoU = 60 / 100 = 0.6: TP at 0.50, 0.55, 0.60; FP at 0.65 .. 0.95
    ev.add(_dets([([0, 0, 6, 10], 0.9, 1)]), np.array([[0, 0, 10, 10]]), np.array([1]))
    r = ev.result()
    assert r.map50 == 1.0
    assert r.map50_95 == pytest.approx(0.3)


def test_map_perfect_and_greedy_best_iou() -> None:
    ev = DetectionEvaluator()
    gt = np.array([[0, 0, 10, 10], [4, 0, 14, 10]], np.float32)
    # one detection overlaps both GTs; it must take the better one (IoU 1 with GT 1)
    dets = _dets([([4, 0, 14, 10], 0.9, 0), ([0, 0, 10, 10], 0.8, 0)])
    ev.add(dets, gt, np.array([0, 0]))
    r = ev.result()
    assert r.map50 == 1.0 and r.map50_95 == 1.0


def test_read_yolo_labels(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("3 0.5 0.5 0.2 0.4\n\n0 0.1 0.1 0.2 0.2\n")
    boxes, classes = read_yolo_labels(f, (200, 100))
    np.testing.assert_allclose(boxes, [[80, 30, 120, 70], [0, 0, 40, 20]], rtol=1e-6)
    assert classes.tolist() == [3, 0]
    (tmp_path / "e.txt").write_text("")
    assert read_yolo_labels(tmp_path / "e.txt", (10, 10))[0].shape == (0, 4)
    f.write_text("3 0.5 0.5 0.2\n")
    with pytest.raises(InputError, match=r"a.txt:1"):
        read_yolo_labels(f, (10, 10))
    with pytest.raises(InputError, match="cannot read"):
        read_yolo_labels(tmp_path / "missing.txt", (10, 10))


# -- the SOURCES.md reference figures, with onnxruntime directly --------------------------------
def _session(path: Path):
    ort = pytest.importorskip("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


@pytest.mark.needs_data
@pytest.mark.slow
def test_reference_top1_shufflenet(shared_data: Path) -> None:
    """SOURCES.md: shufflenet-v2-12-qdq top-1 77.80 % on the 500 imagenet-sample images."""
    root = shared_data / "imagenet-sample"
    paths = list_images(root / "images")
    assert len(paths) == 500
    labels, missing = labels_for(paths, read_labels_tsv(root / "labels.tsv"))
    assert not missing
    names = read_class_names(root / "synset.txt")
    sess = _session(shared_data / "models" / "shufflenet-v2-12-qdq.onnx")
    logits = []
    with Preprocessor("imagenet") as pre:
        for i in range(0, len(paths), 50):
            x, _ = pre.batch(paths[i : i + 50])
            logits += [sess.run(None, {"input": row[None]})[0][0] for row in x]
    acc = topk_accuracy(np.stack(logits), labels, ks=(1, 5))
    assert abs(acc[1] * 100 - shufflenet_qdq_top1()) <= 0.5, acc  # 77.80 with VNNI
    assert classify(logits[0][None], names=names)[0].names[0].startswith("tench")


@pytest.mark.needs_data
@pytest.mark.slow
def test_reference_map_yolox_nano(shared_data: Path) -> None:
    """SOURCES.md: yolox_nano mAP@0.5 52.06 % on the 64 coco-sample images (per-class NMS at
    IoU 0.45, score threshold 0.01, all-point AP averaged over the classes present)."""
    root = shared_data / "coco-sample"
    paths = list_images(root / "images" / "val2017")
    assert len(paths) == 64
    sess = _session(shared_data / "models" / "yolox_nano.onnx")
    ev = DetectionEvaluator()
    with Preprocessor("yolox") as pre:
        for i in range(0, len(paths), 16):
            x, metas = pre.batch(paths[i : i + 16])
            for row, meta in zip(x, metas, strict=True):
                boxes, scores = decode_yolox(sess.run(None, {"images": row[None]})[0])
                dets = detect(boxes, scores, score_threshold=0.01, iou_threshold=0.45, meta=meta)
                label = root / "labels" / "val2017" / (Path(meta.path).stem + ".txt")
                ev.add(dets, *read_yolo_labels(label, meta.size))
    r = ev.result()
    assert abs(r.map50 * 100 - 52.06) <= 1.5, r.to_dict()
    assert 0.2 < r.map50_95 < r.map50
