"""Labelled evaluation sets, preprocessed in memory: the data the evaluator scores models on.

Two folder layouts (those of ``../shared/data``; :func:`dataset_task` tells them apart):

* **classification** — images anywhere under the folder and a ``labels.tsv`` with ``file`` and
  ``class_index`` columns (matched by base name), as ``imagenet-sample``;
* **detection** — ``images/**`` with YOLO-format ``labels/**.txt`` mirroring them
  (``class cx cy w h`` normalised), as ``coco-sample``.

:func:`load_labelled` reads either into an :class:`EvalSet`: the preprocessed images ``x``
(float32 ``[N, 3, H, W]``, sorted path order), the labels (class indices, or per image the
ground-truth boxes in original-image pixels with their classes and the letterbox geometry),
the paths, and the files it could not use. ``exclude`` leaves out given files (e.g. the images
used for calibration, so that evaluation stays disjoint from it), ``offset`` / ``limit`` take a
slice of what is left.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from onnxfit.errors import InputError, OnnxfitError

if TYPE_CHECKING:
    from onnxfit.data.images import ImageMeta, Preset

__all__ = ["EvalSet", "Task", "check_labels", "dataset_task", "load_eval_set", "load_labelled"]

logger = logging.getLogger(__name__)

Task = Literal["classify", "detect"]
Truth = tuple[np.ndarray, np.ndarray]  # (boxes [G, 4] xyxy original pixels, classes [G])


@dataclass
class EvalSet:
    """Preprocessed, labelled images (module docstring). ``labels`` for classification,
    ``truth`` + ``metas`` for detection."""

    task: Task
    x: np.ndarray = field(repr=False)
    paths: list[str]
    source: str
    preset: str
    labels: np.ndarray | None = None
    truth: list[Truth] | None = field(default=None, repr=False)
    metas: list[ImageMeta] | None = field(default=None, repr=False)
    skipped: list[str] = field(default_factory=list)
    excluded: int = 0

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, stop: int) -> EvalSet:
        """The first ``stop`` samples (a view; nothing is copied)."""
        return EvalSet(
            self.task,
            self.x[:stop],
            self.paths[:stop],
            self.source,
            self.preset,
            None if self.labels is None else self.labels[:stop],
            None if self.truth is None else self.truth[:stop],
            None if self.metas is None else self.metas[:stop],
            list(self.skipped),
            self.excluded,
        )

    def _pick(self, idx: list[int]) -> EvalSet:
        return EvalSet(
            self.task,
            self.x[idx],
            [self.paths[i] for i in idx],
            self.source,
            self.preset,
            None if self.labels is None else self.labels[idx],
            None if self.truth is None else [self.truth[i] for i in idx],
            None if self.metas is None else [self.metas[i] for i in idx],
            list(self.skipped),
            self.excluded,
        )

    def split(self, n: int) -> tuple[EvalSet, EvalSet]:
        """(the first ``n`` samples, the rest); the rest counts the first as left out."""
        head, tail = self.take(n), self._pick(list(range(n, len(self))))
        tail.excluded += len(head)
        return head, tail

    def without(self, paths: Iterable[str | os.PathLike[str]]) -> EvalSet:
        """The set minus the images at ``paths`` (compared resolved), counted as left out."""
        gone = {Path(p).resolve() for p in paths}
        keep = [i for i, p in enumerate(self.paths) if Path(p).resolve() not in gone]
        out = self._pick(keep)
        out.excluded += len(self) - len(keep)
        return out

    @property
    def ground_truth_boxes(self) -> int:
        return sum(len(c) for _, c in self.truth) if self.truth is not None else 0

    def describe(self) -> str:
        """e.g. ``imagenet-sample (500 labelled images, preset imagenet)``."""
        what = "labelled images" if self.task == "classify" else "images with boxes"
        text = f"{self.source} ({len(self)} {what}, preset {self.preset}"
        if self.excluded:
            text += f", {self.excluded} calibration image(s) left out"
        return text + ")"

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "source": self.source,
            "samples": len(self),
            "preset": self.preset,
            "excluded": self.excluded,
            "skipped": list(self.skipped),
        }


def dataset_task(folder: str | os.PathLike[str]) -> Task:
    """``classify`` for a folder with ``labels.tsv``, ``detect`` for ``images/`` + ``labels/``."""
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such dataset folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder", hint="give the dataset's folder")
    if (root / "labels.tsv").is_file():
        return "classify"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "detect"
    raise InputError(
        f"{root}: neither labels.tsv (classification) nor images/ + labels/ (detection) there",
        hint="see ../shared/data/imagenet-sample and coco-sample for the two layouts",
    )


def check_labels(labels: np.ndarray, num_classes: int, *, what: str = "labels") -> None:
    """:class:`InputError` unless every label is a class index of a ``num_classes`` model."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"{what} run from {int(labels.min())} to {int(labels.max())}, but the model has "
            f"{num_classes} classes",
            hint="use an evaluation set made for this model's classes",
        )


