"""Image preprocessing: decode, resize, crop or letterbox, normalize, straight into a batch buffer.

One pass per image, no intermediate float image: the file is decoded with Pillow (JPEG DCT
scaling via ``draft`` only when asked, and only when the source is at least 4x the resized
size: it is faster on camera-size photos but not bit-exact with the reference), resized with
Pillow's antialiased bilinear filter *only over the region that survives the crop* (``resize(box=)``
gives the same pixels as resize-then-crop), and the uint8 result is scaled, normalized and
transposed HWC -> CHW by one fused multiply-add per channel written into the caller's buffer.
``benchmarks/bench_preprocess.py`` holds the measurement behind these choices (PIL vs OpenCV vs
simplejpeg on the project's 2-core machine, results in ``benchmarks/results/preprocess.md``):
OpenCV ``INTER_LINEAR`` needs about half the CPU but lands 1.4-2.2 grey levels (mean) away from
the PIL reference on ordinary photos and 8.8 on 2000x1500 ones (aliasing), ``INTER_AREA`` 0.7-2.4;
simplejpeg decodes the same pixels as Pillow but gained nothing once the header/EXIF read and the
copy into a PIL image are paid. Ours stays within one grey level of the reference (mean 0.02),
and the ShuffleNet top-1 on the ImageNet sample reproduces the reference exactly, which the
int8 classifier is sensitive enough to need (a one-pixel change in the resize size moved it
0.6 pt).

Presets are in :mod:`onnxfit.data.presets` (re-exported here).

Bad files never crash a batch silently: every failure is an :class:`ImageError` naming the path
and the reason (missing, empty, not an image, truncated, corrupt, over the pixel limit).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import numpy as np
from PIL import Image

from onnxfit.data.decode import DEFAULT_MAX_PIXELS, ImageError, decode, open_image
from onnxfit.data.files import IMAGE_EXTENSIONS, ImageScan, list_images, scan_images
from onnxfit.data.presets import (
    PRESETS,
    ImageMeta,
    Preset,
    get_preset,
    guess_preset,
    resize_geometry,
)
from onnxfit.errors import InputError
from onnxfit.targets import Target, get_target

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "ImageError",
    "ImageMeta",
    "ImageScan",
    "Preprocessor",
    "Preset",
    "get_preset",
    "guess_preset",
    "list_images",
    "open_image",
    "preprocess",
    "preprocess_into",
    "preprocess_with_meta",
    "resize_geometry",
    "scan_images",
]

log = logging.getLogger(__name__)


def preprocess_into(
    path: str | os.PathLike[str],
    preset: str | Preset,
    out: np.ndarray,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
) -> ImageMeta:
    """Preprocess one image file into ``out`` (float32 ``[3, H, W]``, e.g. one row of a batch).

    Returns the :class:`ImageMeta` that maps boxes back to the original image. ``draft=True``
    lets JPEGs at least 4x larger than the resized size decode at 1/2, 1/4 or 1/8 scale (much
    faster on camera-size photos; a small deviation from the full-decode reference, measured in
    ``benchmarks/bench_preprocess.py``); the default decodes at full size.
    """
    pre = get_preset(preset)
    out_h, out_w = pre.size
    if out.shape != (3, out_h, out_w) or out.dtype != np.float32:
        raise InputError(
            f"output buffer is {out.dtype}{list(out.shape)}, expected float32[3, {out_h}, {out_w}]"
        )

    def needed(w: int, h: int) -> tuple[int, int]:
        return resize_geometry(w, h, pre)[0]

    im, (w, h) = decode(path, max_pixels=max_pixels, needed=needed if draft else None)
    (rw, rh), (sx, sy, ox, oy), box = resize_geometry(w, h, pre)
    a, b = pre.channel_coefficients()
    if pre.mode == "crop":
        fx, fy = im.size[0] / w, im.size[1] / h  # < 1 after a JPEG draft
        box = (box[0] * fx, box[1] * fy, box[2] * fx, box[3] * fy)
        img = im.resize((out_w, out_h), Image.Resampling.BILINEAR, box=box)
        region = out
    else:
        img = im if im.size == (rw, rh) else im.resize((rw, rh), Image.Resampling.BILINEAR)
        pad = np.float32(pre.pad_value) * a + b
        out[...] = pad[:, None, None]
        x0, y0 = int(ox), int(oy)
        region = out[:, y0 : y0 + rh, x0 : x0 + rw]
    _normalize_into(np.asarray(img), region, a, b, bgr=pre.channel_order == "BGR")
    return ImageMeta(path=str(path), size=(w, h), resized=(rw, rh), scale=(sx, sy), offset=(ox, oy))


def _normalize_into(arr: np.ndarray, out: np.ndarray, a: np.ndarray, b: np.ndarray, *, bgr: bool):
    """``out[c] = arr[..., c'] * a[c] + b[c]`` — one fused pass per channel, HWC -> CHW."""
    for c in range(3):
        src = arr[:, :, 2 - c if bgr else c]
        if a[c] == 1.0 and b[c] == 0.0:
            np.copyto(out[c], src, casting="unsafe")
        else:
            np.multiply(src, a[c], out=out[c], casting="unsafe")
            out[c] += b[c]


def preprocess_with_meta(
    path: str | os.PathLike[str],
    preset: str | Preset,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft: bool = False,
) -> tuple[np.ndarray, ImageMeta]:
    """One image as float32 ``[3, H, W]`` plus the :class:`ImageMeta` (letterbox / crop info)."""
    pre = get_preset(preset)
    out = np.empty((3, *pre.size), np.float32)
    meta = preprocess_into(path, pre, out, max_pixels=max_pixels, draft=draft)
    return out, meta


def preprocess(
    path: str | os.PathLike[str], preset: str | Preset, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """One image as float32 ``[3, H, W]``, ready to stack into a batch."""
    return preprocess_with_meta(path, preset, max_pixels=max_pixels)[0]


class Preprocessor:
    """Preprocess batches of image files in a thread pool, straight into one batch buffer.

    ``workers`` defaults to the target's :attr:`~onnxfit.targets.Target.worker_cores` (its CPU
    cores minus the ones reserved for the game, at least 1); the default target is this host
    (``cpu``). Pillow releases the GIL while decoding and resizing, so threads scale on cores.
    """

    def __init__(
        self,
        preset: str | Preset,
        *,
        workers: int | None = None,
        target: str | Target | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        draft: bool = False,
    ) -> None:
        self.preset = get_preset(preset)
        if workers is None:
            workers = get_target(target if target is not None else "cpu").worker_cores
        if workers < 1:
            raise InputError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.max_pixels = max_pixels
        self.draft = draft
        self.errors: list[ImageError] = []
        self._pool: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image's ``(3, H, W)``."""
        return (3, *self.preset.size)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="onnxfit-preprocess")
        return self._pool

    def load(self, path: str | os.PathLike[str], out: np.ndarray) -> ImageMeta:
        """Preprocess one image into ``out`` (float32 ``[3, H, W]``) with this preprocessor's
        preset and limits; raises :class:`ImageError` for a bad file. The per-image step that
        :class:`~onnxfit.data.loader.AsyncLoader` workers run in ``onnxfit run`` / ``eval``."""
        return preprocess_into(path, self.preset, out, max_pixels=self.max_pixels, draft=self.draft)

    def batch(
        self,
        paths: Sequence[str | os.PathLike[str]],
        *,
        out: np.ndarray | None = None,
        on_error: Literal["raise", "skip"] = "raise",
    ) -> tuple[np.ndarray, list[ImageMeta]]:
        """``(float32 [N, 3, H, W], metas)`` for ``paths``, in order.

        ``out`` (at least ``[len(paths), 3, H, W]`` float32) is filled in place and a view of it
        returned. A bad file raises its :class:`ImageError` (``on_error="raise"``, after the
        whole batch finished) or is left out of the result (``"skip"``; the rows move up,
        ``metas`` lists only the images kept, and the error is logged and added to ``errors``).
        """
        n = len(paths)
        if out is None:
            out = np.empty((n, *self.shape), np.float32)
        elif (
            out.dtype != np.float32
            or out.ndim != 4
            or out.shape[0] < n
            or out.shape[1:] != self.shape
        ):
            raise InputError(
                f"batch buffer is {out.dtype}{list(out.shape)}, expected float32"
                f"[>={n}, {', '.join(map(str, self.shape))}]"
            )
        if on_error not in ("raise", "skip"):
            raise InputError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        kw = {"max_pixels": self.max_pixels, "draft": self.draft}
        if n == 1 or self.workers == 1:
            results = [_attempt(p, self.preset, out[i], kw) for i, p in enumerate(paths)]
        else:
            pool = self._executor()
            futures = [
                pool.submit(_attempt, p, self.preset, out[i], kw) for i, p in enumerate(paths)
            ]
            results = [f.result() for f in futures]
        metas: list[ImageMeta] = []
        failed: list[ImageError] = []
        for i, res in enumerate(results):
            if isinstance(res, ImageError):
                failed.append(res)
                continue
            if len(metas) != i:
                out[len(metas)] = out[i]
            metas.append(res)
        if failed and on_error == "raise":
            raise failed[0]
        for err in failed:
            log.warning("skipping %s", err)
        self.errors.extend(failed)
        return out[: len(metas)], metas

    def close(self) -> None:
        """Stop the worker threads (waits for running tasks)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Preprocessor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attempt(
    path: str | os.PathLike[str], preset: Preset, row: np.ndarray, kw: dict[str, Any]
) -> ImageMeta | ImageError:
    try:
        return preprocess_into(path, preset, row, **kw)
    except ImageError as exc:
        return exc
