"""Results of ``onnxfit run`` / ``eval``: per-image results, bad inputs, stage timings, summary.

Also :func:`collect_images`, which turns the command-line inputs (files and folders) into the
list of images to run and the list of entries it could not use, each with its reason.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxfit.data.detection import Detections
from onnxfit.data.images import ImageMeta, scan_images
from onnxfit.data.model_info import ModelInfo
from onnxfit.data.tasks import Classification
from onnxfit.errors import InputError

__all__ = ["BadInput", "ImageResult", "PipelineStats", "RunResult", "collect_images"]


def shown(text: str) -> str:
    """``text`` as UTF-8 can carry it: the bytes of a file name that are not UTF-8 (which
    Python keeps as lone surrogates) become ``\\xNN``, so a JSON line can always be written."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@dataclass(frozen=True)
class BadInput:
    """An input that could not be used: its path, why, and a short kind for counting
    (``not an image``, ``unreadable folder``, ``unreadable image``, ``unlabelled``,
    ``label without image``, ``bad label``)."""

    path: str
    reason: str
    kind: str

    def to_dict(self) -> dict[str, str]:
        return {"path": shown(self.path), "kind": self.kind, "reason": shown(self.reason)}


def count_kinds(bad: Sequence[BadInput]) -> dict[str, int]:
    """``kind -> count``, most frequent first."""
    return dict(Counter(b.kind for b in bad).most_common())


@dataclass
class ImageResult:
    """One input image: top-k (classification) or boxes (detection) in original-image pixels,
    or ``error`` (the reason it could not be used)."""

    index: int
    path: str
    size: tuple[int, int] | None = None  # original (width, height)
    classification: Classification | None = None
    detections: Detections | None = None
    error: str | None = None
    names: Sequence[str] | None = field(default=None, repr=False)
    meta: ImageMeta | None = field(default=None, repr=False)

    def name_of(self, c: int) -> str | None:
        names = self.names
        return names[c] if names is not None and 0 <= c < len(names) else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: ``path``, ``width``/``height``, then ``top_k`` (class, name,
        probability) or ``boxes`` (``[x1, y1, x2, y2, score, class, name]``), or ``error``."""
        d: dict[str, Any] = {"path": shown(self.path)}
        if self.error is not None:
            d["error"] = shown(self.error)
            return d
        if self.size is not None:
            d["width"], d["height"] = self.size
        if self.classification is not None:
            c = self.classification
            d["top_k"] = [
                {"class": i, "name": self.name_of(i), "probability": round(p, 6)}
                for i, p in zip(c.indices, c.probabilities, strict=True)
            ]
        if self.detections is not None:
            det = self.detections
            d["boxes"] = [
                [*(round(float(v), 2) for v in box), round(float(s), 5), int(k), self.name_of(k)]
                for box, s, k in zip(det.boxes, det.scores, det.classes.tolist(), strict=True)
            ]
        return d


@dataclass
class PipelineStats:
    """Counters and busy times of the stages (seconds, summed over batches).

    ``preprocess_s``: the loader workers' busy time divided by their number (so images /
    preprocess_s is the preprocessing stage's rate); ``infer_wait_s``: inference waited for
    preprocessed images (preprocessing is the bottleneck when it is large).
    """

    images: int = 0
    failed: int = 0
    runs: int = 0
    wall_s: float = 0.0
    preprocess_s: float = 0.0
    inference_s: float = 0.0
    postprocess_s: float = 0.0
    infer_wait_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        def rate(busy: float) -> float | None:
            return round(self.images / busy, 2) if busy > 0 else None

        return {
            "images": self.images,
            "failed": self.failed,
            "runs": self.runs,
            "wall_s": round(self.wall_s, 4),
            "images_per_s": round(self.images_per_s, 2),
            "preprocess_s": round(self.preprocess_s, 4),
            "inference_s": round(self.inference_s, 4),
            "postprocess_s": round(self.postprocess_s, 4),
            "infer_wait_s": round(self.infer_wait_s, 4),
            "preprocess_images_per_s": rate(self.preprocess_s),
            "inference_images_per_s": rate(self.inference_s),
        }


@dataclass
class RunResult:
    """What ``run_images`` did: the model's task, the settings, bad inputs, timings, results."""

    model: str
    info: ModelInfo
    batch: int
    chunk: int
    workers: int
    target: str
    provider: str
    images: int
    bad: list[BadInput]
    stats: PipelineStats
    results: list[ImageResult] = field(default_factory=list)
    tuning: Any = None

    @property
    def ok(self) -> int:
        return self.stats.images - self.stats.failed

    def to_dict(self, *, include_results: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model": self.model,
            "model_info": self.info.to_dict(),
            "batch": self.batch,
            "chunk": self.chunk,
            "workers": self.workers,
            "target": self.target,
            "provider": self.provider,
            "images": self.images,
            "ok": self.ok,
            "bad_count": len(self.bad),
            "bad_by_kind": count_kinds(self.bad),
            "bad": [b.to_dict() for b in self.bad],
            "stats": self.stats.to_dict(),
            "tuning": self.tuning.to_dict() if self.tuning is not None else None,
        }
        if include_results:
            d["results"] = [r.to_dict() for r in self.results]
        return d


def collect_images(
    inputs: Sequence[str | os.PathLike[str]],
) -> tuple[list[Path], list[BadInput]]:
    """Image files from ``inputs`` (files kept as given, in order; folders recursed, sorted),
    and every entry that was skipped (not an image extension, hidden, unreadable folder).

    A path that does not exist raises :class:`InputError`; so does finding no image at all.
    """
    if not inputs:
        raise InputError("no input images given", hint="give image files or folders")
    paths: list[Path] = []
    bad: list[BadInput] = []
    for item in inputs:
        p = Path(item)
        if not p.exists():
            raise InputError(f"{p}: no such file or folder")
        if not p.is_dir():
            paths.append(p)
            continue
        try:
            scan = scan_images(p, recursive=True)
        except InputError as exc:  # exists but cannot be listed
            bad.append(BadInput(str(p), exc.message.removeprefix(f"{p}: "), "unreadable folder"))
            continue
        paths.extend(scan.images)
        for q, why in scan.skipped:
            kind = "unreadable folder" if why.startswith("cannot list") else "not an image"
            bad.append(BadInput(str(q), why, kind))
    if not paths:
        detail = (
            f" ({len(bad)} entries skipped, e.g. {bad[0].path}: {bad[0].reason})" if bad else ""
        )
        raise InputError(
            f"no image files found in {', '.join(map(str, inputs))}{detail}",
            hint="image extensions: .jpg .jpeg .png .bmp .webp .tif .tiff .gif",
        )
    return paths, bad