def _select(
    items: list[tuple[Path, Any]],
    exclude: Iterable[str | os.PathLike[str]],
    offset: int,
    limit: int | None,
) -> tuple[list[tuple[Path, Any]], int]:
    gone = {Path(p).resolve() for p in exclude}
    kept = [it for it in items if it[0].resolve() not in gone] if gone else items
    excluded = len(items) - len(kept)
    kept = kept[offset:]
    return (kept[:limit] if limit is not None else kept), excluded


def load_labelled(
    folder: str | os.PathLike[str],
    preset: str | Preset,
    *,
    limit: int | None = None,
    offset: int = 0,
    exclude: Iterable[str | os.PathLike[str]] = (),
    num_classes: int | None = None,
) -> EvalSet:
    """Read a labelled folder of either layout (module docstring) into an :class:`EvalSet`.

    Unreadable images are skipped and listed; a class label outside ``num_classes`` raises
    :class:`InputError` (classification) or drops that box (detection, listed in ``skipped``);
    no usable image raises :class:`InputError`.
    """
    from onnxfit.data.images import get_preset, scan_images

    root = Path(folder)
    task = dataset_task(root)
    pre = get_preset(preset)
    if limit is not None and limit < 1:
        raise InputError(f"evaluation limit must be >= 1, got {limit}")
    if task == "classify":
        from onnxfit.data.tasks import labels_for, read_labels_tsv

        table = read_labels_tsv(root / "labels.tsv")
        paths = scan_images(root, recursive=True).images
        idx, _ = labels_for(paths, table)
        items: list[tuple[Path, Any]] = [
            (p, int(c)) for p, c in zip(paths, idx, strict=True) if c >= 0
        ]
        if num_classes is not None and items:
            what = f"labels in {root / 'labels.tsv'}"
            check_labels(np.array([c for _, c in items], np.int64), num_classes, what=what)
    else:
        img_root, lbl_root = root / "images", root / "labels"
        items = []
        for p in scan_images(img_root, recursive=True).images:
            label = (lbl_root / p.relative_to(img_root)).with_suffix(".txt")
            if label.is_file():
                items.append((p, label))
    chosen, excluded = _select(items, exclude, offset, limit)
    if not chosen:
        where = "labels.tsv lists no image there" if task == "classify" else "no image has labels"
        raise InputError(
            f"{root}: nothing to evaluate ({where}"
            + (f"; {excluded} left out as calibration images)" if excluded else ")"),
            hint="the file column of labels.tsv names the images; labels/ mirrors images/",
        )
    return _read(root, task, pre, chosen, excluded, num_classes)


def _read(
    root: Path,
    task: Task,
    pre: Preset,
    chosen: list[tuple[Path, Any]],
    excluded: int,
    num_classes: int | None,
) -> EvalSet:
    from onnxfit.data.images import preprocess_with_meta
    from onnxfit.data.metrics import read_yolo_labels

    arrays, paths, labels, truth, metas, skipped = [], [], [], [], [], []
    for path, label in chosen:
        try:
            arr, meta = preprocess_with_meta(path, pre)
        except (OnnxfitError, OSError, ValueError) as exc:
            skipped.append(f"{path}: {exc}")
            continue
        if task == "detect":
            try:
                boxes, classes = read_yolo_labels(label, meta.size)
            except InputError as exc:
                skipped.append(f"{label}: {exc.message}")
                continue
            bad = (classes < 0) | (classes >= num_classes) if num_classes else classes < 0
            if bad.any():
                skipped.append(f"{label}: {int(bad.sum())} box(es) with a class out of range")
                boxes, classes = boxes[~bad], classes[~bad]
            truth.append((boxes, classes))
            metas.append(meta)
        else:
            labels.append(label)
        arrays.append(arr)
        paths.append(str(path))
    if skipped:
        logger.warning("eval set: skipped %d file(s), e.g. %s", len(skipped), skipped[0])
    if not arrays:
        raise InputError(
            f"{root}: none of the {len(chosen)} labelled images could be read",
            hint="check the images are valid JPEG/PNG files",
        )
    return EvalSet(
        task=task,
        x=np.stack(arrays).astype(np.float32, copy=False),
        paths=paths,
        source=str(root),
        preset=pre.name,
        labels=np.asarray(labels, np.int64) if task == "classify" else None,
        truth=truth if task == "detect" else None,
        metas=metas if task == "detect" else None,
        skipped=skipped,
        excluded=excluded,
    )


def load_eval_set(
    folder: str | os.PathLike[str],
    preset: str | Preset,
    *,
    limit: int | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of a classification folder (``labels.tsv``): (float32 [N, 3, H, W],
    int64 [N]) in sorted path order, at most ``limit``. A missing ``labels.tsv`` raises
    :class:`InputError`; see :func:`load_labelled` for the rest."""
    root = Path(folder)
    if not (root / "labels.tsv").is_file():
        raise InputError(
            f"{root}: no labels.tsv in the evaluation folder",
            hint="add labels.tsv with columns file, class_index (see imagenet-sample)",
        )
    es = load_labelled(root, preset, limit=limit, num_classes=num_classes)
    assert es.labels is not None
    return es.x, es.labels
