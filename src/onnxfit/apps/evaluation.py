"""Accuracy of an image model on a labelled folder: top-1/top-5 or COCO-style mAP.

Two dataset layouts (those of ``../shared/data``):

* **classification** — a folder with ``labels.tsv`` (tab-separated, ``file`` and ``class_index``
  columns; images matched by base name) and the images anywhere below it; class names from a
  ``synset.txt`` there when present. Metrics: top-1 and top-5 accuracy over the images
  evaluated.
* **detection** — ``images/<split>/*.jpg`` with YOLO-format ``labels/<split>/*.txt`` mirroring
  them (``class cx cy w h``, normalized); class names from ``coco80_names.txt`` /
  ``*names*.txt`` / ``classes.txt`` when present. Metrics: mAP@0.5 and mAP@0.5:0.95 by the
  SOURCES.md method — score threshold 0.01, per-class NMS at IoU 0.45, all-point AP averaged
  over the classes present in the ground truth (:class:`onnxfit.data.metrics.DetectionEvaluator`).

Everything that does not fit is counted and listed with its path (:class:`BadInput`), never
dropped silently: images without a label (excluded), label rows or files without an image,
labels outside the model's classes (classification: image excluded; detection: the box is
dropped, the image kept), unreadable label files (image excluded), unreadable images (excluded),
non-image files (the dataset's own index files at its top level excepted).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from onnxfit.apps.pipeline import Pipeline
from onnxfit.apps.results import BadInput, ImageResult, PipelineStats, count_kinds
from onnxfit.data.images import scan_images
from onnxfit.data.metrics import DetectionEvaluator, DetectionMetrics, read_yolo_labels
from onnxfit.data.model_info import ModelInfo
from onnxfit.data.tasks import read_labels_tsv
from onnxfit.errors import InputError
from onnxfit.verify.evalset import dataset_task
from onnxfit.verify.evaluator import EVAL_IOU_THRESHOLD, EVAL_SCORE_THRESHOLD, TopKCounter

__all__ = ["EvalResult", "dataset_task", "evaluate"]

log = logging.getLogger(__name__)

#: index files a dataset keeps at its top level; not reported as "not an image"
_SIDECARS = frozenset({".tsv", ".txt", ".csv", ".json", ".yaml", ".yml", ".md", ".sha256"})


@dataclass
class EvalResult:
    """Accuracy of one model on one dataset, with everything that could not be used."""

    task: Literal["classify", "detect"]
    model: str
    dataset: str
    info: ModelInfo
    metrics: dict[str, float]
    evaluated: int
    bad: list[BadInput]
    stats: PipelineStats
    batch: int
    provider: str
    limit: int | None = None
    detection: DetectionMetrics | None = None
    class_names: tuple[str, ...] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "task": self.task,
            "model": self.model,
            "dataset": self.dataset,
            "model_info": self.info.to_dict(),
            "metrics": {k: round(float(v), 6) for k, v in self.metrics.items()},
            "evaluated": self.evaluated,
            "limit": self.limit,
            "batch": self.batch,
            "provider": self.provider,
            "bad_count": len(self.bad),
            "bad_by_kind": count_kinds(self.bad),
            "bad": [b.to_dict() for b in self.bad],
            "stats": self.stats.to_dict(),
        }
        if self.detection is not None:
            det = self.detection.to_dict()
            names = self.class_names
            if names is not None:
                det["ap50_per_class"] = {
                    (names[int(c)] if int(c) < len(names) else c): v
                    for c, v in det["ap50_per_class"].items()
                }
            d["detection"] = det
        return d


def _names_file(root: Path, task: str) -> Path | None:
    if task == "classify":
        cand = [root / "synset.txt"]
    else:
        cand = [*sorted(root.glob("*names*.txt")), root / "classes.txt", *root.glob("*.names")]
    return next((p for p in cand if p.is_file()), None)


def _scan(root: Path, bad: list[BadInput], *, top: Path) -> list[Path]:
    scan = scan_images(root, recursive=True)
    for q, why in scan.skipped:
        if q.parent == top and q.suffix.lower() in _SIDECARS:
            continue  # the dataset's own index files
        kind = "unreadable folder" if why.startswith("cannot list") else "not an image"
        bad.append(BadInput(str(q), why, kind))
    return scan.images


def evaluate(
    model: str | os.PathLike[str] | Any,
    dataset: str | os.PathLike[str],
    *,
    task: str | None = None,
    preset: str | None = None,
    batch: int | Literal["auto"] = 8,
    target: str = "cpu",
    threads: int | None = None,
    workers: int | None = None,
    limit: int | None = None,
    on_start: Callable[[Pipeline, int], None] | None = None,
    on_result: Callable[[ImageResult], None] | None = None,
) -> EvalResult:
    """Top-1/top-5 (classification) or mAP@0.5 and mAP@0.5:0.95 (detection) of ``model`` on
    ``dataset``; see the module docstring. ``limit`` keeps the first N usable images (sorted).
    ``on_start(pipeline, n)`` / ``on_result(result)`` as in
    :func:`onnxfit.apps.pipeline.run_images`.
    """
    root = Path(dataset)
    kind = dataset_task(root)
    if task is not None and task != kind:
        raise InputError(
            f"--task {task} but {root} is a {kind} dataset",
            hint="classification: labels.tsv; detection: images/ + labels/",
        )
    if limit is not None and limit < 1:
        raise InputError(f"--limit must be >= 1, got {limit}")
    names_file = _names_file(root, kind)
    with Pipeline(
        model,
        task=kind,
        preset=preset,
        labels=names_file,
        batch=batch,
        target=target,
        threads=threads,
        workers=workers,
        top_k=5,
        score_threshold=EVAL_SCORE_THRESHOLD,
        iou_threshold=EVAL_IOU_THRESHOLD,
    ) as pipe:
        run = _classify if kind == "classify" else _detect
        metrics, evaluated, bad, det = run(pipe, root, limit, on_start, on_result)
        return EvalResult(
            task=kind,
            model=str(model) if isinstance(model, str | os.PathLike) else "<in-memory model>",
            dataset=str(root),
            info=pipe.info,
            metrics=metrics,
            evaluated=evaluated,
            bad=bad,
            stats=pipe.stats,
            batch=pipe.batch_size,
            provider=pipe.session.provider,
            limit=limit,
            detection=det,
            class_names=pipe.names,
        )


def _run(
    pipe: Pipeline, paths: list[Path], bad: list[BadInput], on_start: Any, on_result: Any
) -> Any:
    if on_start is not None:
        on_start(pipe, len(paths))
    for res in pipe.results(paths):
        if on_result is not None:
            on_result(res)
        if res.error is not None:
            bad.append(BadInput(res.path, res.error, "unreadable image"))
            continue
        yield res


def _classify(
    pipe: Pipeline, root: Path, limit: int | None, on_start: Any, on_result: Any
) -> tuple[dict[str, float], int, list[BadInput], None]:
    tsv = root / "labels.tsv"
    table = read_labels_tsv(tsv)
    bad: list[BadInput] = []
    images = _scan(root, bad, top=root)
    seen = {p.name for p in images}
    for name in sorted(set(table) - seen):
        bad.append(BadInput(str(tsv), f"row for {name}: no such image", "label without image"))
    n_classes = pipe.info.num_classes
    todo: list[tuple[Path, int]] = []
    for p in images:
        c = table.get(p.name)
        if c is None:
            bad.append(BadInput(str(p), f"not listed in {tsv.name}", "unlabelled"))
        elif c < 0 or (n_classes is not None and c >= n_classes):
            hi = "?" if n_classes is None else n_classes - 1
            bad.append(
                BadInput(str(p), f"label {c} outside the model's classes 0..{hi}", "bad label")
            )
        else:
            todo.append((p, c))
    todo = todo[:limit] if limit is not None else todo
    if not todo:
        raise InputError(f"{root}: no labelled image to evaluate", hint=_first(bad))
    label_of = {str(p): c for p, c in todo}
    counter = TopKCounter((1, 5))
    for res in _run(pipe, [p for p, _ in todo], bad, on_start, on_result):
        assert res.classification is not None
        counter.add(res.classification.indices, label_of[res.path])
    if counter.count == 0:
        raise InputError(f"{root}: none of the {len(todo)} images could be read", hint=_first(bad))
    return counter.result(), counter.count, bad, None


def _detect(
    pipe: Pipeline, root: Path, limit: int | None, on_start: Any, on_result: Any
) -> tuple[dict[str, float], int, list[BadInput], DetectionMetrics]:
    img_root, lbl_root = root / "images", root / "labels"
    bad: list[BadInput] = []
    images = _scan(img_root, bad, top=img_root)
    label_files = {p.relative_to(lbl_root).with_suffix(""): p for p in lbl_root.rglob("*.txt")}
    todo: list[tuple[Path, Path]] = []
    for p in images:
        key = p.relative_to(img_root).with_suffix("")
        lbl = label_files.pop(key, None)
        if lbl is None:
            bad.append(BadInput(str(p), f"no label file {lbl_root / key}.txt", "unlabelled"))
        else:
            todo.append((p, lbl))
    for lbl in sorted(label_files.values()):
        bad.append(BadInput(str(lbl), "label file without an image", "label without image"))
    todo = todo[:limit] if limit is not None else todo
    if not todo:
        raise InputError(f"{root}: no image under images/ has a label file", hint=_first(bad))
    label_of = {str(p): lbl for p, lbl in todo}
    n_classes = pipe.info.num_classes
    evaluator = DetectionEvaluator()
    n = 0
    for res in _run(pipe, [p for p, _ in todo], bad, on_start, on_result):
        assert res.detections is not None and res.size is not None
        lbl = label_of[res.path]
        try:
            boxes, classes = read_yolo_labels(lbl, res.size)
        except InputError as exc:
            bad.append(BadInput(str(lbl), exc.message, "bad label"))
            continue
        out = (classes < 0) | (classes >= n_classes) if n_classes else classes < 0
        if out.any():
            hi = "?" if n_classes is None else n_classes - 1
            bad.append(
                BadInput(
                    str(lbl),
                    f"{int(out.sum())} box(es) with a class outside 0..{hi} (e.g. "
                    f"{int(classes[out][0])}) left out",
                    "bad label",
                )
            )
            boxes, classes = boxes[~out], classes[~out]
        evaluator.add(res.detections, boxes, classes)
        n += 1
    if n == 0:
        raise InputError(
            f"{root}: none of the {len(todo)} images could be evaluated", hint=_first(bad)
        )
    m = evaluator.result()
    return {"map50": m.map50, "map50_95": m.map50_95}, n, bad, m


def _first(bad: list[BadInput]) -> str | None:
    return f"e.g. {bad[0].path}: {bad[0].reason}" if bad else None
