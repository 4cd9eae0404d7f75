"""Image preprocessing: equality with a plain PIL reference, presets, bad files, the pool."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxfit.data.images import (
    PRESETS,
    ImageError,
    ImageMeta,
    Preprocessor,
    Preset,
    get_preset,
    guess_preset,
    list_images,
    open_image,
    preprocess,
    preprocess_into,
    preprocess_with_meta,
    scan_images,
)
from onnxfit.errors import InputError
from onnxfit.targets import get_target

pytestmark = pytest.mark.timeout(60)

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def reference_imagenet(path: Path) -> np.ndarray:
    """The straightforward reference: PIL decode, full bilinear resize (shorter side 256, longer
    side rounded), center crop 224, /255, mean/std, CHW — one step at a time."""
    im = Image.open(path).convert("RGB")
    w, h = im.size
    ow, oh = (256, round(256 * h / w)) if w <= h else (round(256 * w / h), 256)
    im = im.resize((ow, oh), Image.Resampling.BILINEAR)
    top, left = round((oh - 224) / 2), round((ow - 224) / 2)
    im = im.crop((left, top, left + 224, top + 224))
    x = np.asarray(im, np.float32) / 255.0
    return ((x - MEAN) / STD).transpose(2, 0, 1)


def reference_letterbox(path: Path, *, center: bool, pad: int, bgr: bool) -> np.ndarray:
    im = Image.open(path).convert("RGB")
    w, h = im.size
    r = min(416 / w, 416 / h)
    nw, nh = int(w * r), int(h * r)
    im = im.resize((nw, nh), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (416, 416), (pad, pad, pad))
    canvas.paste(im, (((416 - nw) // 2, (416 - nh) // 2) if center else (0, 0)))
    x = np.asarray(canvas, np.float32)
    if bgr:
        x = x[:, :, ::-1]
    return x.transpose(2, 0, 1)


def _photo(path: Path, size: tuple[int, int], seed: int, **save: object) -> Path:
    """A photo-like test image: smooth gradients + seeded noise + sharp edges."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [128 + 100 * np.sin(xx / 17 + k) * np.cos(yy / 23 - k) for k in range(3)], axis=-1
    )
    base += rng.normal(0, 12, base.shape)
    base[(xx // 40 + yy // 40) % 2 == 0] += 40
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, **save)
    return path


def _grey_levels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|a - b| of two imagenet-normalized tensors, in 0-255 grey levels."""
    return np.abs(a - b) * STD[:, None, None] * 255.0


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("photos")
    sizes = [(500, 375), (375, 500), (640, 480), (300, 300), (1024, 683), (260, 900)]
    out = [_photo(d / f"p{i}.jpg", s, i, quality=90) for i, s in enumerate(sizes)]
    out.append(_photo(d / "png.png", (333, 250), 99))
    return out


# Tolerance, stated: resizing only the crop region (resize(box=)) instead of resize-then-crop
# moves a few pixels by one grey level (Pillow's fixed-point coefficients round differently).
MAX_GREY_DELTA = 1.0 + 1e-3
MEAN_GREY_DELTA = 0.05


def test_imagenet_matches_pil_reference(photos: list[Path]) -> None:
    for p in photos:
        ours = preprocess(p, "imagenet")
        assert ours.shape == (3, 224, 224) and ours.dtype == np.float32
        d = _grey_levels(ours, reference_imagenet(p))
        assert d.max() <= MAX_GREY_DELTA, p
        assert d.mean() <= MEAN_GREY_DELTA, p


@pytest.mark.needs_data
def test_imagenet_matches_pil_reference_on_real_photos(shared_data: Path) -> None:
    paths = list_images(shared_data / "imagenet-sample" / "images")[::50]  # 10 photos
    d = np.stack([_grey_levels(preprocess(p, "imagenet"), reference_imagenet(p)) for p in paths])
    assert d.max() <= MAX_GREY_DELTA
    assert d.mean() <= MEAN_GREY_DELTA


@pytest.mark.parametrize("name", ["yolox", "yolov3-tiny"])
def test_letterbox_matches_pil_reference(photos: list[Path], name: str) -> None:
    pre = PRESETS[name]
    for p in photos:
        ours, meta = preprocess_with_meta(p, name)
        ref = reference_letterbox(
            p,
            center=pre.placement == "center",
            pad=int(pre.pad_value),
            bgr=pre.channel_order == "BGR",
        )
        np.testing.assert_allclose(ours, ref * pre.scale, atol=1e-5)
        w, h = meta.size
        assert meta.size == Image.open(p).size
        r = min(416 / w, 416 / h)
        assert meta.scale == (r, r)  # YOLOX maps boxes back by dividing by r


def test_yolox_layout_pad_and_bgr(tmp_path: Path) -> None:
    p = tmp_path / "red.png"
    Image.new("RGB", (200, 100), (255, 10, 0)).save(p)
    x, meta = preprocess_with_meta(p, "yolox")
    assert meta.resized == (416, 208) and meta.offset == (0.0, 0.0)
    assert x[2, 0, 0] == 255 and x[1, 0, 0] == 10 and x[0, 0, 0] == 0  # BGR, 0-255
    assert (x[:, 208:, :] == 114).all()  # pad below, image at the top-left
    y, meta3 = preprocess_with_meta(p, "yolov3-tiny")
    assert meta3.offset == (0.0, 104.0)  # centered
    assert y[0, 200, 10] == pytest.approx(1.0) and y[2, 200, 10] == 0.0  # RGB, 0-1
    assert y[:, :104, :] == pytest.approx(128 / 255)


def test_meta_maps_boxes_back(tmp_path: Path) -> None:
    p = _photo(tmp_path / "a.jpg", (640, 480), 1)
    _, meta = preprocess_with_meta(p, "yolov3-tiny")
    box = np.array([[10.0, 20.0, 300.0, 400.0]], np.float32)
    sx, sy = meta.scale
    ox, oy = meta.offset
    net = box * np.array([sx, sy, sx, sy]) + np.array([ox, oy, ox, oy])
    np.testing.assert_allclose(meta.to_original(net), box, rtol=1e-5)
    assert isinstance(meta, ImageMeta) and meta.to_dict()["size"] == (640, 480)


def test_grayscale_png_rgba_palette_become_rgb(tmp_path: Path) -> None:
    grey = tmp_path / "g.jpg"
    Image.fromarray(np.full((300, 400), 77, np.uint8), "L").save(grey)
    x = preprocess(grey, "yolox")
    assert np.allclose(x[0, :300], x[1, :300]) and np.allclose(x[1, :300], x[2, :300])
    rgba = tmp_path / "a.png"
    Image.new("RGBA", (50, 50), (10, 20, 30, 0)).save(rgba)
    assert preprocess(rgba, "yolox")[:, 0, 0].tolist() == [30, 20, 10]
    pal = tmp_path / "p.gif"
    Image.new("RGB", (50, 50), (200, 0, 0)).convert("P").save(pal)
    assert open_image(pal).mode == "RGB"
    deep = tmp_path / "d.png"
    Image.fromarray(np.full((20, 20), 65535, np.uint16)).save(deep)
    assert np.asarray(open_image(deep)).min() == 255


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_exif_orientation_is_applied(tmp_path: Path, orientation: int) -> None:
    src = _photo(tmp_path / "src.png", (300, 200), 5)
    im = Image.open(src).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = orientation
    tagged = tmp_path / "tagged.jpg"
    im.save(tagged, exif=exif.tobytes(), quality=95)
    upright = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_270}.get(
        orientation, Image.Transpose.ROTATE_90
    )
    ref = np.asarray(Image.open(tagged).convert("RGB").transpose(upright))
    got = np.asarray(open_image(tagged))
    assert got.shape == ref.shape
    np.testing.assert_array_equal(got, ref)
    _, meta = preprocess_with_meta(tagged, "yolox")
    assert meta.size == (ref.shape[1], ref.shape[0])


def test_draft_is_close_and_keeps_original_geometry(tmp_path: Path) -> None:
    big = _photo(tmp_path / "big.jpg", (2400, 1800), 3, quality=92)
    full, meta_full = preprocess_with_meta(big, "imagenet")
    fast, meta_fast = preprocess_with_meta(big, "imagenet", draft=True)
    assert meta_fast == meta_full  # geometry from the original size
    assert _grey_levels(fast, full).mean() < 3.0
    assert not np.array_equal(fast, full)  # the draft did take the reduced decode


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = _photo(tmp_path / "good.jpg", (320, 240), 0)
    data = good.read_bytes()
    files = {
        "empty": tmp_path / "empty.jpg",
        "truncated": tmp_path / "truncated.jpg",
        "corrupt": tmp_path / "corrupt.jpg",
        "text": tmp_path / "notes.png",
        "missing": tmp_path / "missing.jpg",
        "folder": tmp_path / "dir.jpg",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 3])
    rng = np.random.default_rng(0)
    files["corrupt"].write_bytes(data[:20] + rng.integers(0, 256, 3000, np.uint8).tobytes())
    files["text"].write_text("this is not an image\n")
    files["folder"].mkdir()
    return files


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("empty", "empty file"),
        ("truncated", "cannot decode"),
        ("corrupt", "cannot decode|not an image"),
        ("text", "not an image"),
        ("missing", "no such file"),
        ("folder", "not a regular file"),
    ],
)
def test_bad_files_raise_clear_errors(tmp_path: Path, kind: str, reason: str) -> None:
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ImageError, match=reason) as info:
        preprocess(path, "imagenet")
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, InputError)


def test_huge_image_refused_from_the_header(tmp_path: Path) -> None:
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 7000)).save(huge)  # 56 MP, a few KB on disk
    with pytest.raises(ImageError, match=r"8000x7000 = 56\.0 MP, over the limit of 50\.0 MP"):
        preprocess(huge, "imagenet")
    small = _photo(tmp_path / "s.jpg", (100, 100), 0)
    with pytest.raises(ImageError, match="over the limit"):
        preprocess(small, "imagenet", max_pixels=5000)


def test_zero_size_image_header(tmp_path: Path) -> None:
    # a PNG whose IHDR says 0 x 0: Pillow refuses it at open or we do, either way an ImageError
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    png = (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )
    p = tmp_path / "zero.png"
    p.write_bytes(png)
    with pytest.raises(ImageError):
        preprocess(p, "yolox")


def test_preprocess_into_checks_the_buffer(photos: list[Path]) -> None:
    with pytest.raises(InputError, match="expected float32"):
        preprocess_into(photos[0], "imagenet", np.empty((3, 224, 224), np.float64))
    with pytest.raises(InputError, match="unknown preprocessing preset"):
        preprocess(photos[0], "resnet")


def test_preprocessor_batch_matches_single_and_keeps_order(photos: list[Path]) -> None:
    with Preprocessor("imagenet", workers=2) as pre:
        x, metas = pre.batch(photos)
        assert x.shape == (len(photos), 3, 224, 224)
        assert [m.path for m in metas] == [str(p) for p in photos]
        for row, p in zip(x, photos, strict=True):
            np.testing.assert_array_equal(row, preprocess(p, "imagenet"))
        buf = np.zeros((10, 3, 224, 224), np.float32)
        y, _ = pre.batch(photos[:3], out=buf)
        assert y.base is buf or np.shares_memory(y, buf)
        np.testing.assert_array_equal(y, x[:3])
    assert not [t for t in threading.enumerate() if t.name.startswith("onnxfit-preprocess")]


def test_preprocessor_skip_and_raise(tmp_path: Path, photos: list[Path], caplog) -> None:
    bad = _bad_files(tmp_path)
    paths = [photos[0], bad["truncated"], photos[1], bad["text"], photos[2]]
    with Preprocessor("yolox", workers=2) as pre:
        with pytest.raises(ImageError, match="truncated"):
            pre.batch(paths)
        with caplog.at_level(logging.WARNING):
            x, metas = pre.batch(paths, on_error="skip")
    assert x.shape[0] == 3
    assert [m.path for m in metas] == [str(photos[i]) for i in (0, 1, 2)]
    np.testing.assert_array_equal(x[2], preprocess(photos[2], "yolox"))
    assert [Path(e.path).name for e in pre.errors] == ["truncated.jpg", "notes.png"]
    assert "notes.png" in caplog.text


def test_worker_count_from_target() -> None:
    assert Preprocessor("imagenet", target="xbox-series-s").workers == 6  # 8 cores - 2 reserved
    assert Preprocessor("imagenet").workers == get_target("cpu").worker_cores
    assert Preprocessor("imagenet", workers=3).workers == 3
    with pytest.raises(InputError):
        Preprocessor("imagenet", workers=0)


def test_list_images_sorted_and_reports_skips(tmp_path: Path, caplog) -> None:
    for name in ["b.JPG", "a.png", "c.jpeg", "notes.txt", ".hidden.jpg", "model.onnx"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.jpg").write_bytes(b"x")
    with caplog.at_level(logging.WARNING):
        found = list_images(tmp_path)
    assert [p.name for p in found] == ["a.png", "b.JPG", "c.jpeg"]
    assert "notes.txt" in caplog.text and "model.onnx" in caplog.text
    scan = scan_images(tmp_path, recursive=True)
    assert [p.name for p in scan.images] == ["a.png", "b.JPG", "c.jpeg", "d.jpg"]
    assert {p.name for p, _ in scan.skipped} == {"notes.txt", ".hidden.jpg", "model.onnx"}
    with pytest.raises(InputError, match="no such folder"):
        list_images(tmp_path / "nope")
    with pytest.raises(InputError, match="not a folder"):
        list_images(tmp_path / "a.png")


def test_guess_preset() -> None:
    assert guess_preset([1, 3, 224, 224]) == "imagenet"
    assert guess_preset(["batch", 3, 224, 224]) == "imagenet"
    assert guess_preset([1, 3, 416, 416]) == "yolox"
    assert guess_preset([1, 3, 416, 416], output_shapes=[[1, 255, 13, 13]]) == "yolov3-tiny"
    for bad in ([1, 224, 224, 3], [1, 3, "h", "w"], [3, 224, 224], [1, 3, 100, 37]):
        with pytest.raises(InputError, match="cannot guess") as info:
            guess_preset(bad)
        assert "name a preset" in (info.value.hint or "")


def test_preset_with_size() -> None:
    p = get_preset("imagenet").with_size(299, 299)
    assert p.size == (299, 299) and p.resize_to == 342
    assert isinstance(p, Preset) and p.to_dict()["name"] == "imagenet"
    assert get_preset("yolox").with_size(640, 640).size == (640, 640)
