"""The end-to-end pipeline: task/preset detection, order, bad files, batching modes, threads."""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from onnxfit.apps.pipeline import Pipeline, run_images
from onnxfit.apps.results import collect_images
from onnxfit.data.model_info import describe_model, guess_task
from onnxfit.errors import InputError, ModelLoadError
from pipeline_util import (
    CLASS_OF,
    NAMES,
    colour_classifier,
    colour_image,
    constant_detector,
    corrupt_jpeg,
    huge_png_header,
)

pytestmark = pytest.mark.timeout(120)


def spec(name: str, shape: list, dtype=np.float32) -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=tuple(shape), dtype=np.dtype(dtype))


def pipeline_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in ("onnxfit-feeder", "onnxfit-infer")]


# ------------------------------------------------------------------ task and preset detection
@pytest.mark.parametrize(
    ("outputs", "expected"),
    [
        ([[1, 1000]], ("classify", "softmax", 1000)),
        ([["batch", 1000, 1, 1]], ("classify", "softmax", 1000)),
        ([[1, 3549, 85]], ("detect", "yolox", 80)),
        ([["b", 255, 13, 13], ["b", 255, 26, 26]], ("detect", "yolov3", 80)),
        ([[1, 24, 13, 13], [1, 24, 26, 26]], ("detect", "yolov3", 3)),
        ([[1, 10, 10, 10]], None),
        ([[1, 255, 13, 13], [1, 24, 26, 26]], None),  # heads disagree on the classes
    ],
)
def test_guess_task(outputs, expected):
    assert guess_task(outputs) == expected


def test_describe_model_presets():
    cls = describe_model([spec("input", [1, 3, 224, 224])], [spec("output", [1, 1000])])
    assert (cls.task, cls.preset.name, cls.fixed_batch, cls.num_classes) == (
        "classify",
        "imagenet",
        1,
        1000,
    )
    yolox = describe_model([spec("images", [1, 3, 416, 416])], [spec("output", [1, 3549, 85])])
    assert (yolox.decoder, yolox.preset.name, yolox.preset.size) == ("yolox", "yolox", (416, 416))
    heads = [spec("out13", ["batch", 255, 13, 13]), spec("out26", ["batch", 255, 26, 26])]
    v3 = describe_model([spec("input", ["batch", 3, 416, 416])], heads)
    assert (v3.decoder, v3.preset.name, v3.fixed_batch) == ("yolov3", "yolov3-tiny", None)
    # a classifier with a detector-sized input keeps the classification preprocessing
    big = describe_model([spec("x", ["n", 3, 384, 384])], [spec("y", ["n", 10])])
    assert (big.preset.name, big.preset.size, big.preset.mode) == ("imagenet", (384, 384), "crop")
    # a detector with a small input keeps the letterbox
    small = describe_model([spec("x", ["n", 3, 64, 64])], [spec("y", ["n", 84, 85])])
    assert (small.preset.name, small.preset.size) == ("yolox", (64, 64))
    # an explicit preset wins and is resized to the input
    given = describe_model(
        [spec("x", [1, 3, 320, 320])], [spec("y", [1, 2100, 85])], preset="yolov3-tiny"
    )
    assert (given.preset.name, given.preset.size) == ("yolov3-tiny", (320, 320))
    # symbolic H, W: the task's preset at its own size
    sym = describe_model([spec("x", ["n", 3, "h", "w"])], [spec("y", ["n", 1000])])
    assert (sym.preset.name, sym.preset.size) == ("imagenet", (224, 224))


def test_describe_model_refusals():
    out = [spec("y", [1, 1000])]
    with pytest.raises(InputError, match="2 inputs"):
        describe_model([spec("a", [1, 3, 8, 8]), spec("b", [1, 3, 8, 8])], out)
    with pytest.raises(InputError, match=r"\[N, 3, H, W\]"):
        describe_model([spec("x", [1, 224, 224, 3])], out)
    with pytest.raises(InputError, match="uint8"):
        describe_model([spec("x", [1, 3, 224, 224], np.uint8)], out)
    with pytest.raises(InputError, match="look like classify"):
        describe_model([spec("x", [1, 3, 224, 224])], out, task="detect")
    with pytest.raises(InputError, match="cannot tell the task") as exc:
        describe_model([spec("x", [1, 3, 224, 224])], [spec("y", [1, 5, 5, 5])])
    assert exc.value.hint and "--task" in exc.value.hint


# ---------------------------------------------------------------------------- input collection
def test_collect_images_recurses_sorted_and_reports_skips(tmp_path):
    colour_image(tmp_path / "b.png", "red")
    colour_image(tmp_path / "sub" / "a.png", "green")
    colour_image(tmp_path / "a.png", "blue")
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    extra = colour_image(tmp_path.parent / f"{tmp_path.name}-x.png", "red")
    paths, bad = collect_images([extra, tmp_path])
    assert paths == [extra, tmp_path / "a.png", tmp_path / "b.png", tmp_path / "sub" / "a.png"]
    assert {(Path(b.path).name, b.kind) for b in bad} == {
        ("notes.txt", "not an image"),
        (".hidden.png", "not an image"),
    }


