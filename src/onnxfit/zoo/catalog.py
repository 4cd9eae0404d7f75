"""What the zoo holds and how to get it: :data:`ZOO_SPECS`, :func:`build` by name,
:func:`count_parameters` (torchvision's way) and :func:`build_and_save` (seeded random weights,
or YOLOv3-tiny with trained Darknet weights)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.io import FileSize, save
from onnxfit.zoo.darknet import load_darknet
from onnxfit.zoo.resnet import resnet18
from onnxfit.zoo.yolo import yolov3_tiny


@dataclass(frozen=True)
class ZooSpec:
    """What a zoo model is: its input, outputs and parameter count (with default classes)."""

    name: str
    task: str
    input_shape: tuple[int | str, ...]
    outputs: dict[str, tuple[int | str, ...]]
    parameters: int
    description: str

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "task": self.task,
            "input": {"input": list(self.input_shape)},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "parameters": self.parameters,
            "description": self.description,
        }


ZOO_SPECS: dict[str, ZooSpec] = {
    "resnet18": ZooSpec(
        "resnet18", "classification", ("batch", 3, 224, 224), {"logits": ("batch", 1000)},
        11_689_512, "ResNet-18, torchvision layout, ImageNet-1k head",
    ),
    "yolov3-tiny": ZooSpec(
        "yolov3-tiny", "detection", ("batch", 3, 416, 416),
        {"out13": ("batch", 255, 13, 13), "out26": ("batch", 255, 26, 26)},
        8_852_366, "Tiny-YOLOv3, darknet yolov3-tiny.cfg, COCO-80 heads (raw)",
    ),
}  # fmt: skip
ZOO_MODELS: tuple[str, ...] = tuple(ZOO_SPECS)
_BUILDERS: dict[str, Callable[..., ir.Model]] = {"resnet18": resnet18, "yolov3-tiny": yolov3_tiny}


def canonical_name(name: str) -> str:
    """``"yolov3_tiny"`` / ``"YOLOv3-Tiny"`` -> ``"yolov3-tiny"``; unknown names: InputError."""
    key = name.strip().lower().replace("_", "-")
    if key not in _BUILDERS:
        raise InputError(
            f"unknown zoo model {name!r}", hint=f"known models: {', '.join(ZOO_MODELS)}"
        )
    return key


def build(name: str, **kwargs: Any) -> ir.Model:
    """Build zoo model ``name`` ("resnet18", "yolov3-tiny"); ``kwargs`` go to its builder."""
    return _BUILDERS[canonical_name(name)](**kwargs)


@dataclass(frozen=True)
class ParamCount:
    """Initializer sizes: ``parameters`` are ``*.weight`` / ``*.bias`` (torchvision's count),
    ``bn_statistics`` the ``running_mean`` / ``running_var`` buffers, ``other`` the rest."""

    parameters: int
    bn_statistics: int
    other: int

    @property
    def total(self) -> int:
        return self.parameters + self.bn_statistics + self.other

    def to_dict(self) -> dict[str, int]:
        return {
            "parameters": self.parameters,
            "bn_statistics": self.bn_statistics,
            "other": self.other,
            "total": self.total,
        }


def count_parameters(model: ir.Model) -> ParamCount:
    """Count initializer elements by name, the way torchvision's ``parameters()`` would."""
    params = stats = other = 0
    for name, value in model.graph.initializers.items():
        size = value.const_value.size if value.const_value is not None else 0
        if name.endswith((".weight", ".bias")):
            params += size
        elif name.endswith((".running_mean", ".running_var")):
            stats += size
        else:
            other += size
    return ParamCount(params, stats, other)


@dataclass(frozen=True)
class ZooBuild:
    """A zoo model built and saved: what, where, how big, and how long building took.
    ``weights`` is the Darknet weights file it was loaded from (``seed`` is then None), or None
    for seeded random (untrained) weights."""

    name: str
    seed: int | None
    params: ParamCount
    file: FileSize
    build_s: float
    weights: str | None = None

    @property
    def trained(self) -> bool:
        return self.weights is not None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "seed": self.seed,
            "trained": self.trained,
            "weights": self.weights,
            **self.params.to_dict(),
            **self.file.to_dict(),
            "build_s": round(self.build_s, 3),
        }


def build_and_save(
    name: str,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    force: bool = False,
    weights: str | os.PathLike[str] | None = None,
    cfg: str | os.PathLike[str] | None = None,
) -> ZooBuild:
    """Build zoo model ``name`` and save it atomically with :func:`onnxfit.io.save`.

    With ``weights`` (a Darknet ``.weights`` file; ``yolov3-tiny`` only, optionally with its
    ``cfg``) the model carries those trained weights (:func:`onnxfit.zoo.load_darknet`);
    otherwise seeded random ones. An existing ``path`` is refused (``ModelLoadError``, nothing
    written) unless ``force``.
    """
    key = canonical_name(name)
    if weights is None and cfg is not None:
        raise InputError("a cfg was given without weights", hint="add --weights PATH.weights")
    if weights is not None and key != "yolov3-tiny":
        raise InputError(
            f"trained weights can only be loaded into yolov3-tiny, not {key}",
            hint=f"{key} has no trained weights in onnxfit: build it without --weights "
            "(seeded random weights, untrained)",
        )
    start = time.perf_counter()
    model = build(key, seed=seed) if weights is None else load_darknet(weights, cfg)
    build_s = time.perf_counter() - start
    size = save(model, path, force=force)
    used = None if weights is None else str(weights)
    return ZooBuild(key, None if used else seed, count_parameters(model), size, build_s, used)
