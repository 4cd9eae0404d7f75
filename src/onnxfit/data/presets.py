"""Preprocessing presets and geometry: how an image of w x h becomes a network input.

Presets (:data:`PRESETS`):

* ``imagenet`` — shorter side to 256 (bilinear, antialiased, longer side rounded), center crop
  224, RGB, /255, mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225): torchvision's
  ``Resize(256)`` + ``CenterCrop(224)`` except that torchvision truncates the longer side.
* ``yolox`` — letterbox 416x416 with ``r = min(416/w, 416/h)``, resized image at the top-left,
  pad 114, BGR, 0-255, no normalization (the YOLOX reference preprocessing; SOURCES.md).
* ``yolov3-tiny`` — letterbox 416x416 centered, pad 128 (the ONNX Model Zoo tiny-yolov3
  ``letterbox_image``; darknet pads with 0.5 = 127.5), RGB, /255.
* ``darknet`` — darknet's own ``letterbox_image``: 416x416 centered, pad grey 0.5 (127.5 in
  0-255 units, so exactly 0.5 after /255), RGB, /255, no mean/std. The default for models
  imported from Darknet weights (:func:`onnxfit.zoo.load_darknet` marks them so).

The geometry (:func:`resize_geometry`) follows the SOURCES.md reference exactly: the shorter side
is resized to ``resize_to`` with the longer one *rounded*, then a center crop with
``round((size - crop) / 2)`` offsets; letterbox scales by ``r = min(W/w, H/h)`` to
``int(w * r) x int(h * r)`` and maps boxes back by dividing by ``r``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np

from onnxfit.errors import InputError


@dataclass(frozen=True)
class Preset:
    """How to turn an image file into a network input (float32 CHW).

    ``mode="crop"``: resize the shorter side to ``resize_to`` then center-crop ``size``.
    ``mode="letterbox"``: scale by ``min(W/w, H/h)`` into ``size`` and pad with ``pad_value``
    (0-255 units, before normalization), placed at the top-left or centered.
    Value written: ``(pixel * scale - mean[c]) / std[c]`` with ``c`` in ``channel_order``.
    """

    name: str
    size: tuple[int, int]  # (height, width) of the network input
    mode: Literal["crop", "letterbox"]
    resize_to: int = 0  # shorter side before the crop ("crop" mode)
    placement: Literal["topleft", "center"] = "center"
    pad_value: float = 114.0
    channel_order: Literal["RGB", "BGR"] = "RGB"
    scale: float = 1.0 / 255.0
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_size(self, height: int, width: int) -> Preset:
        """The same preset for another network input size (crop mode keeps the 256/224 ratio)."""
        if self.mode == "crop":
            ratio = self.resize_to / self.size[0]
            return replace(self, size=(height, width), resize_to=round(min(height, width) * ratio))
        return replace(self, size=(height, width))

    def channel_coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        """Per output channel ``a, b`` with ``value = pixel * a + b`` (float32)."""
        mean = np.asarray(self.mean, np.float64)
        std = np.asarray(self.std, np.float64)
        return (self.scale / std).astype(np.float32), (-mean / std).astype(np.float32)


PRESETS: dict[str, Preset] = {
    "imagenet": Preset(
        name="imagenet",
        size=(224, 224),
        mode="crop",
        resize_to=256,
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
    ),
    "yolox": Preset(
        name="yolox",
        size=(416, 416),
        mode="letterbox",
        placement="topleft",
        pad_value=114.0,
        channel_order="BGR",
        scale=1.0,
    ),
    "yolov3-tiny": Preset(
        name="yolov3-tiny",
        size=(416, 416),
        mode="letterbox",
        placement="center",
        pad_value=128.0,
        channel_order="RGB",
        scale=1.0 / 255.0,
    ),
    "darknet": Preset(
        name="darknet",
        size=(416, 416),
        mode="letterbox",
        placement="center",
        pad_value=127.5,
        channel_order="RGB",
        scale=1.0 / 255.0,
    ),
}


def get_preset(preset: str | Preset) -> Preset:
    """A preset by name (or the preset itself); an unknown name raises :class:`InputError`."""
    if isinstance(preset, Preset):
        return preset
    try:
        return PRESETS[preset]
    except KeyError:
        raise InputError(
            f"unknown preprocessing preset {preset!r}", hint=f"known: {', '.join(PRESETS)}"
        ) from None


@dataclass(frozen=True)
class ImageMeta:
    """Where the original image went: ``input_xy = original_xy * scale + offset``.

    ``size`` is the original (width, height) after EXIF rotation; ``resized`` the (width, height)
    the image was resized to before the crop or padding.
    """

    path: str
    size: tuple[int, int]
    resized: tuple[int, int]
    scale: tuple[float, float]
    offset: tuple[float, float]

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Map ``[..., 4]`` xyxy boxes from network-input pixels back to the original image."""
        sx, sy = self.scale
        ox, oy = self.offset
        out = np.asarray(boxes, np.float32).copy()
        out[..., 0::2] = (out[..., 0::2] - ox) / sx
        out[..., 1::2] = (out[..., 1::2] - oy) / sy
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resize_geometry(
    w: int, h: int, preset: Preset
) -> tuple[tuple[int, int], tuple[float, ...], Any]:
    """For an image of ``w x h``: the (width, height) it is resized to, ``(sx, sy, ox, oy)``
    with ``input_xy = original_xy * s + o`` (see :class:`ImageMeta`), and in crop mode the
    source box whose resize gives exactly the crop (``None`` for letterbox)."""
    out_h, out_w = preset.size
    if preset.mode == "crop":
        short = preset.resize_to
        # the shorter side becomes `short` and the longer one is *rounded* — the SOURCES.md
        # reference (top-1 77.80 % on imagenet-sample) does this; torchvision's Resize(int)
        # truncates instead, one pixel less on some images, which moved that top-1 by -0.6 pt
        if w <= h:
            rw, rh = short, round(short * h / w)
        else:
            rw, rh = round(short * w / h), short
        top = round((rh - out_h) / 2.0)
        left = round((rw - out_w) / 2.0)
        sx, sy = rw / w, rh / h
        box = (left / sx, top / sy, (left + out_w) / sx, (top + out_h) / sy)
        return (rw, rh), (sx, sy, float(-left), float(-top)), box
    r = min(out_w / w, out_h / h)
    rw, rh = max(1, int(w * r)), max(1, int(h * r))
    if preset.placement == "center":
        ox, oy = (out_w - rw) // 2, (out_h - rh) // 2
    else:
        ox, oy = 0, 0
    # boxes map back by dividing by r itself (YOLOX's convention, and SOURCES.md's reference
    # decode: 52.06 % mAP@0.5; the exact per-axis rw / w, rh / h moved it to 51.67 %)
    return (rw, rh), (r, r, float(ox), float(oy)), None


