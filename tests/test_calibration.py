"""onnxfit.data.calibration: readers over images / arrays / noise, and range collection."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh
from PIL import Image

from onnxfit import io
from onnxfit.data import calibration as cal
from onnxfit.errors import InputError
from onnxfit.passes import ranges as rg

F = TensorProto.FLOAT


def _conv_model(*, batch: int | str = "N", size: int = 224) -> ir.Model:
    """x [batch, 3, size, size] -> Conv 3x3 (4 ch) -> Relu -> y."""
    w = np.random.default_rng(1).standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "g",
        [oh.make_tensor_value_info("x", F, [batch, 3, size, size])],
        [oh.make_tensor_value_info("y", F, [batch, 4, size, size])],
        [nh.from_array(w, "w")],
    )
    return io.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))


def _images(folder: Path, n: int, rng: np.random.Generator) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        arr = rng.integers(0, 255, (60 + i, 80, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"im{i:02d}.png")
    return folder


# ----------------------------------------------------------------------------- readers


def test_feed_reader_rewind_and_range() -> None:
    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(5)]
    reader = cal.CalibrationData(feeds, "t").reader()
    assert len(reader) == 5
    assert [int(f["x"][0, 0]) for f in reader] == [0, 1, 2, 3, 4]
    assert reader.get_next() is None
    reader.rewind()
    assert int(reader.get_next()["x"][0, 0]) == 0
    reader.set_range(start_index=2, end_index=4)
    assert [int(f["x"][0, 0]) for f in reader] == [2, 3]


def test_from_images_skips_unreadable_and_counts_them(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    folder = _images(tmp_path / "cal", 3, rng)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "empty.png").write_bytes(b"")
    data = cal.from_images(folder, input_name="x", input_shape=["N", 3, 224, 224])
    assert data.preset == "imagenet" and not data.synthetic
    assert len(data) == 3 and data.samples == 3
    assert data.feeds[0]["x"].shape == (1, 3, 224, 224)
    assert data.feeds[0]["x"].dtype == np.float32
    skipped = {Path(s.path).name: s.reason for s in data.skipped}
    assert set(skipped) == {"broken.jpg", "empty.png"} and all(skipped.values())
    d = data.to_dict()
    assert d["samples"] == 3 and len(d["skipped"]) == 2


def test_from_images_limit_and_batching(tmp_path: Path, rng: np.random.Generator) -> None:
    folder = _images(tmp_path / "cal", 7, rng)
    data = cal.from_images(folder, input_name="x", preset="imagenet", limit=6, batch=4)
    assert [f["x"].shape[0] for f in data.feeds] == [4, 2] and data.samples == 6
    fixed = cal.from_images(folder, input_name="x", input_shape=[2, 3, 224, 224], limit=5)
    assert [f["x"].shape[0] for f in fixed.feeds] == [2, 2]  # a fixed batch takes full batches
    small = cal.from_images(folder, input_name="x", input_shape=[1, 3, 64, 64], limit=1)
    assert small.feeds[0]["x"].shape == (1, 3, 64, 64)  # the preset follows the input size


def test_from_images_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files") as exc:
        cal.from_images(empty, input_name="x", preset="imagenet")
    assert exc.value.hint
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ("a.jpg", "b.png"):
        (bad / name).write_bytes(b"garbage")
    with pytest.raises(InputError, match="none of the 2 images") as exc:
        cal.from_images(bad, input_name="x", preset="imagenet")
    assert exc.value.hint
    with pytest.raises(InputError, match="not found"):
        cal.from_images(tmp_path / "missing", input_name="x", preset="imagenet")


def test_from_arrays_npy_npz_and_folders(tmp_path: Path, rng: np.random.Generator) -> None:
    batch = rng.standard_normal((5, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", batch)
    data = cal.from_arrays(tmp_path / "x.npy", inputs=[("x", ["N", 3, 8, 8])], limit=4)
    assert len(data) == 4 and data.feeds[3]["x"].shape == (1, 3, 8, 8)
    np.testing.assert_array_equal(data.feeds[1]["x"][0], batch[1])
    # a .npz per sample (rank one lower), two inputs, in a folder with a broken file
    folder = tmp_path / "npz"
    folder.mkdir()
    for i in range(2):
        np.savez(folder / f"s{i}.npz", a=np.full((2,), i, np.float32), b=np.zeros((1, 3)))
    np.savez(folder / "zz_bad.npz", a=np.zeros((2,), np.float32))  # lacks "b"
    two = cal.from_arrays(folder, inputs=[("a", ["N", 2]), ("b", ["N", 1, 3])])
    assert len(two) == 2 and two.feeds[1]["a"].tolist() == [[1.0, 1.0]]
    assert two.feeds[0]["b"].shape == (1, 1, 3)
    assert len(two.skipped) == 1 and "missing arrays" in two.skipped[0].reason
    with pytest.raises(InputError, match="no usable calibration arrays"):
        cal.from_arrays(folder / "zz_bad.npz", inputs=[("a", ["N", 2]), ("b", ["N", 1, 3])])


def test_synthetic_inputs_seeded_and_flagged() -> None:
    model = _conv_model(size=16)
    a = cal.synthetic_inputs(model, 3, seed=7, batch=2)
    b = cal.synthetic_inputs(model, 3, seed=7, batch=2)
    assert a.synthetic and len(a) == 3 and a.feeds[0]["x"].shape == (2, 3, 16, 16)
    np.testing.assert_array_equal(a.feeds[2]["x"], b.feeds[2]["x"])
    assert not np.array_equal(a.feeds[0]["x"], cal.synthetic_inputs(model, 1, seed=8).feeds[0]["x"])
    with pytest.raises(InputError, match="unknown dimension 2"):
        cal.synthetic_inputs(_conv_model(size="S"), 1)  # type: ignore[arg-type]


def test_load_calibration_dispatch(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _conv_model()
    assert cal.load_calibration(model, None).synthetic
    folder = _images(tmp_path / "imgs", 2, rng)
    assert cal.load_calibration(model, folder).preset == "imagenet"
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 224, 224), np.float32))
    assert len(cal.load_calibration(model, tmp_path / "x.npy")) == 2


# ----------------------------------------------------------------------------- ranges


def test_collect_ranges_minmax_exact_and_chunk_independent(
    rng: np.random.Generator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    model = _conv_model(size=8)
    feeds = [
        {"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32) * (i + 1)} for i in range(5)
    ]
    data = cal.CalibrationData(feeds, "t")
    whole = rg.collect_ranges(model, data, chunk=100)
    parts = rg.collect_ranges(model, data, chunk=2)
    lo = min(float(f["x"].min()) for f in feeds)
    hi = max(float(f["x"].max()) for f in feeds)
    assert whole.tensors["x"] == pytest.approx((lo, hi))
    assert whole.samples == parts.samples == 5
    for name, (a, b) in whole.tensors.items():
        assert parts.tensors[name] == pytest.approx((a, b)), name
    assert whole.to_dict()["method"] == "minmax" and not whole.synthetic
    assert list(scratch.iterdir()) == []  # scratch files removed


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_collect_ranges_histogram_methods_inside_minmax(
    method: rg.Method, rng: np.random.Generator, capsys: pytest.CaptureFixture[str]
) -> None:
    model = _conv_model(size=8)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(6)]
    data = cal.CalibrationData(feeds, "t")
    mm = rg.collect_ranges(model, data)
    capsys.readouterr()
    got = rg.collect_ranges(model, data, method=method, chunk=4)
    assert capsys.readouterr().out == ""  # ORT's progress prints must not reach stdout
    assert got.method == method and set(got.tensors) == set(mm.tensors)
    for name, (lo, hi) in got.tensors.items():
        assert mm.tensors[name][0] - 1e-6 <= lo <= hi <= mm.tensors[name][1] + 1e-6, name


def test_collect_ranges_errors() -> None:
    model = _conv_model(size=8)
    with pytest.raises(InputError, match="empty"):
        rg.collect_ranges(model, cal.CalibrationData([], "t"))
    with pytest.raises(InputError, match="unknown calibration method"):
        rg.collect_ranges(model, cal.CalibrationData([], "t"), method="kl")  # type: ignore[arg-type]