def test_collect_images_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no such file or folder"):
        collect_images([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        collect_images([tmp_path / "empty"])
    # a folder that exists but cannot be listed is reported, not fatal
    locked = tmp_path / "locked"
    locked.mkdir()
    good = colour_image(tmp_path / "ok.png", "red")
    import onnxfit.data.files as files

    real = files.os.scandir

    def scandir(p):
        if Path(p) == locked:
            raise PermissionError(13, "Permission denied")
        return real(p)

    monkeypatch.setattr(files.os, "scandir", scandir)
    paths, bad = collect_images([good, locked])
    assert paths == [good]
    assert [(b.path, b.kind) for b in bad] == [(str(locked), "unreadable folder")]
    assert "Permission denied" in bad[0].reason


# ------------------------------------------------------------------------------ the pipeline
@pytest.fixture
def classifier(tmp_path) -> Path:
    return colour_classifier(tmp_path / "colour.onnx")


def make_images(folder: Path, colours: list[str]) -> list[Path]:
    return [colour_image(folder / f"{i:02d}_{c}.png", c) for i, c in enumerate(colours)]


@pytest.mark.parametrize("batch", [1, 2, 3, "auto"])
def test_results_in_order_with_bad_files_in_place(tmp_path, classifier, batch):
    colours = ["red", "green", "blue", "blue", "red", "green", "red"]
    paths = make_images(tmp_path / "imgs", colours)
    corrupt = corrupt_jpeg(tmp_path / "imgs" / "03a_corrupt.jpg")
    empty = tmp_path / "imgs" / "05a_empty.png"
    empty.write_bytes(b"")
    huge = huge_png_header(tmp_path / "imgs" / "06a_huge.png")
    order = sorted([*paths, corrupt, empty, huge])
    result = run_images(classifier, [tmp_path / "imgs"], labels=NAMES, batch=batch, top_k=2)
    assert [r.path for r in result.results] == [str(p) for p in order]
    assert [r.index for r in result.results] == list(range(len(order)))
    by_path = {r.path: r for r in result.results}
    for p, c in zip(paths, colours, strict=True):
        res = by_path[str(p)]
        assert res.error is None and res.classification is not None
        assert res.classification.indices[0] == CLASS_OF[c]
        assert res.to_dict()["top_k"][0]["name"] == c
        assert len(res.classification.indices) == 2
    assert "truncated" in by_path[str(corrupt)].error
    assert "empty" in by_path[str(empty)].error
    assert "limit" in by_path[str(huge)].error
    assert result.stats.images == 10 and result.stats.failed == 3 and result.ok == 7
    assert sorted(b.path for b in result.bad) == sorted(map(str, (corrupt, empty, huge)))
    assert {b.kind for b in result.bad} == {"unreadable image"}
    assert not pipeline_threads()


def test_fixed_batch_models(tmp_path):
    colours = ["red", "green", "blue", "red", "green"]
    paths = make_images(tmp_path / "imgs", colours)
    want = [CLASS_OF[c] for c in colours]
    one = colour_classifier(tmp_path / "b1.onnx", batch=1)
    with Pipeline(one, batch=4) as pipe:
        assert (pipe.batch_size, pipe.chunk) == (1, 4)
        got = [r.classification.indices[0] for r in pipe.results(paths)]
        assert pipe.stats.runs == 2  # chunks; 5 session runs inside them
    assert got == want
    four = colour_classifier(tmp_path / "b4.onnx", batch=4)
    with Pipeline(four, batch=2) as pipe:  # the model's fixed batch wins; last chunk padded
        assert (pipe.batch_size, pipe.chunk) == (4, 4)
        assert [r.classification.indices[0] for r in pipe.results(paths)] == want


def test_auto_batch_measures(tmp_path, classifier):
    with Pipeline(classifier, batch="auto") as pipe:
        assert pipe.tuning is not None
        assert pipe.batch_size == pipe.tuning.chosen >= 1
        assert pipe.tuning.measurements[0].batch == 1


def test_detection_boxes_in_original_pixels(tmp_path):
    model = constant_detector(tmp_path / "det.onnx", cls=3)
    img = colour_image(tmp_path / "square.png", "red", size=(128, 128))
    wide = colour_image(tmp_path / "wide.png", "red", size=(256, 128))
    names = [f"c{i}" for i in range(80)]
    result = run_images(model, [img, wide], labels=names, score_threshold=0.5)
    assert result.info.decoder == "yolox" and result.info.preset.size == (64, 64)
    square, wide_res = result.results
    # network box [12, 12, 44, 44]; letterbox r = 0.5 (square) / 0.25 (wide), top-left
    assert square.to_dict()["boxes"] == [[24.0, 24.0, 88.0, 88.0, 0.72, 3, "c3"]]
    assert wide_res.to_dict()["boxes"] == [[48.0, 48.0, 176.0, 128.0, 0.72, 3, "c3"]]
    # above every score: no boxes, still one result per image
    empty = run_images(model, [img], score_threshold=0.9)
    assert empty.results[0].to_dict()["boxes"] == []


def test_yolov3_heads_decode_path(tmp_path, zoo_yolov3_tiny):
    imgs = [colour_image(tmp_path / f"{i}.png", c, size=(96, 64)) for i, c in enumerate(NAMES)]
    with Pipeline(zoo_yolov3_tiny, batch=2, score_threshold=0.9, top_k=1) as pipe:
        assert (pipe.info.decoder, pipe.info.preset.name) == ("yolov3", "yolov3-tiny")
        results = list(pipe.results(imgs))
    assert [r.error for r in results] == [None] * 3
    for r in results:  # boxes clipped to the 96 x 64 originals
        boxes = np.asarray(r.detections.boxes)
        assert len(boxes) > 0
        assert boxes[:, 0::2].min() >= 0 and boxes[:, 0::2].max() <= 96
        assert boxes[:, 1::2].min() >= 0 and boxes[:, 1::2].max() <= 64


def test_early_stop_joins_threads(tmp_path, classifier):
    paths = make_images(tmp_path / "imgs", ["red"] * 12)
    with Pipeline(classifier, batch=2) as pipe:
        it = pipe.results(paths)
        first = next(it)
        assert first.index == 0 and pipeline_threads()
        it.close()
        assert not pipeline_threads()
        # the pipeline is reusable after an early stop
        assert len(list(pipe.results(paths[:3]))) == 3


def test_inference_error_is_raised_and_threads_end(tmp_path, classifier):
    paths = make_images(tmp_path / "imgs", ["red", "green", "blue", "red"])
    with Pipeline(classifier, batch=2) as pipe:

        def boom(feeds):
            raise RuntimeError("device lost")

        pipe.session.run = boom  # type: ignore[method-assign]
        with pytest.raises(RuntimeError, match="device lost"):
            list(pipe.results(paths))
    assert not pipeline_threads()


def test_bad_options_and_model(tmp_path, classifier):
    with pytest.raises(InputError, match="top-k"):
        Pipeline(classifier, top_k=0)
    with pytest.raises(InputError, match="batch"):
        Pipeline(classifier, batch=0)
    with pytest.raises(InputError, match="3 classes"):
        Pipeline(classifier, labels=["a", "b"])
    with pytest.raises(ModelLoadError):
        Pipeline(tmp_path / "missing.onnx")


# ------------------------------------------------------------------------------ real models
@pytest.mark.needs_data
def test_real_classifier_and_detector(shared_data):
    models, imagenet = shared_data / "models", shared_data / "imagenet-sample"
    tench = imagenet / "images" / "n01440764_tench.JPEG"
    res = run_images(
        models / "shufflenet-v2-12-qdq.onnx", [tench], labels=imagenet / "synset.txt"
    ).results[0]
    assert res.classification.indices[0] == 0
    assert res.to_dict()["top_k"][0]["name"].startswith("tench")
    coco = shared_data / "coco-sample"
    img = coco / "images" / "val2017" / "000000000785.jpg"
    det = run_images(
        models / "yolox_nano.onnx", [img], labels=coco / "coco80_names.txt", score_threshold=0.3
    ).results[0]
    names = {b[6] for b in det.to_dict()["boxes"]}
    assert names == {"person", "skis"}  # SOURCES.md: person, skis at score 0.3
    w, h = det.size
    boxes = det.detections.boxes
    assert boxes[:, 0::2].max() <= w and boxes[:, 1::2].max() <= h


def test_split_cores_shares_cpu_between_stages(monkeypatch):
    import onnxruntime as ort

    import onnxfit.targets
    from onnxfit.data.model_info import split_cores

    cpu = SimpleNamespace(providers=("CPUExecutionProvider",), worker_cores=8)
    gpu = SimpleNamespace(
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"), worker_cores=8
    )
    monkeypatch.setattr(onnxfit.targets, "get_target", lambda t: gpu if t == "gpu" else cpu)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4})
    assert split_cores("cpu") == (3, 2)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0})
    assert split_cores("cpu") == (1, 1)
    # a GPU provider runs the model: both keep their own defaults
    cuda = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: cuda)
    assert split_cores("gpu") == (None, None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    assert split_cores("gpu") == (1, 1)  # CUDA missing: the CPU runs it