def guess_preset(
    input_shape: Sequence[int | str | None],
    *,
    output_shapes: Sequence[Sequence[int | str | None]] | None = None,
) -> str:
    """The preset name for a model input of shape ``[N, 3, H, W]`` (symbolic N allowed).

    Square inputs under 320 (224, 256, 299...) -> ``imagenet`` (use ``Preset.with_size`` when the
    size is not 224); multiples of 32 from 320 up (416, 640...) -> ``yolox``, or ``yolov3-tiny``
    when ``output_shapes`` show darknet heads (4-D with 255 = 3 x 85 channels). Anything else
    raises :class:`InputError` asking for an explicit preset.
    """
    dims = list(input_shape)
    if len(dims) == 4 and (dims[1] in (3, None) or isinstance(dims[1], str)):
        h, w = dims[2], dims[3]
        if isinstance(h, int) and isinstance(w, int):
            if h == w and 32 <= h < 320:
                return "imagenet"
            if h % 32 == 0 and w % 32 == 0 and min(h, w) >= 320:
                heads = [list(s) for s in output_shapes or ()]
                if any(len(s) == 4 and s[1] == 255 for s in heads):
                    return "yolov3-tiny"
                return "yolox"
    raise InputError(
        f"cannot guess the preprocessing for input shape {dims}",
        hint=f"expected [N, 3, H, W]; name a preset: {', '.join(PRESETS)}",
    )
