"""What an image model is, read from its input and output shapes: task, decoder, preprocessing.

Rules (:func:`describe_model`), applied unless ``task`` / ``preset`` are given:

* one output ``[N, C]`` (or ``[N, C, 1, 1]``) -> ``classify`` (softmax + top-k), C classes;
* one output ``[N, A, 5 + C]`` -> ``detect`` with the YOLOX decode (A anchor points over strides
  8/16/32; SOURCES.md: YOLOX-Nano ``[1, 3549, 85]``);
* two or more outputs ``[N, 3 * (5 + C), h, w]`` -> ``detect`` with the darknet YOLOv3(-tiny)
  decode (``[N, 255, 13, 13]`` + ``[N, 255, 26, 26]`` for COCO);
* the preprocessing preset comes from :func:`onnxfit.data.presets.guess_preset` (input shape +
  output heads); when that contradicts the task (a classifier with a large input, a detector
  with a small one) the task's own preset is used: ``imagenet`` for ``softmax``, ``yolox`` for
  ``yolox``, ``yolov3-tiny`` for ``yolov3``. The preset is resized to the model's input size.
* the model's own ``metadata_props`` come first when present (``onnxfit.task``,
  ``onnxfit.decoder``, ``onnxfit.preset``, ``onnxfit.anchors`` = ``"w,h w,h ...;w,h ..."`` per
  head, coarsest first), as :func:`onnxfit.zoo.load_darknet` writes them; an explicit ``task`` /
  ``preset`` still wins, and a decoder the output shapes contradict is refused.

:func:`model_preset` is the one place that decides the preprocessing of an ``onnx_ir.Model``
(calibration and evaluation folders of ``optimize`` ask it): the rules above for an image
model, else :func:`~onnxfit.data.presets.guess_preset` from the input shape alone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from onnxfit.data.presets import Preset, get_preset, guess_preset
from onnxfit.errors import InputError

__all__ = [
    "Decoder",
    "ModelInfo",
    "Task",
    "check_options",
    "describe_model",
    "guess_task",
    "load_class_names",
    "model_preset",
    "parse_anchors",
    "split_cores",
]

log = logging.getLogger(__name__)

Task = Literal["classify", "detect"]
Decoder = Literal["softmax", "yolox", "yolov3"]
TASKS: tuple[str, ...] = ("classify", "detect")
_DEFAULT_PRESET: dict[str, str] = {"softmax": "imagenet", "yolox": "yolox", "yolov3": "yolov3-tiny"}
Shape = Sequence[int | str | None]


@dataclass(frozen=True)
class ModelInfo:
    """An image model's task, output decoder, input and preprocessing preset."""

    task: Task
    decoder: Decoder
    input_name: str
    input_dtype: np.dtype
    fixed_batch: int | None
    preset: Preset
    num_classes: int | None
    outputs: tuple[str, ...]
    anchors: tuple[tuple[tuple[float, float], ...], ...] | None = None  # YOLOv3, from metadata

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "decoder": self.decoder,
            "input": self.input_name,
            "input_dtype": str(self.input_dtype),
            "fixed_batch": self.fixed_batch,
            "preset": self.preset.name,
            "input_size": list(self.preset.size),
            "num_classes": self.num_classes,
            "outputs": list(self.outputs),
            "anchors": None if self.anchors is None else [list(map(list, g)) for g in self.anchors],
        }


