"""Darknet import (onnxfit.zoo.darknet): cfg and weights parsing with exact byte accounting, every
refusal, the bottom/right max-pool padding, the ``darknet`` preset round trip, the metadata that
makes it the default, and (real data) a numpy forward and ``onnxfit eval`` on the official
YOLOv3-tiny weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from onnxfit import io, zoo
from onnxfit.cli import main
from onnxfit.data.images import preprocess_with_meta
from onnxfit.data.model_info import describe_model
from onnxfit.data.presets import get_preset
from onnxfit.errors import InputError, ModelLoadError
from onnxfit.zoo.darknet import conv_specs, parse_cfg, read_weights, yolov3_tiny_layout

pytestmark = pytest.mark.timeout(300)

# conv(4, 3x3, BN) - maxpool - conv(8, 1x1, BN) - route(-1, -3) = 8 + 4 channels - head conv(18)
TINY_CFG = """[net]
width=32
height=32
channels=3
# a comment
[convolutional]
batch_normalize=1
filters=4
size=3
stride=1
pad=1
activation=leaky

[maxpool]
size=2
stride=2

[convolutional]
batch_normalize = 1
filters = 8
size = 1
activation = leaky

[route]
layers = -1, -3

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask = 0,1,2
anchors = 1,2, 3,4, 5,6
classes=1
"""
# values per conv: (bias, [scale, mean, var], weights)
TINY_VALUES = 4 * 4 + 4 * 3 * 9 + 8 * 4 + 8 * 4 + 18 + 18 * 12
REAL = Path("models/darknet")


def write_weights(path: Path, layout, *, seed: int = 0, version=(0, 2, 0), extra: int = 0):
    """A darknet weights file for ``layout`` (ConvSpecs), values from a seeded generator;
    returns the blocks written, in file order, by role."""
    rng = np.random.default_rng(seed)
    major, minor, _ = version
    wide = major * 10 + minor >= 2
    head = struct.pack("<3i", *version) + struct.pack("<q" if wide else "<i", 123456)
    blocks: dict[str, np.ndarray] = {}
    parts = [head]
    for c in layout:
        names = ["bias", "scale", "mean", "var"] if c.batch_normalize else ["bias"]
        for role in names:
            a = rng.standard_normal(c.filters, dtype=np.float32)
            a = np.abs(a) + 0.5 if role == "var" else a
            blocks[f"{c.index}.{role}"] = a
            parts.append(a.astype("<f4").tobytes())
        w = rng.standard_normal((c.filters, c.in_channels, c.size, c.size), dtype=np.float32)
        blocks[f"{c.index}.weights"] = w * np.float32(0.05)
        parts.append(blocks[f"{c.index}.weights"].astype("<f4").tobytes())
    parts.append(b"\x00" * extra)
    path.write_bytes(b"".join(parts))
    return blocks


# -- cfg and weights parsing -------------------------------------------------------------------


def test_tiny_cfg_channels_and_exact_byte_accounting(tmp_path: Path) -> None:
    layers = parse_cfg(TINY_CFG)
    assert [s.type for s in layers] == [
        "convolutional", "maxpool", "convolutional", "route", "convolutional", "yolo",
    ]  # fmt: skip
    assert [s.index for s in layers] == list(range(6))
    specs = conv_specs(layers)
    assert [(c.index, c.filters, c.in_channels, c.size, c.batch_normalize) for c in specs] == [
        (0, 4, 3, 3, True), (2, 8, 4, 1, True), (4, 18, 12, 1, False),
    ]  # fmt: skip
    assert sum(c.count for c in specs) == TINY_VALUES
    path = tmp_path / "tiny.weights"
    blocks = write_weights(path, specs)
    assert path.stat().st_size == 20 + 4 * TINY_VALUES
    got = read_weights(path, specs)
    assert (got.header.major, got.header.minor, got.header.seen, got.header.size) == (
        0, 2, 123456, 20,
    )  # fmt: skip
    assert got.values == TINY_VALUES and got.bytes == path.stat().st_size
    t = got.tensors
    # darknet order: bias (= BN beta), scale (gamma), rolling mean, rolling variance, weights
    np.testing.assert_array_equal(t["layers.0.bn.bias"], blocks["0.bias"])
    np.testing.assert_array_equal(t["layers.0.bn.weight"], blocks["0.scale"])
    np.testing.assert_array_equal(t["layers.0.bn.running_mean"], blocks["0.mean"])
    np.testing.assert_array_equal(t["layers.0.bn.running_var"], blocks["0.var"])
    np.testing.assert_array_equal(t["layers.0.conv.weight"], blocks["0.weights"])
    np.testing.assert_array_equal(t["layers.2.conv.weight"], blocks["2.weights"])
    np.testing.assert_array_equal(t["layers.4.conv.bias"], blocks["4.bias"])  # no BN: bias
    assert t["layers.4.conv.weight"].shape == (18, 12, 1, 1)
    assert "layers.4.bn.weight" not in t


def test_old_header_has_a_32_bit_seen(tmp_path: Path) -> None:
    specs = conv_specs(parse_cfg(TINY_CFG))
    path = tmp_path / "old.weights"
    write_weights(path, specs, version=(0, 1, 0))
    assert path.stat().st_size == 16 + 4 * TINY_VALUES
    got = read_weights(path, specs)
    assert (got.header.size, got.header.seen) == (16, 123456)


@pytest.mark.parametrize("delta", [-4, 4, -1, 1000])
def test_a_file_of_any_other_size_is_refused(tmp_path: Path, delta: int) -> None:
    specs = conv_specs(parse_cfg(TINY_CFG))
    good = tmp_path / "good.weights"
    write_weights(good, specs)
    data = good.read_bytes()
    bad = tmp_path / "bad.weights"
    bad.write_bytes(data[:delta] if delta < 0 else data + b"\x00" * delta)
    with pytest.raises(ModelLoadError) as err:
        read_weights(bad, specs)
    msg = str(err.value)
    expected = 20 + 4 * TINY_VALUES
    assert f"{expected + delta:,} bytes, expected {expected:,}" in msg
    assert f"{abs(delta):,} bytes too {'few' if delta < 0 else 'many'}" in msg
    read_weights(good, specs)  # the untouched file still reads


def test_wrong_header_and_missing_file(tmp_path: Path) -> None:
    specs = conv_specs(parse_cfg(TINY_CFG))
    bad = tmp_path / "bad.weights"
    write_weights(bad, specs, version=(1000, 2, 0))  # darknet's transposed/foreign format
    with pytest.raises(ModelLoadError, match=r"not a darknet weights file \(header version 1000"):
        read_weights(bad, specs)
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(ModelLoadError, match="10 bytes, too short for a darknet weights header"):
        read_weights(bad, specs)
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"\x08\x08\x12\x07onnxfit" + b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a darknet weights file"):
        read_weights(onnx_file, specs)
    with pytest.raises(ModelLoadError, match="no such weights file"):
        read_weights(tmp_path / "nope.weights", specs)


def test_cfg_syntax_errors() -> None:
    with pytest.raises(InputError, match="cfg line 2: expected"):
        parse_cfg("[convolutional]\nfilters 16\n")
    with pytest.raises(InputError, match="no layers"):
        parse_cfg("[net]\nwidth=416\n")
    with pytest.raises(InputError, match=r"cfg line 1: \[convolutional\] filters='x'"):
        conv_specs(parse_cfg("[convolutional]\nfilters=x\n"))
    with pytest.raises(InputError, match=r"layer 1 is \[shortcut\]"):
        conv_specs(parse_cfg("[convolutional]\nfilters=4\n[shortcut]\nfrom=-1\n"))


def _real_cfg_text() -> str:
    sections = [_section(i, kind) for i, kind in enumerate(_TINY_KINDS)]
    return "\n\n".join(["[net]\nwidth=416\nheight=416\nchannels=3", *sections])


_TINY_KINDS = ["c16", "m2", "c32", "m2", "c64", "m2", "c128", "m2", "c256", "m2", "c512", "m1",
               "c1024", "c256/1", "c512", "head", "yolo", "route-4", "c128/1", "up", "route-1,8",
               "c256", "head", "yolo"]  # fmt: skip


def _section(i: int, kind: str, classes: int = 80) -> str:
    if kind.startswith("c"):
        f, _, k = kind[1:].partition("/")
        return (f"[convolutional]\nbatch_normalize=1\nfilters={f}\nsize={k or 3}\nstride=1\n"
                "pad=1\nactivation=leaky")  # fmt: skip
    if kind == "head":
        return f"[convolutional]\nsize=1\nstride=1\npad=1\nfilters={3 * (5 + classes)}\n" + (
            "activation=linear"
        )
    if kind.startswith("m"):
        return f"[maxpool]\nsize=2\nstride={kind[1]}"
    if kind == "yolo":
        mask = "3,4,5" if i == 16 else "0,1,2"
        return (f"[yolo]\nmask = {mask}\nanchors = 10,14,  23,27,  37,58,  81,82,  135,169,  "
                f"344,319\nclasses={classes}\nnum=6")  # fmt: skip
    if kind == "up":
        return "[upsample]\nstride=2"
    return f"[route]\nlayers = {kind[5:]}"


def test_layout_default_equals_darknet_cfg_and_other_classes_are_accepted() -> None:
    cfg = yolov3_tiny_layout(parse_cfg(_real_cfg_text()))
    default = yolov3_tiny_layout()
    assert cfg == default
    assert default.classes == 80
    assert default.anchors == (((81, 82), (135, 169), (344, 319)), ((10, 14), (23, 27), (37, 58)))
    assert sum(c.count for c in default.convs) == 8_858_734  # SOURCES.md: consumed exactly
    assert [c.index for c in default.convs] == [0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21, 22]
    assert default.convs[-2].in_channels == 128 + 256  # route 19, 8
    text = _real_cfg_text().replace("filters=255", "filters=75").replace("classes=80", "classes=20")
    text = text.replace("mask = 0,1,2", "mask = 1,2,3")
    twenty = yolov3_tiny_layout(parse_cfg(text))
    assert twenty.classes == 20 and twenty.convs[-1].filters == 75
    assert twenty.anchors[1] == ((23, 27), (37, 58), (81, 82))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("filters=1024", "filters=512"), r"line \d+: layer 12 \[convolutional\] has filters=512"),
        (("size=2\nstride=1", "size=2\nstride=2"), r"layer 11 \[maxpool\] has stride=2"),
        (("layers = -4", "layers = -3"), r"layer 17 \[route\] has layers=\[14\]"),
        (("classes=80\nnum=6", "classes=20\nnum=6"), r"classes \[20, 80\]"),
        (("filters=255", "filters=75"), r"layer 15 \[convolutional\] has filters=75"),
        (("[upsample]", "[maxpool]"), r"layer 19 is \[maxpool\], yolov3-tiny has \[upsample\]"),
        (
            ("activation=linear", "activation=leaky"),
            r"has activation=leaky, yolov3-tiny has linear",
        ),
    ],
)
def test_another_cfg_is_refused(edit: tuple[str, str], message: str) -> None:
    text = _real_cfg_text().replace(*edit, 1)
    assert text != _real_cfg_text()
    with pytest.raises(InputError, match=message) as err:
        yolov3_tiny_layout(parse_cfg(text))
    assert "yolov3-tiny.cfg layout" in (err.value.hint or "")


def test_tiny_cfg_is_not_yolov3_tiny(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="the cfg has 6 layers, yolov3-tiny has 24"):
        yolov3_tiny_layout(parse_cfg(TINY_CFG))
    cfg = tmp_path / "tiny.cfg"
    cfg.write_text(TINY_CFG)
    weights = tmp_path / "tiny.weights"
    write_weights(weights, conv_specs(parse_cfg(TINY_CFG)))
    with pytest.raises(InputError, match=r"tiny\.cfg: the cfg has 6 layers"):
        zoo.load_darknet(weights, cfg)


# -- loading into the zoo graph ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Full-size yolov3-tiny weights with seeded values (35 MB) and the blocks written."""
    path = tmp_path_factory.mktemp("darknet") / "synthetic.weights"
    return path, write_weights(path, yolov3_tiny_layout().convs, seed=7)


