"""Measuring models: the Tracker, ORT per-operator profiles, ``bench`` and ``compare``.

* :mod:`onnxfit.profiling.stats` — percentiles (linear interpolation) and :class:`Summary`.
* :mod:`onnxfit.profiling.tracker` — :class:`Tracker`: named, nested sections; wall and GPU time.
* :mod:`onnxfit.profiling.ortprofile` — ORT's profile JSON -> per-operator table;
  :mod:`onnxfit.profiling.opcost` joins it with the cost model (achieved vs roofline).
* :mod:`onnxfit.profiling.worker` — one session, timed on command (the child's side);
  :mod:`onnxfit.profiling.client` runs it in a fresh child process or in this one;
  :mod:`onnxfit.data.feeds` makes its random inputs.
* :mod:`onnxfit.profiling.bench` — :func:`bench`: per-batch latency, throughput, memory
  (result types in :mod:`onnxfit.profiling.results`).
* :mod:`onnxfit.profiling.compare` — :func:`compare`: models interleaved, before/after table;
  accuracy with ``--eval`` comes from the one evaluator, :mod:`onnxfit.verify.evaluator`.
* :mod:`onnxfit.profiling.system` — peak RSS, CPU-noise probe, machine description.

Names are re-exported lazily so ``import onnxfit.profiling`` stays cheap.
"""

from __future__ import annotations

from typing import Any

from onnxfit._lazy import lazy_attr

_API: dict[str, str] = {
    "percentile": "onnxfit.profiling.stats",
    "summarize": "onnxfit.profiling.stats",
    "Summary": "onnxfit.profiling.stats",
    "Tracker": "onnxfit.profiling.tracker",
    "SectionStats": "onnxfit.profiling.tracker",
    "OrtProfile": "onnxfit.profiling.ortprofile",
    "OpTiming": "onnxfit.profiling.ortprofile",
    "parse_profile": "onnxfit.profiling.ortprofile",
    "join_cost": "onnxfit.profiling.opcost",
    "bench": "onnxfit.profiling.bench",
    "BenchResult": "onnxfit.profiling.results",
    "BatchResult": "onnxfit.profiling.results",
    "compare": "onnxfit.profiling.compare",
    "CompareResult": "onnxfit.profiling.compare",
    "ModelStats": "onnxfit.profiling.compare",
    "interleave_schedule": "onnxfit.profiling.compare",
}

__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    return lazy_attr(__name__, _API, name)
