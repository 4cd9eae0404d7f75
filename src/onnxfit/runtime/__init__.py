"""Running optimized models: target-aware sessions, memory pool, batching, resources, loading.

The names below are re-exported lazily so ``import onnxfit.runtime`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from onnxfit._lazy import lazy_attr

#: public name -> module that defines it (other runtime modules add theirs here)
_EXPORTS: dict[str, str] = {
    "Session": "onnxfit.runtime.session",
    "TensorSpec": "onnxfit.runtime.feeds",
    "deploy_settings": "onnxfit.runtime.settings",
    "plan_session": "onnxfit.runtime.settings",
    "SessionPlan": "onnxfit.runtime.settings",
    "MemoryPool": "onnxfit.runtime.pool",
    "Block": "onnxfit.runtime.pool",
    "PoolStats": "onnxfit.runtime.pool",
    "BatchEngine": "onnxfit.runtime.batching",
    "EngineClosedError": "onnxfit.runtime.batching",
    "TuningResult": "onnxfit.runtime.tuning",
    "ResourceManager": "onnxfit.runtime.resources",
    "Priority": "onnxfit.runtime.resources",
    "Event": "onnxfit.runtime.resources",
    "ProgressiveLoader": "onnxfit.runtime.progressive",
    "SectionPlan": "onnxfit.runtime.sections",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, _EXPORTS, name)
