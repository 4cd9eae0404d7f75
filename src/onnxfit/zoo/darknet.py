"""Darknet ``.cfg`` / ``.weights`` import: the official YOLOv3-tiny weights in the zoo graph.

* :func:`parse_cfg` reads a Darknet cfg into its sections (``[net]`` dropped, the rest numbered
  0, 1, ... as darknet numbers its layers); :func:`conv_specs` walks them and says, for every
  ``[convolutional]`` layer in order, its filters, input channels, kernel size and whether it has
  batch-normalize — all the weights file needs.
* :func:`read_weights` reads a ``.weights`` file against those specs. Header: ``major``,
  ``minor``, ``revision`` as int32, then ``seen`` as int64 when ``major * 10 + minor >= 2``
  (int32 before); then per convolution in cfg order: ``bias[filters]`` (BN beta when
  batch-normalized), with batch-normalize ``scale`` (gamma), ``running mean``, ``running var``
  (each ``[filters]``), then ``weights[filters, in_c, k, k]``; little-endian float32. Every byte
  must be used: a file of any other size is refused (:class:`~onnxfit.errors.ModelLoadError`
  naming the expected and found sizes) before anything is read.
* :func:`yolov3_tiny_layout` checks that a cfg is the layout :func:`onnxfit.zoo.yolo.yolov3_tiny`
  builds (any class count and anchors; anything else is refused with the first difference)
  and takes its classes and anchors.
* :func:`load_darknet` builds the zoo graph and puts the weights in it (BN epsilon 1e-5, as
  darknet's GPU path; the 13x13 stride-1 max-pool pads bottom/right as darknet does), and
  writes ``metadata_props`` that make ``run`` / ``eval`` use the YOLOv3 decode with these
  anchors and the ``darknet`` preprocessing preset by default.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError, ModelLoadError
from onnxfit.zoo.yolo import yolov3_tiny

__all__ = [
    "ConvSpec", "DarknetHeader", "DarknetWeights", "Section", "TinyLayout", "conv_specs",
    "load_darknet", "parse_cfg", "read_weights", "yolov3_tiny_layout",
]  # fmt: skip

#: the yolov3-tiny.cfg the zoo graph builds (darknet's cfg/yolov3-tiny.cfg).
DEFAULT_ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))


@dataclass(frozen=True)
class Section:
    """One ``[type]`` block of a cfg: its darknet layer index (-1 for ``[net]``), options, line."""

    type: str
    index: int
    options: dict[str, str]
    line: int

    def get(self, key: str, default: int) -> int:
        raw = self.options.get(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise InputError(
                f"cfg line {self.line}: [{self.type}] {key}={raw!r} is not an integer"
            ) from None

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.numbers(key)]

    def numbers(self, key: str) -> list[float]:
        raw = self.options.get(key, "")
        try:
            return [float(v) for v in raw.split(",") if v.strip()]
        except ValueError:
            raise InputError(
                f"cfg line {self.line}: [{self.type}] {key}={raw!r} is not a list of numbers"
            ) from None


def parse_cfg(text: str) -> list[Section]:
    """Sections of a darknet cfg (``#`` / ``;`` comments, ``key = value`` lines), ``[net]`` and
    anything before the first layer dropped; layers numbered from 0 as darknet does."""
    sections: list[Section] = []
    current: Section | None = None
    for n, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise InputError(f"cfg line {n}: bad section header {line!r}")
            name = line[1:-1].strip().lower()
            index = -1 if name in ("net", "network") else sum(s.index >= 0 for s in sections)
            current = Section(name, index, {}, n)
            sections.append(current)
        elif "=" in line and current is not None:
            key, value = line.split("=", 1)
            current.options[key.strip()] = value.strip()
        else:
            raise InputError(f"cfg line {n}: expected [section] or key=value, got {line!r}")
    layers = [s for s in sections if s.index >= 0]
    if not layers:
        raise InputError("the cfg has no layers", hint="give a darknet .cfg file")
    return layers


@dataclass(frozen=True)
class ConvSpec:
    """A ``[convolutional]`` layer as the weights file needs it."""

    index: int
    filters: int
    in_channels: int
    size: int
    batch_normalize: bool

    @property
    def count(self) -> int:
        """float32 values this layer takes from the weights file."""
        per_filter = 4 if self.batch_normalize else 1
        return self.filters * (per_filter + self.in_channels * self.size * self.size)


def conv_specs(layers: Sequence[Section], *, channels: int = 3) -> list[ConvSpec]:
    """The convolutions of ``layers`` in order, with input channels followed through
    ``[maxpool]``, ``[upsample]``, ``[route]`` (concatenation) and ``[yolo]``."""
    out: list[int] = []
    convs: list[ConvSpec] = []
    for s in layers:
        prev = out[-1] if out else channels
        if s.type == "convolutional":
            if s.get("groups", 1) != 1:
                raise InputError(f"cfg line {s.line}: grouped convolutions are not supported")
            spec = ConvSpec(s.index, s.get("filters", 1), prev, s.get("size", 1),
                            bool(s.get("batch_normalize", 0)))  # fmt: skip
            convs.append(spec)
            out.append(spec.filters)
        elif s.type in ("maxpool", "upsample", "yolo", "dropout"):
            out.append(prev)
        elif s.type == "route":
            refs = [r if r >= 0 else s.index + r for r in s.ints("layers")]
            if not refs or any(not 0 <= r < s.index for r in refs):
                raise InputError(f"cfg line {s.line}: [route] layers={s.options.get('layers')}")
            out.append(sum(out[r] for r in refs))
        else:
            raise InputError(
                f"cfg line {s.line}: layer {s.index} is [{s.type}], which this reader does not "
                "know", hint="only the yolov3-tiny layout is supported",
            )  # fmt: skip
    return convs


@dataclass(frozen=True)
class TinyLayout:
    """A cfg checked to be the yolov3-tiny layout: its classes, anchors (pixels at 416, per head,
    13x13 head first) and convolutions."""

    classes: int
    anchors: tuple[tuple[tuple[float, float], ...], ...]
    convs: tuple[ConvSpec, ...]


Layer = tuple[str, dict[str, object]]


def _conv(filters: int | str, size: int) -> Layer:
    """A yolov3-tiny conv: BN + leaky, or (``filters="H"``, 3 * (5 + classes)) a linear head."""
    bn = filters != "H"
    return ("convolutional", {"filters": filters, "size": size, "batch_normalize": int(bn),
                              "activation": "leaky" if bn else "linear"})  # fmt: skip


def _pool(stride: int) -> Layer:
    return ("maxpool", {"size": 2, "stride": stride})


#: yolov3-tiny.cfg layer by layer: (type, options that must match).
_TINY: tuple[Layer, ...] = (
    _conv(16, 3), _pool(2), _conv(32, 3), _pool(2), _conv(64, 3), _pool(2),
    _conv(128, 3), _pool(2), _conv(256, 3), _pool(2), _conv(512, 3), _pool(1),
    _conv(1024, 3), _conv(256, 1), _conv(512, 3), _conv("H", 1), ("yolo", {}),
    ("route", {"layers": [13]}), _conv(128, 1), ("upsample", {"stride": 2}),
    ("route", {"layers": [19, 8]}), _conv(256, 3), _conv("H", 1), ("yolo", {}),
)  # fmt: skip

_HINT = "only darknet's yolov3-tiny.cfg layout (any classes and anchors) is supported"


def _default_layers() -> list[Section]:
    """darknet's cfg/yolov3-tiny.cfg as sections (80 classes, its anchors and masks)."""
    layers = []
    for i, (kind, want) in enumerate(_TINY):
        opts = {k: ",".join(map(str, v)) if isinstance(v, list) else str(255 if v == "H" else v)
                for k, v in want.items()}  # fmt: skip
        if kind == "convolutional":
            opts = {"stride": "1", "pad": "1", **opts}
        elif kind == "yolo":
            anchors = ",".join(f"{w},{h}" for w, h in DEFAULT_ANCHORS)
            mask = "3,4,5" if i == 16 else "0,1,2"
            opts = {"mask": mask, "anchors": anchors, "classes": "80", "num": "6"}
        layers.append(Section(kind, i, opts, 0))
    return layers


def yolov3_tiny_layout(layers: Sequence[Section] | None = None) -> TinyLayout:
    """Check that ``layers`` (from :func:`parse_cfg`) are yolov3-tiny's and return the layout;
    ``None``: darknet's own ``cfg/yolov3-tiny.cfg`` (80 classes). A different layout raises
    :class:`InputError` naming the first layer that differs."""
    if layers is None:
        layers = _default_layers()
    if len(layers) != len(_TINY):
        raise InputError(f"the cfg has {len(layers)} layers, yolov3-tiny has {len(_TINY)}",
                         hint=_HINT)  # fmt: skip
    for s, (kind, _) in zip(layers, _TINY, strict=True):
        if s.type != kind:
            raise InputError(f"cfg line {s.line}: layer {s.index} is [{s.type}], yolov3-tiny "
                             f"has [{kind}] there", hint=_HINT)  # fmt: skip
    yolos = [s for s in layers if s.type == "yolo"]
    classes = {s.get("classes", 20) for s in yolos}
    if len(classes) != 1 or min(classes) < 1:
        raise InputError(f"the cfg's [yolo] layers have classes {sorted(classes)}", hint=_HINT)
    n_classes = classes.pop()
    for s, (kind, want) in zip(layers, _TINY, strict=True):
        for key, value in want.items():
            have: object
            if key == "layers":
                have = [r if r >= 0 else s.index + r for r in s.ints("layers")]
            elif key == "activation":
                have = s.options.get("activation", "logistic")
            else:
                have = s.get(key, 1 if key in ("size", "stride") else 0)
            expect = 3 * (5 + n_classes) if value == "H" else value
            if have != expect:
                raise InputError(
                    f"cfg line {s.line}: layer {s.index} [{kind}] has {key}={have}, "
                    f"yolov3-tiny has {expect}", hint=_HINT,
                )  # fmt: skip
        if kind == "convolutional" and (s.get("stride", 1) != 1 or s.get("pad", 0) != 1):
            raise InputError(f"cfg line {s.line}: layer {s.index} [convolutional] is not "
                             "stride=1 pad=1 as in yolov3-tiny", hint=_HINT)  # fmt: skip
    anchors: list[tuple[tuple[float, float], ...]] = []
    for s in yolos:
        flat, mask = s.numbers("anchors"), s.ints("mask")
        pairs = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        if len(flat) % 2 or len(mask) != 3 or any(not 0 <= m < len(pairs) for m in mask):
            raise InputError(f"cfg line {s.line}: [yolo] needs 3 mask entries into its anchors",
                             hint=_HINT)  # fmt: skip
        anchors.append(tuple(pairs[m] for m in mask))
    return TinyLayout(n_classes, tuple(anchors), tuple(conv_specs(layers)))


@dataclass(frozen=True)
class DarknetHeader:
    major: int
    minor: int
    revision: int
    seen: int
    size: int  # bytes: 20 (int64 seen) or 16


@dataclass
class DarknetWeights:
    """A weights file read against its convolutions: ``tensors`` by zoo initializer name."""

    path: str
    bytes: int
    header: DarknetHeader
    values: int
    tensors: dict[str, np.ndarray] = field(repr=False)
    sha256: str = ""


def _header(path: Path, blob: bytes, total: int) -> DarknetHeader:
    """The header from the file's first (up to) 20 bytes ``blob``; ``total`` is the file size."""
    if len(blob) < 12:
        raise ModelLoadError(f"{path}: {total} bytes, too short for a darknet weights header")
    major, minor, revision = struct.unpack("<3i", blob[:12])
    if not (0 <= major < 1000 and 0 <= minor < 1000 and 0 <= revision < 1_000_000):
        raise ModelLoadError(
            f"{path}: not a darknet weights file (header version {major}.{minor}.{revision})",
            hint="give the .weights file darknet wrote (e.g. yolov3-tiny.weights)",
        )
    wide = major * 10 + minor >= 2
    size = 20 if wide else 16
    if len(blob) < size:
        raise ModelLoadError(f"{path}: {total} bytes, too short for a darknet weights header")
    (seen,) = struct.unpack("<q" if wide else "<i", blob[12:size])
    return DarknetHeader(major, minor, revision, seen, size)


def read_weights(path: str | os.PathLike[str], convs: Sequence[ConvSpec]) -> DarknetWeights:
    """Read ``path`` against ``convs`` (see the module docstring); the file must be exactly the
    header plus every convolution's values, or :class:`ModelLoadError` says by how much not
    (checked from the header and the file size, before the values are read)."""
    p = Path(path)
    try:
        with p.open("rb") as f:
            total = os.fstat(f.fileno()).st_size
            head = _header(p, f.read(20), total)
            values = sum(c.count for c in convs)
            expected = head.size + 4 * values
            if total != expected:
                diff = total - expected
                raise ModelLoadError(
                    f"{p}: {total:,} bytes, expected {expected:,} ({head.size}-byte header + "
                    f"{values:,} float32 for {len(convs)} convolutions): "
                    f"{abs(diff):,} bytes too {'many' if diff > 0 else 'few'}",
                    hint="the weights do not belong to this cfg, or the file is truncated",
                )
            f.seek(0)
            blob = f.read()
    except FileNotFoundError:
        raise ModelLoadError(f"{p}: no such weights file") from None
    except IsADirectoryError:
        raise ModelLoadError(f"{p}: is a folder, not a weights file") from None
    except OSError as exc:
        raise ModelLoadError(f"{p}: cannot read ({exc.strerror})") from None
    if len(blob) != expected:  # changed while being read
        raise ModelLoadError(f"{p}: read {len(blob):,} bytes, expected {expected:,}")
    data = np.frombuffer(blob, "<f4", offset=head.size).astype(np.float32)
    tensors: dict[str, np.ndarray] = {}
    at = 0

    def take(shape: tuple[int, ...]) -> np.ndarray:
        nonlocal at
        n = int(np.prod(shape))
        at += n
        return data[at - n : at].reshape(shape)

    for c in convs:
        name = f"layers.{c.index}"
        bias = take((c.filters,))
        if c.batch_normalize:
            tensors[f"{name}.bn.bias"] = bias
            tensors[f"{name}.bn.weight"] = take((c.filters,))
            tensors[f"{name}.bn.running_mean"] = take((c.filters,))
            tensors[f"{name}.bn.running_var"] = take((c.filters,))
        else:
            tensors[f"{name}.conv.bias"] = bias
        tensors[f"{name}.conv.weight"] = take((c.filters, c.in_channels, c.size, c.size))
    assert at == values  # the size check above makes this hold
    digest = hashlib.sha256(blob).hexdigest()
    return DarknetWeights(str(p), len(blob), head, values, tensors, digest)


def _layout(cfg: str | os.PathLike[str] | None) -> TinyLayout:
    """The checked layout of the cfg file (errors name it), or darknet's own without one."""
    if cfg is None:
        return yolov3_tiny_layout()
    try:
        text = Path(cfg).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelLoadError(f"{cfg}: no such cfg file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{cfg}: cannot read as a darknet cfg ({exc})") from None
    try:
        return yolov3_tiny_layout(parse_cfg(text))
    except InputError as exc:
        raise InputError(f"{cfg}: {exc.message}", hint=exc.hint) from None


def anchors_metadata(anchors: Sequence[Sequence[tuple[float, float]]]) -> str:
    """``((81, 82), ...), ((10, 14), ...)`` -> ``"81,82 135,169 344,319;10,14 23,27 37,58"``."""
    return ";".join(" ".join(f"{w:g},{h:g}" for w, h in group) for group in anchors)


def load_darknet(
    weights: str | os.PathLike[str], cfg: str | os.PathLike[str] | None = None
) -> ir.Model:
    """The zoo YOLOv3-tiny graph (:func:`onnxfit.zoo.yolo.yolov3_tiny`) with Darknet weights.

    ``cfg`` (optional) must be the yolov3-tiny layout; its classes and anchors are used (without
    it: darknet's ``yolov3-tiny.cfg``, 80 COCO classes). The model carries ``metadata_props``
    ``onnxfit.task=detect``, ``onnxfit.decoder=yolov3``, ``onnxfit.preset=darknet`` and
    ``onnxfit.anchors`` (13x13 head first), plus the weights file's name and sha256.
    """
    layout = _layout(cfg)
    read = read_weights(weights, layout.convs)
    model = yolov3_tiny(seed=0, num_classes=layout.classes)
    inits = model.graph.initializers
    missing = sorted(set(read.tensors) - set(inits))
    if missing:  # a bug: the cfg check passed but the graph lacks a tensor
        raise RuntimeError(f"zoo graph has no initializer {missing[0]}")
    for name, array in read.tensors.items():
        old = inits[name].const_value
        if old is None or tuple(old.shape) != array.shape:
            raise RuntimeError(f"{name}: zoo graph shape {old and old.shape} != {array.shape}")
        inits[name].const_value = ir.tensor(np.ascontiguousarray(array), name=name)
    meta = model.metadata_props
    meta.pop("onnxfit.zoo.seed", None)
    meta.update({  # read by onnxfit.data.model_info.describe_model
        "onnxfit.task": "detect", "onnxfit.decoder": "yolov3", "onnxfit.preset": "darknet",
        "onnxfit.anchors": anchors_metadata(layout.anchors),
        "onnxfit.zoo.weights": Path(read.path).name,
        "onnxfit.zoo.weights_sha256": read.sha256,
        "onnxfit.zoo.classes": str(layout.classes),
    })  # fmt: skip
    model.doc_string = (
        f"Tiny-YOLOv3 (darknet cfg/yolov3-tiny.cfg), raw head outputs; trained darknet weights "
        f"{Path(read.path).name} (version {read.header.major}.{read.header.minor}."
        f"{read.header.revision}, seen {read.header.seen})"
    )
    return model
