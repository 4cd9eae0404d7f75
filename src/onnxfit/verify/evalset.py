"""Evaluation sets: images + ``labels.tsv`` (the format of ``../shared/data/imagenet-sample``)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from onnxfit.errors import InputError
from onnxfit.verify.compare import check_labels

if TYPE_CHECKING:
    from onnxfit.data.images import Preset

logger = logging.getLogger(__name__)


def load_eval_set(
    folder: str | os.PathLike[str],
    preset: str | Preset,
    *,
    limit: int | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an evaluation folder: the images under ``folder`` (any depth) that
    ``labels.tsv`` (``file`` and ``class_index`` columns, matched by base name) lists, as in
    ``../shared/data/imagenet-sample``.

    Returns (float32 [N, 3, H, W], int64 [N]) in sorted path order, at most ``limit``.
    Unreadable images are skipped with a warning. Labels outside ``num_classes`` (when given),
    a missing ``labels.tsv`` or no usable image raise :class:`InputError`.
    """
    from onnxfit.data.images import preprocess, scan_images
    from onnxfit.data.tasks import labels_for, read_labels_tsv

    root = Path(folder)
    tsv = root / "labels.tsv"
    if not tsv.is_file():
        raise InputError(
            f"{root}: no labels.tsv in the evaluation folder",
            hint="add labels.tsv with columns file, class_index (see imagenet-sample)",
        )
    table = read_labels_tsv(tsv)
    paths = scan_images(root, recursive=True).images  # labels.tsv etc. are expected there
    idx, _ = labels_for(paths, table)
    items = [(p, int(c)) for p, c in zip(paths, idx, strict=True) if c >= 0]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(
            f"{root}: no image there is listed in labels.tsv",
            hint="the file column must name the images (by base name)",
        )
    if num_classes is not None:
        check_labels(
            np.array([c for _, c in items], dtype=np.int64), num_classes, what=f"labels in {tsv}"
        )
    arrays, labels, skipped = [], [], []
    for path, cls in items:
        try:
            arrays.append(preprocess(path, preset))
            labels.append(cls)
        except InputError as exc:
            skipped.append(str(exc))
    if skipped:
        logger.warning(
            "eval set: skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0]
        )
    if not arrays:
        raise InputError(
            f"{root}: none of the {len(items)} labelled images could be read",
            hint="check the images are valid JPEG/PNG files",
        )
    return np.stack(arrays).astype(np.float32, copy=False), np.asarray(labels, dtype=np.int64)