def _int(d: Any) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def guess_task(output_shapes: Sequence[Shape]) -> tuple[Task, Decoder, int | None] | None:
    """``(task, decoder, classes)`` from the output shapes, or None when they fit no rule."""
    shapes = [list(s) for s in output_shapes]
    if len(shapes) == 1:
        s = shapes[0]
        if len(s) == 2 or (len(s) == 4 and s[2:] == [1, 1]):
            return "classify", "softmax", _int(s[1])
        last = _int(s[2]) if len(s) == 3 else None
        if last is not None and last >= 6:
            return "detect", "yolox", last - 5
        return None
    heads = [_int(s[1]) if len(s) == 4 else None for s in shapes]
    if heads and all(c is not None and c % 3 == 0 and c // 3 >= 6 for c in heads):
        classes = {int(c) // 3 - 5 for c in heads if c is not None}
        if len(classes) == 1:
            return "detect", "yolov3", classes.pop()
    return None


def describe_model(
    inputs: Sequence[Any],
    outputs: Sequence[Any],
    *,
    task: str | None = None,
    preset: str | Preset | None = None,
    metadata: Mapping[str, str] | None = None,
) -> ModelInfo:
    """A :class:`ModelInfo` from a session's input/output specs (``name``, ``shape``, ``dtype``)
    and the model's ``metadata_props`` (``metadata``); see the module docstring. Raises
    :class:`InputError` when the model is not a one-input ``[N, 3, H, W]`` image model or the
    task cannot be told (hint: ``--task``)."""
    if len(inputs) != 1:
        raise InputError(
            f"the model has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); "
            "run and eval need an image model with one input [N, 3, H, W]"
        )
    spec = inputs[0]
    shape = list(spec.shape)
    if len(shape) != 4 or _int(shape[1]) not in (3, None):
        raise InputError(
            f"input {spec.name!r} has shape {shape}; expected an image batch [N, 3, H, W]"
        )
    dtype = np.dtype(spec.dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float16)):
        raise InputError(
            f"input {spec.name!r} is {dtype}; run and eval feed float32 (or float16) images",
        )
    out_shapes = [list(o.shape) for o in outputs]
    guessed = guess_task(out_shapes)
    meta = dict(metadata or {})
    said: Any = meta.get("onnxfit.decoder")
    if said in _DEFAULT_PRESET:
        if guessed is not None and guessed[1] != said:
            raise InputError(f"the model's metadata says the {said} decode, but its outputs "
                             f"{out_shapes} look like {guessed[1]}")  # fmt: skip
        guessed = guessed or ("classify" if said == "softmax" else "detect", said, None)
    preset = preset if preset is not None else meta.get("onnxfit.preset")
    if task is not None and task not in TASKS:
        raise InputError(f"unknown task {task!r}", hint="use classify or detect")
    found: tuple[Task, Decoder, int | None]
    if guessed is not None:
        found = guessed
    elif task == "classify" and len(out_shapes) == 1 and len(out_shapes[0]) >= 2:
        found = ("classify", "softmax", _int(out_shapes[0][1]))
    else:
        raise InputError(
            f"cannot tell the task from the model's outputs {out_shapes}",
            hint="classification needs one [N, C] output; detection a YOLOX [N, A, 5+C] "
            "output or YOLOv3 heads [N, 3*(5+C), h, w]" + ("" if task else "; or pass --task"),
        )
    if task is not None and task != found[0]:
        raise InputError(
            f"the task is {task}, but the model's outputs {out_shapes} look like {found[0]} "
            f"(the {found[1]} decode)",
            hint=f"use --task {found[0]} and data for it, or a {task} model",
        )
    kind, decoder, classes = found
    return ModelInfo(
        task=kind,
        decoder=decoder,
        input_name=spec.name,
        input_dtype=dtype,
        fixed_batch=_int(shape[0]),
        preset=_preset(shape, out_shapes, decoder, preset),
        num_classes=classes,
        outputs=tuple(o.name for o in outputs),
        anchors=parse_anchors(meta.get("onnxfit.anchors")),
    )


def model_preset(model: Any, preset: str | Preset | None = None) -> Preset:
    """The preprocessing of ``model`` (an ``onnx_ir.Model``), resized to its input: ``preset``
    when given, else the module's rules (metadata, then task and shapes); a model that is not a
    classify/detect image model gets :func:`guess_preset` of its input shape (InputError when
    it has no single image input)."""
    from types import SimpleNamespace

    def spec(v: Any) -> Any:
        dims = [] if v.shape is None else [d if isinstance(d, int) else None for d in v.shape]
        dtype = v.dtype.numpy() if v.dtype is not None else np.dtype(np.float32)
        return SimpleNamespace(name=v.name, shape=dims, dtype=dtype)

    inputs = [spec(v) for v in model.graph.inputs if not v.is_initializer()]
    outputs = [spec(v) for v in model.graph.outputs]
    try:
        return describe_model(inputs, outputs, preset=preset, metadata=model.metadata_props).preset
    except InputError:
        if len(inputs) != 1:
            raise InputError(
                f"the model has {len(inputs)} inputs; image folders feed single-input models",
                hint="give .npz inputs with one array per input name",
            ) from None
    shape = inputs[0].shape
    pre = get_preset(
        preset
        if preset is not None
        else guess_preset(shape, output_shapes=[o.shape for o in outputs])
    )
    h, w = (shape[2], shape[3]) if len(shape) == 4 else (None, None)
    if isinstance(h, int) and isinstance(w, int) and (h, w) != pre.size:
        pre = pre.with_size(h, w)
    return pre


def parse_anchors(text: str | None) -> tuple[tuple[tuple[float, float], ...], ...] | None:
    """``"81,82 135,169;10,14 23,27"`` -> ``(((81, 82), (135, 169)), ((10, 14), (23, 27)))``."""
    if not text:
        return None
    try:
        groups = [[tuple(map(float, p.split(","))) for p in g.split()] for g in text.split(";")]
    except ValueError:
        groups = []
    if not groups or any(not g or any(len(p) != 2 for p in g) for g in groups):
        raise InputError(f"the model's metadata onnxfit.anchors={text!r} is not 'w,h w,h;...'")
    return tuple(tuple((p[0], p[1]) for p in g) for g in groups)


def _preset(shape: list[Any], out_shapes: list[list[Any]], decoder: str, given: Any) -> Preset:
    h, w = _int(shape[2]), _int(shape[3])
    if given is not None:
        pre = get_preset(given)
    else:
        try:
            name = guess_preset(shape, output_shapes=out_shapes)
        except InputError:
            if h is not None and w is not None:
                raise
            name = _DEFAULT_PRESET[decoder]  # symbolic H, W: the task's preset at its own size
            log.info("input size is symbolic: using preset %s at its own size", name)
        if (get_preset(name).mode == "crop") != (decoder == "softmax"):
            name = _DEFAULT_PRESET[decoder]
        pre = get_preset(name)
    if h is not None and w is not None and (h, w) != pre.size:
        pre = pre.with_size(h, w)
    return pre


def load_class_names(
    labels: str | os.PathLike[str] | Sequence[str] | None, info: ModelInfo
) -> tuple[str, ...] | None:
    """Class names from a file (:func:`onnxfit.data.tasks.read_class_names`) or a list; their
    number must match the model's classes when both are known."""
    if labels is None:
        return None
    if isinstance(labels, str | os.PathLike):
        from onnxfit.data.tasks import read_class_names

        names = tuple(read_class_names(labels))
        where = f"{labels}"
    else:
        names = tuple(str(n) for n in labels)
        where = "the class names given"
    if info.num_classes is not None and len(names) != info.num_classes:
        raise InputError(
            f"{where} has {len(names)} class names but the model has {info.num_classes} classes",
            hint="use the label file that belongs to this model",
        )
    return names


def check_options(
    top_k: int, score: float, iou: float, max_det: int, slots: int, batch: Any
) -> None:
    """Raise :class:`InputError` for a run option out of range (top-k, thresholds, batch)."""
    checks = [
        (top_k >= 1, f"top-k must be >= 1, got {top_k}"),
        (0.0 <= score <= 1.0, f"score threshold must be within 0..1, got {score}"),
        (0.0 < iou <= 1.0, f"IoU threshold must be within (0, 1], got {iou}"),
        (max_det >= 1, f"max detections must be >= 1, got {max_det}"),
        (slots >= 1, f"slots must be >= 1, got {slots}"),
        (
            batch == "auto" or (type(batch) is int and batch >= 1),
            f"batch must be a positive integer or 'auto', got {batch!r}",
        ),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)


def split_cores(target: str) -> tuple[int | None, int | None]:
    """Default ``(inference threads, preprocessing workers)`` for ``target`` on this host.

    When the model will run on the CPU provider, inference and preprocessing share the cores:
    half go to each (workers get the smaller half, at least 1 each). Measured on 2 pinned
    cores (benchmarks/results/e2e-device.md): with 2 ORT threads next to 2 preprocessing
    threads, ShuffleNetV2 ran end to end at 109 img/s against 167 for 1 x 1 (inference spent
    8.6 against 5.2 CPU ms per image: ORT's intra-op threads spin while they wait); YOLOX-Nano
    was about even (59 against 54). Otherwise (GPU providers) ``(None, None)``: the session's
    and the preprocessor's own defaults.
    """
    import onnxruntime as ort

    from onnxfit.targets import get_target

    tgt = get_target(target)
    have = set(ort.get_available_providers())
    first = next((p for p in tgt.providers if p in have), "CPUExecutionProvider")
    if first != "CPUExecutionProvider":
        return None, None
    try:
        host = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        host = os.cpu_count() or 1
    cores = max(1, min(tgt.worker_cores, host))
    workers = max(1, cores // 2)
    return max(1, cores - workers), workers
