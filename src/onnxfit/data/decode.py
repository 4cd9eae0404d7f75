"""Decode image files to RGB with Pillow, safely: every bad file is an :class:`ImageError`.

Checks, in order: the file exists and is a regular, non-empty file; Pillow recognizes the
format; the header's width x height is non-zero and under the pixel limit (before any pixel is
decoded, so a 20000x20000 JPEG costs a header read, not 1.2 GB); then the full decode, where a
truncated or corrupt file raises. EXIF orientation is applied (all eight cases, as
``ImageOps.exif_transpose``); grayscale, palette, CMYK and alpha images become RGB like
torchvision's ``convert("RGB")``; 16-bit greys are scaled to 8 bits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from onnxfit.errors import InputError

#: Refuse images with more pixels than this (checked from the header, before decoding).
DEFAULT_MAX_PIXELS = 50_000_000
_EXIF_ORIENTATION = 0x0112
#: EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
#: JPEG draft (DCT-domain downscale) only when the source keeps at least this factor above the
#: size the resize needs, so the antialiased resize still does the final reduction.
DRAFT_MARGIN = 2


class ImageError(InputError):
    """One image could not be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | os.PathLike[str], reason: str, *, hint: str | None = None):
        super().__init__(f"{path}: {reason}", hint=hint)
        self.path = str(path)
        self.reason = reason


def open_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Image.Image:
    """Decode ``path`` to an RGB image, EXIF orientation applied.

    The pixel limit is checked on the header before anything is decoded. Raises
    :class:`ImageError` (path + reason) for every kind of bad file: missing, empty, not an
    image, truncated, corrupt, over the pixel limit.
    """
    return decode(path, max_pixels=max_pixels, needed=None)[0]


def decode(
    path: str | os.PathLike[str],
    *,
    max_pixels: int,
    needed: Callable[[int, int], tuple[int, int]] | None,
) -> tuple[Image.Image, tuple[int, int]]:
    """(RGB image, original (w, h) after orientation). ``needed(w, h)`` is the size the resize
    will produce; a JPEG at least ``2 * DRAFT_MARGIN`` times larger decodes at a DCT scale that
    keeps ``DRAFT_MARGIN`` times that size (so the decoded image may be smaller than ``w, h``)."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise ImageError(p, "no such file") from None
    except OSError as exc:
        raise ImageError(p, f"cannot read ({exc.strerror})") from None
    if not p.is_file():
        raise ImageError(p, "not a regular file")
    if st.st_size == 0:
        raise ImageError(p, "empty file (0 bytes)")
    try:
        with Image.open(p) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise ImageError(p, f"zero-size image ({w}x{h})")
            if w * h > max_pixels:
                raise ImageError(
                    p,
                    f"image is {w}x{h} = {w * h / 1e6:.1f} MP, over the limit of "
                    f"{max_pixels / 1e6:.1f} MP",
                    hint="resize it first, or raise max_pixels",
                )
            orientation = _orientation(im)
            rotated = orientation in (5, 6, 7, 8)
            if rotated:
                w, h = h, w
            if needed is not None and im.format == "JPEG":
                nw, nh = needed(w, h)
                dw, dh = nw * DRAFT_MARGIN, nh * DRAFT_MARGIN
                if w >= 2 * dw and h >= 2 * dh:
                    im.draft(
                        im.mode if im.mode in ("RGB", "L") else None,
                        (dh, dw) if rotated else (dw, dh),
                    )
            im.load()
            out = _to_rgb(im)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(p, f"refused as a decompression bomb ({exc})") from None
    except Image.UnidentifiedImageError:
        raise ImageError(p, "not an image (unrecognized format)") from None
    except MemoryError:
        raise
    except Exception as exc:  # corrupt/truncated data raises OSError, SyntaxError, ValueError...
        raise ImageError(p, f"cannot decode ({type(exc).__name__}: {exc})") from None
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        out = out.transpose(method)
    return out, (w, h)


def _orientation(im: Image.Image) -> int:
    if "exif" not in im.info and im.format not in ("PNG", "TIFF", "WEBP"):
        return 1
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block is not worth refusing the image
        return 1


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB like torchvision's ``convert("RGB")``; 16-bit and float greys are scaled to 8 bits."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, np.float64)
        peak = 65535.0 if im.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr * (255.0 / peak) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        return im.convert("RGBA").convert("RGB")
    return im.convert("RGB")
