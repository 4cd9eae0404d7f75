"""``onnxfit run`` through click's CliRunner: JSON lines, order, bad files, -o, --draw, --json."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from onnxfit.cli import main
from pipeline_util import (
    CLASS_OF,
    colour_classifier,
    colour_image,
    constant_detector,
    corrupt_jpeg,
    huge_png_header,
)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def folder(tmp_path) -> Path:
    """5 good images (one in a sub-folder) and 4 bad files, plus a text file."""
    root = tmp_path / "imgs"
    for i, c in enumerate(["red", "green", "blue", "green"]):
        colour_image(root / f"{i}_{c}.png", c)
    colour_image(root / "sub" / "9_red.jpg", "red")
    corrupt_jpeg(root / "1b_truncated.jpg")
    (root / "2b_empty.png").write_bytes(b"")
    (root / "3b_fake.jpg").write_text("not a jpeg at all")
    huge_png_header(root / "3c_huge.png")
    (root / "readme.txt").write_text("notes")
    return root


@pytest.fixture
def model(tmp_path) -> Path:
    return colour_classifier(tmp_path / "colour.onnx")


@pytest.fixture
def names(tmp_path) -> Path:
    p = tmp_path / "names.txt"
    p.write_text("red\ngreen\nblue\n")
    return p


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_run_writes_ordered_jsonl_and_counts_bad_files(tmp_path, folder, model, names):
    out = tmp_path / "res" / "results.jsonl"
    r = invoke("run", model, folder, "--labels", names, "-o", out, "--batch", "2", "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    expect = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".txt")
    assert [d["path"] for d in lines] == [str(p) for p in expect]
    good = [d for d in lines if "error" not in d]
    assert len(good) == 5
    for d in good:
        colour = Path(d["path"]).stem.split("_")[1]
        assert d["top_k"][0]["class"] == CLASS_OF[colour]
        assert d["top_k"][0]["name"] == colour
        assert (d["width"], d["height"]) == (48, 40)
        assert abs(sum(t["probability"] for t in d["top_k"]) - 1) < 1e-4
    errors = {Path(d["path"]).name: d["error"] for d in lines if "error" in d}
    assert set(errors) == {"1b_truncated.jpg", "2b_empty.png", "3b_fake.jpg", "3c_huge.png"}
    assert "truncated" in errors["1b_truncated.jpg"]
    assert "not an image" in errors["3b_fake.jpg"]
    summary = json.loads(r.output)
    assert summary["images"] == 9 and summary["ok"] == 5
    assert summary["bad_by_kind"] == {"unreadable image": 4, "not an image": 1}
    assert {b["path"] for b in summary["bad"]} >= {str(folder / "readme.txt")}
    assert summary["output"] == str(out)
    assert not list(out.parent.glob("results.jsonl*.partial"))


def test_run_table_lists_bad_inputs(tmp_path, folder, model):
    """Each bad file is named whole on one line (relative to the folder printed above the table),
    whatever the length of the temporary path."""
    out = tmp_path / "results.jsonl"
    r = invoke("run", model, folder, "-o", out)
    assert r.exit_code == 0
    assert "5 done, 4 unreadable, of 9" in r.output
    assert "5 input(s) not used" in r.output
    lines = r.output.splitlines()
    assert any(line.strip() == f"in {folder}{os.sep}" for line in lines)
    for name in ("1b_truncated.jpg", "2b_empty.png", "3b_fake.jpg", "3c_huge.png", "readme.txt"):
        assert any(name in line for line in lines), name


def test_run_lines_to_stdout_without_output(folder, model):
    r = CliRunner().invoke(main, ["run", str(model), str(folder / "0_red.png")])
    assert r.exit_code == 0, r.stderr
    (line,) = r.stdout.splitlines()
    d = json.loads(line)
    assert d["top_k"][0]["class"] == 0 and d["top_k"][0]["name"] is None
    assert "onnxfit run" in r.stderr  # the summary goes to stderr


def test_run_json_without_output_includes_results(folder, model):
    r = invoke("run", model, folder / "2_blue.png", folder / "0_red.png", "--json", "-k", "1")
    assert r.exit_code == 0
    d = json.loads(r.output)
    assert [x["top_k"][0]["class"] for x in d["results"]] == [2, 0]  # argument order kept
    assert all(len(x["top_k"]) == 1 for x in d["results"])


def test_run_draw_classification_and_detection(tmp_path, folder, model, names):
    drawn = tmp_path / "drawn"
    r = invoke("run", model, folder, "--labels", names, "--draw", drawn, "-o", tmp_path / "o.jsonl")
    assert r.exit_code == 0
    files = sorted(p.name for p in drawn.iterdir())
    assert files == ["0_red.jpg", "1_green.jpg", "2_blue.jpg", "3_green.jpg", "9_red.jpg"]
    with Image.open(drawn / "2_blue.jpg") as im:
        assert im.size == (48, 40)
        top = im.convert("RGB").getpixel((1, 1))
        assert top != (20, 20, 230)  # the label banner is drawn over the top-left corner
    det = constant_detector(tmp_path / "det.onnx", cls=3)
    img = colour_image(tmp_path / "sq.png", "blue", size=(128, 128))
    # same stem twice: the second drawing gets a suffix
    img2 = colour_image(tmp_path / "other" / "sq.png", "blue", size=(128, 128))
    r = invoke("run", det, img, img2, "--draw", drawn / "det", "--json")
    assert r.exit_code == 0
    assert sorted(p.name for p in (drawn / "det").iterdir()) == ["sq-1.jpg", "sq.jpg"]
    with Image.open(drawn / "det" / "sq.jpg") as im:
        px = im.convert("RGB").getpixel((24, 60))  # on the box's left edge [24, 24, 88, 88]
        assert abs(px[2] - 230) > 40 or abs(px[0] - 20) > 40


def test_run_errors_exit_2_and_write_nothing(tmp_path, folder, model):
    out = tmp_path / "never.jsonl"
    r = invoke("run", tmp_path / "missing.onnx", folder, "-o", out, "--draw", tmp_path / "d")
    assert r.exit_code == 2
    assert r.output.startswith("error:") and "missing.onnx" in r.output
    assert not out.exists() and not (tmp_path / "d").exists()
    r = invoke("run", model, tmp_path / "nope", "-o", out)
    assert r.exit_code == 2 and "no such file or folder" in r.output
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("x")
    r = invoke("run", model, empty)
    assert r.exit_code == 2 and "no image files" in r.output
    r = invoke("run", model, folder, "--task", "detect")
    assert r.exit_code == 2 and "look like classify" in r.output
    r = invoke("run", model, folder, "--batch", "lots")
    assert r.exit_code == 2
    assert not out.exists()


def test_run_aborted_run_leaves_no_output(tmp_path, folder, model, monkeypatch):
    import onnxfit.apps.pipeline as pipeline

    out = tmp_path / "o.jsonl"
    out.write_text("old\n")

    def boom(self, buf, n):
        raise RuntimeError("inference failed")

    monkeypatch.setattr(pipeline.Pipeline, "infer", boom)
    with pytest.raises(RuntimeError, match="inference failed"):
        invoke("run", model, folder, "-o", out, "--force")
    assert out.read_text() == "old\n"  # untouched
    assert not list(tmp_path.glob("o.jsonl*.partial"))


@pytest.mark.needs_data
def test_run_real_models(tmp_path, shared_data):
    imagenet, coco = shared_data / "imagenet-sample", shared_data / "coco-sample"
    imgs = sorted((imagenet / "images").glob("*.JPEG"))[:3]
    out = tmp_path / "cls.jsonl"
    model = shared_data / "models" / "shufflenet-v2-12-qdq.onnx"
    r = invoke("run", model, *imgs, "--labels", imagenet / "synset.txt", "-o", out)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [d["path"] for d in lines] == [str(p) for p in imgs]
    assert lines[0]["top_k"][0]["name"].startswith("tench")
    drawn = tmp_path / "drawn"
    img = coco / "images" / "val2017" / "000000000632.jpg"
    model = shared_data / "models" / "yolox_nano.onnx"
    names = coco / "coco80_names.txt"
    r = invoke("run", model, img, "--labels", names, "--draw", drawn, "--score-threshold", "0.3")
    assert r.exit_code == 0
    d = json.loads(r.output.splitlines()[0])
    # SOURCES.md at score 0.3: bed, chair, 2 potted plant, 2 book
    assert {b[6] for b in d["boxes"]} == {"bed", "chair", "potted plant", "book"}
    assert (drawn / "000000000632.jpg").is_file()
