"""onnxfit: make an ONNX model fit, and run fast, on a memory-constrained console GPU.

The public API is re-exported here lazily (importing :mod:`onnxfit` stays cheap)::

    import onnxfit
    model = onnxfit.load("resnet18.onnx")
    result = onnxfit.inspect(model, target="xbox-series-s")
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> module that defines it
_API: dict[str, str] = {
    "load": "onnxfit.io",
    "save": "onnxfit.io",
    "file_size": "onnxfit.io",
    "Target": "onnxfit.targets",
    "get_target": "onnxfit.targets",
    "OnnxfitError": "onnxfit.errors",
    "ModelLoadError": "onnxfit.errors",
    "UnsafeModelError": "onnxfit.errors",
    "BudgetExceededError": "onnxfit.errors",
    "VerificationError": "onnxfit.errors",
    "InputError": "onnxfit.errors",
    "Session": "onnxfit.runtime.session",
    "MemoryPool": "onnxfit.runtime.pool",
    "resnet18": "onnxfit.zoo",
    "yolov3_tiny": "onnxfit.zoo",
    "inspect": "onnxfit.analysis.inspect",
    "InspectResult": "onnxfit.analysis.inspect",
    "infer_shapes": "onnxfit.analysis.shapes",
    "analyze_cost": "onnxfit.analysis.cost",
    "plan_memory": "onnxfit.analysis.memory",
    "MemoryPlan": "onnxfit.analysis.memory",
    "estimate_runtime_memory": "onnxfit.analysis.memory",
    "AsyncLoader": "onnxfit.data.loader",
    "Preprocessor": "onnxfit.data.images",
    "preprocess": "onnxfit.data.images",
    "list_images": "onnxfit.data.images",
    "DetectionEvaluator": "onnxfit.data.metrics",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxfit' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