def test_load_darknet_puts_every_value_in_its_initializer(synthetic) -> None:
    path, blocks = synthetic
    model = zoo.load_darknet(path)
    inits = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}  # type: ignore[union-attr]
    for i in (0, 10, 12, 13, 14, 18, 21):
        np.testing.assert_array_equal(inits[f"layers.{i}.bn.bias"], blocks[f"{i}.bias"])
        np.testing.assert_array_equal(inits[f"layers.{i}.bn.weight"], blocks[f"{i}.scale"])
        np.testing.assert_array_equal(inits[f"layers.{i}.bn.running_mean"], blocks[f"{i}.mean"])
        np.testing.assert_array_equal(inits[f"layers.{i}.bn.running_var"], blocks[f"{i}.var"])
        np.testing.assert_array_equal(inits[f"layers.{i}.conv.weight"], blocks[f"{i}.weights"])
    for i in (15, 22):
        np.testing.assert_array_equal(inits[f"layers.{i}.conv.bias"], blocks[f"{i}.bias"])
        np.testing.assert_array_equal(inits[f"layers.{i}.conv.weight"], blocks[f"{i}.weights"])
    n_written = sum(a.size for a in blocks.values())
    counts = zoo.count_parameters(model)
    assert counts.parameters + counts.bn_statistics == n_written == 8_858_734
    bn = [n for n in model.graph if n.op_type == "BatchNormalization"]
    assert len(bn) == 11
    assert all(n.attributes["epsilon"].value == pytest.approx(1e-5, rel=1e-6) for n in bn)
    meta = model.metadata_props
    assert meta["onnxfit.task"] == "detect" and meta["onnxfit.decoder"] == "yolov3"
    assert meta["onnxfit.preset"] == "darknet"
    assert meta["onnxfit.anchors"] == "81,82 135,169 344,319;10,14 23,27 37,58"
    assert "onnxfit.zoo.seed" not in meta


