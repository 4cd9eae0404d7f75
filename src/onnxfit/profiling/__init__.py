"""Measuring models: the Tracker, ORT per-operator profiles, ``bench`` and ``compare``.

* :mod:`onnxfit.profiling.stats` — percentiles (linear interpolation) and :class:`Summary`.
* :mod:`onnxfit.profiling.tracker` — :class:`Tracker`: named, nested sections; wall and GPU time.
* :mod:`onnxfit.profiling.ortprofile` — ORT's profile JSON -> per-operator table + cost model.
* :mod:`onnxfit.profiling.worker` — one session in a fresh child process, timed on command.
* :mod:`onnxfit.profiling.bench` — :func:`bench`: per-batch latency, throughput, memory.
* :mod:`onnxfit.profiling.compare` — :func:`compare`: models interleaved, before/after table.
* :mod:`onnxfit.profiling.system` — peak RSS, CPU-noise probe, machine description.

Names are re-exported lazily so ``import onnxfit.profiling`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_API: dict[str, str] = {
    "percentile": "onnxfit.profiling.stats",
    "summarize": "onnxfit.profiling.stats",
    "Summary": "onnxfit.profiling.stats",
    "Tracker": "onnxfit.profiling.tracker",
    "SectionStats": "onnxfit.profiling.tracker",
    "OrtProfile": "onnxfit.profiling.ortprofile",
    "OpTiming": "onnxfit.profiling.ortprofile",
    "parse_profile": "onnxfit.profiling.ortprofile",
    "join_cost": "onnxfit.profiling.ortprofile",
    "bench": "onnxfit.profiling.bench",
    "BenchResult": "onnxfit.profiling.bench",
    "BatchResult": "onnxfit.profiling.bench",
    "compare": "onnxfit.profiling.compare",
    "CompareResult": "onnxfit.profiling.compare",
    "ModelStats": "onnxfit.profiling.compare",
    "interleave_schedule": "onnxfit.profiling.compare",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'onnxfit.profiling' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
