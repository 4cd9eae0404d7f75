"""onnxfit: make an ONNX model fit, and run fast, on a memory-constrained console GPU.

The public API is re-exported here lazily (importing :mod:`onnxfit` stays cheap)::

    import onnxfit
    model = onnxfit.load("resnet18.onnx")
    result = onnxfit.inspect(model, target="xbox-series-s")
"""

from __future__ import annotations

from typing import Any

from onnxfit._lazy import lazy_attr

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
    "BatchEngine": "onnxfit.runtime.batching",
    "ResourceManager": "onnxfit.runtime.resources",
    "Priority": "onnxfit.runtime.resources",
    "ProgressiveLoader": "onnxfit.runtime.progressive",
    "resnet18": "onnxfit.zoo",
    "yolov3_tiny": "onnxfit.zoo",
    "load_darknet": "onnxfit.zoo",
    "inspect": "onnxfit.analysis.inspect",
    "InspectResult": "onnxfit.analysis.inspect",
    "infer_shapes": "onnxfit.analysis.shapes",
    "analyze_cost": "onnxfit.analysis.cost",
    "plan_memory": "onnxfit.analysis.memory",
    "MemoryPlan": "onnxfit.analysis.memory",
    "estimate_runtime_memory": "onnxfit.analysis.memory",
    "decide_fit": "onnxfit.analysis.budget",
    "FitVerdict": "onnxfit.analysis.budget",
    "EXIT_DOES_NOT_FIT": "onnxfit.analysis.budget",
    "directml_preflight": "onnxfit.analysis.directml",
    "DmlPreflight": "onnxfit.analysis.directml",
    "AsyncLoader": "onnxfit.data.loader",
    "Preprocessor": "onnxfit.data.images",
    "preprocess": "onnxfit.data.images",
    "list_images": "onnxfit.data.images",
    "optimize": "onnxfit.optimizer",
    "OptimizeResult": "onnxfit.optimizer",
    "DetectionEvaluator": "onnxfit.data.metrics",
    "compare_models": "onnxfit.verify",
    "VerifyResult": "onnxfit.verify",
    "per_node_sensitivity": "onnxfit.verify",
    "load_eval_set": "onnxfit.verify",
    "load_calibration": "onnxfit.data.calibration",
    "PASSES": "onnxfit.optimizer.registry",
    "make_pass": "onnxfit.optimizer.registry",
    "run_passes": "onnxfit.passes.base",
    "activation_stats": "onnxfit.passes.activations",
    "fp16_risk_nodes": "onnxfit.passes.activations",
    "bench": "onnxfit.profiling.bench",
    "BenchResult": "onnxfit.profiling.results",
    "compare": "onnxfit.profiling.compare",
    "CompareResult": "onnxfit.profiling.compare",
    "Tracker": "onnxfit.profiling.tracker",
    "parse_profile": "onnxfit.profiling.ortprofile",
    "Pipeline": "onnxfit.apps.pipeline",
    "run_images": "onnxfit.apps.pipeline",
    "RunResult": "onnxfit.apps.results",
    "ImageResult": "onnxfit.apps.results",
    "evaluate": "onnxfit.apps.evaluation",
    "EvalResult": "onnxfit.apps.evaluation",
    "sensitivity_scan": "onnxfit.pruning.budget",
    "fit_budget": "onnxfit.pruning.budget",
    "prune_copy": "onnxfit.pruning.budget",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, _API, name)