def test_full_size_file_four_bytes_off_is_refused(synthetic, tmp_path: Path) -> None:
    path, _ = synthetic
    data = path.read_bytes()
    for name, blob in (("long", data + b"\0\0\0\0"), ("short", data[:-4])):
        bad = tmp_path / f"{name}.weights"
        bad.write_bytes(blob)
        with pytest.raises(ModelLoadError, match=f"expected {len(data):,} .*4 bytes too"):
            zoo.load_darknet(bad)


def test_build_and_save_and_cli(synthetic, tmp_path: Path) -> None:
    path, _ = synthetic
    out = tmp_path / "y.onnx"
    res = CliRunner().invoke(main, ["zoo", "yolov3-tiny", "--weights", str(path), "-o", str(out),
                                    "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert (d["trained"], d["weights"], d["seed"]) == (True, str(path), None)
    assert d["parameters"] == 8_852_366 and d["bytes"] == out.stat().st_size
    res = CliRunner().invoke(main, ["zoo", "yolov3-tiny", "--weights", str(path), "-o", str(out)])
    assert res.exit_code == 2 and "file exists" in res.stderr  # nothing overwritten
    text = CliRunner().invoke(main, ["zoo", "yolov3-tiny", "-o", str(tmp_path / "r.onnx")]).output
    assert "untrained" in text
    res = CliRunner().invoke(main, ["zoo", "resnet18", "--weights", str(path), "-o",
                                    str(tmp_path / "r18.onnx")])  # fmt: skip
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.stderr.splitlines()[0] == (
        "error: trained weights can only be loaded into yolov3-tiny, not resnet18"
    )
    assert not (tmp_path / "r18.onnx").exists()
    with pytest.raises(InputError, match="cfg was given without weights"):
        zoo.build_and_save("yolov3-tiny", tmp_path / "x.onnx", cfg=tmp_path / "a.cfg")


# -- the 13x13 max-pool pads bottom/right ---------------------------------------------------------


def _darknet_maxpool(x: np.ndarray, size: int, stride: int) -> np.ndarray:
    """darknet's maxpool_layer: pad = size - 1, window at -pad / 2 (C integer division: 0 for
    size 2), out-of-image cells ignored."""
    pad = size - 1
    off = -(pad // 2)
    n, c, h, w = x.shape
    oh, ow = (h + pad - size) // stride + 1, (w + pad - size) // stride + 1
    out = np.full((n, c, oh, ow), -np.inf, np.float32)
    for i in range(oh):
        for j in range(ow):
            y0, x0 = max(i * stride + off, 0), max(j * stride + off, 0)
            y1, x1 = min(i * stride + off + size, h), min(j * stride + off + size, w)
            out[:, :, i, j] = x[:, :, y0:y1, x0:x1].max(axis=(2, 3))
    return out


def _run_node(node: ir.Node, x: np.ndarray) -> np.ndarray:
    attrs = {k: list(v.value) for k, v in node.attributes.items()}
    inp = ir.val("x", ir.DataType.FLOAT, list(x.shape))
    out = ir.val("y", ir.DataType.FLOAT)
    tape = ir.tape.Tape()
    tape.op("MaxPool", [inp], attrs, output=out)
    graph = ir.Graph([inp], [out], nodes=tape.nodes, opset_imports={"": 17})
    sess = ort.InferenceSession(io.to_bytes(ir.Model(graph, ir_version=8)),
                                providers=["CPUExecutionProvider"])  # fmt: skip
    return sess.run(None, {"x": x})[0]


def test_stride_one_maxpool_pads_bottom_right_as_darknet(rng: np.random.Generator) -> None:
    model = zoo.yolov3_tiny(seed=0)
    pools = {n.name: n for n in model.graph if n.op_type == "MaxPool"}
    node = pools["layers.11.maxpool"]
    assert list(node.attributes["pads"].value) == [0, 0, 1, 1]  # (top, left, bottom, right)
    assert list(node.attributes["strides"].value) == [1, 1]
    x = rng.standard_normal((1, 3, 13, 13), dtype=np.float32)
    got = _run_node(node, x)
    assert got.shape == (1, 3, 13, 13)
    np.testing.assert_array_equal(got, _darknet_maxpool(x, 2, 1))
    flipped = x[:, :, ::-1, ::-1]  # top/left padding would be this, and it differs
    assert not np.array_equal(_run_node(node, flipped)[:, :, ::-1, ::-1], got)
    for name in ("layers.1.maxpool", "layers.9.maxpool"):  # the stride-2 pools: no padding
        y = rng.standard_normal((1, 2, 26, 26), dtype=np.float32)
        np.testing.assert_array_equal(_run_node(pools[name], y), _darknet_maxpool(y, 2, 2))


# -- the darknet preset ---------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "box"), [((640, 427), (101, 57, 333, 300)),
                                           ((333, 517), (20, 300, 310, 511))])  # fmt: skip
def test_darknet_preset_round_trip(tmp_path: Path, size, box) -> None:
    pre = get_preset("darknet")
    assert (pre.size, pre.mode, pre.placement, pre.channel_order) == (
        (416, 416), "letterbox", "center", "RGB",
    )  # fmt: skip
    w, h = size
    img = np.full((h, w, 3), 40, np.uint8)
    x0, y0, x1, y1 = box  # pixels x0..x1-1, y0..y1-1 are white
    img[y0:y1, x0:x1] = 255
    path = tmp_path / "box.png"
    Image.fromarray(img).save(path)
    arr, meta = preprocess_with_meta(path, "darknet")
    assert arr.shape == (3, 416, 416) and arr.dtype == np.float32
    rw, rh = meta.resized
    assert max(rw, rh) == 416 and abs(rw / rh - w / h) < 0.01
    ox, oy = meta.offset
    assert (ox, oy) == ((416 - rw) // 2, (416 - rh) // 2)  # centred
    pad = np.ones(arr.shape, bool)
    pad[:, int(oy) : int(oy) + rh, int(ox) : int(ox) + rw] = False
    assert np.all(arr[pad] == 0.5)  # grey 0.5 = 127.5 / 255 exactly
    inside = arr[:, ~pad[0]]
    assert inside.min() == pytest.approx(40 / 255, abs=1e-6) and inside.max() == pytest.approx(1.0)
    ys, xs = np.nonzero(arr[0] > (40 + 255) / 2 / 255)  # the box, found in the network input
    found = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
    back = meta.to_original(found)[0]
    np.testing.assert_allclose(back, box, atol=1.0)


def _spec(name: str, shape: list) -> SimpleNamespace:
    return SimpleNamespace(name=name, shape=tuple(shape), dtype=np.dtype(np.float32))


def test_metadata_makes_darknet_the_default_preset() -> None:
    inp = [_spec("input", ["batch", 3, 416, 416])]
    heads = [_spec("out13", ["batch", 255, 13, 13]), _spec("out26", ["batch", 255, 26, 26])]
    meta = {"onnxfit.task": "detect", "onnxfit.decoder": "yolov3", "onnxfit.preset": "darknet",
            "onnxfit.anchors": "81,82 135,169 344,319;10,14 23,27 37,58"}  # fmt: skip
    plain = describe_model(inp, heads)
    assert (plain.preset.name, plain.anchors) == ("yolov3-tiny", None)
    info = describe_model(inp, heads, metadata=meta)
    assert (info.task, info.decoder, info.preset.name, info.num_classes) == (
        "detect", "yolov3", "darknet", 80,
    )  # fmt: skip
    assert info.anchors == (((81, 82), (135, 169), (344, 319)), ((10, 14), (23, 27), (37, 58)))
    assert describe_model(inp, heads, preset="yolox", metadata=meta).preset.name == "yolox"
    with pytest.raises(InputError, match="metadata says the yolox decode"):
        describe_model(inp, heads, metadata={**meta, "onnxfit.decoder": "yolox"})
    with pytest.raises(InputError, match=r"onnxfit\.anchors"):
        describe_model(inp, heads, metadata={**meta, "onnxfit.anchors": "81,82,3;x"})


# -- the official weights (../shared/data) --------------------------------------------------------


def _numpy_darknet_forward(weights: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """yolov3-tiny written out by hand from darknet's own semantics: its own weights reader,
    BN (x - mean) / sqrt(var + 1e-5) * scale + bias, leaky 0.1, the maxpool above."""
    vals = np.fromfile(weights, np.uint8)[20:].view("<f4")
    at = 0

    def take(n: int) -> np.ndarray:
        nonlocal at
        at += n
        return vals[at - n : at].astype(np.float64)

    def conv(x: np.ndarray, f: int, k: int, bn: bool = True) -> np.ndarray:
        c, h, w = x.shape
        b = take(f)
        g, m, v = (take(f), take(f), take(f)) if bn else (None, None, None)
        wt = take(f * c * k * k).reshape(f, c * k * k)
        p = k // 2
        cols = sliding_window_view(np.pad(x, ((0, 0), (p, p), (p, p))), (k, k), axis=(1, 2))
        y = (cols.transpose(1, 2, 0, 3, 4).reshape(h * w, -1) @ wt.T).T.reshape(f, h, w)
        if g is None:
            return y + b[:, None, None]
        y = (y - m[:, None, None]) / np.sqrt(v[:, None, None] + 1e-5) * g[:, None, None]
        y += b[:, None, None]
        return np.where(y > 0, y, 0.1 * y)

    def pool(x: np.ndarray, stride: int) -> np.ndarray:
        return _darknet_maxpool(x[None].astype(np.float32), 2, stride)[0].astype(np.float64)

    y = route8 = x.astype(np.float64)
    for f in (16, 32, 64, 128, 256, 512):
        y = conv(y, f, 3)
        if f == 256:
            route8 = y  # darknet layer 8, routed to layer 20
        y = pool(y, 1 if f == 512 else 2)
    y = conv(y, 1024, 3)
    r13 = conv(y, 256, 1)
    out13 = conv(conv(r13, 512, 3), 255, 1, bn=False)
    up = conv(r13, 128, 1).repeat(2, axis=1).repeat(2, axis=2)
    out26 = conv(conv(np.concatenate([up, route8]), 256, 3), 255, 1, bn=False)
    assert at == vals.size  # every value used
    return out13, out26


@pytest.mark.needs_data
def test_official_weights_match_a_numpy_darknet_forward(shared_data: Path, tmp_path) -> None:
    weights = shared_data / REAL / "yolov3-tiny.weights"
    model = zoo.load_darknet(weights, shared_data / REAL / "yolov3-tiny.cfg")
    assert model.metadata_props["onnxfit.zoo.weights_sha256"] == (
        "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
    )
    x = np.random.default_rng(0).random((1, 3, 416, 416), dtype=np.float32)
    sess = ort.InferenceSession(io.to_bytes(model), providers=["CPUExecutionProvider"])
    got13, got26 = sess.run(["out13", "out26"], {"input": x})
    ref13, ref26 = _numpy_darknet_forward(weights, x[0])
    assert np.abs(ref13).max() > 5  # not a trivially small output
    np.testing.assert_allclose(got13[0], ref13, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got26[0], ref26, atol=1e-4, rtol=0)


@pytest.mark.needs_data
@pytest.mark.slow
def test_eval_official_weights_on_coco_sample(shared_data: Path, tmp_path: Path) -> None:
    """FINDINGS.md: an independent exporter + darknet preprocessing measured 33.46 / 21.34 on
    these 64 images; the import must land within 1 point."""
    out = tmp_path / "y.onnx"
    weights = shared_data / REAL / "yolov3-tiny.weights"
    runner = CliRunner()
    res = runner.invoke(main, ["zoo", "yolov3-tiny", "--weights", str(weights), "-o", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["eval", str(out), str(shared_data / "coco-sample"), "--task",
                               "detect", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert d["model_info"]["preset"] == "darknet" and d["model_info"]["decoder"] == "yolov3"
    assert d["evaluated"] == 64 and d["bad_count"] == 0
    assert abs(100 * d["metrics"]["map50"] - 33.5) <= 1.0, d["metrics"]
    assert abs(100 * d["metrics"]["map50_95"] - 21.3) <= 1.0, d["metrics"]
