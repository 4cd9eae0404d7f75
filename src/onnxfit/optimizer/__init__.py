"""``onnxfit optimize``: plan passes for a target, run them, verify with back-off, report.

* :mod:`~onnxfit.optimizer.options` — :class:`OptimizeOptions` (every knob, one dataclass);
* :mod:`~onnxfit.optimizer.plan` — :func:`plan` -> :class:`OptimizePlan` (precision + reason +
  steps);
* :mod:`~onnxfit.optimizer.data` — calibration / evaluation / synthetic inputs;
* :mod:`~onnxfit.optimizer.gate` — the accuracy budget; :mod:`~onnxfit.optimizer.backoff` — the
  verified back-off loop; :mod:`~onnxfit.optimizer.drift` — float16 drift per node;
* :mod:`~onnxfit.optimizer.stats` — before/after figures; :mod:`~onnxfit.optimizer.run` —
  :func:`optimize` -> :class:`OptimizeResult` and the three output files.

(The package is ``optimizer``, not ``optimize``: a submodule ``onnxfit.optimize`` would replace
the lazily exported function ``onnxfit.optimize`` with itself once imported.)
"""

from __future__ import annotations

from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import OptimizePlan, PlanStep, plan
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.optimizer.run import optimize, sidecar_paths

__all__ = [
    "OptimizeOptions",
    "OptimizePlan",
    "OptimizeResult",
    "PlanStep",
    "optimize",
    "plan",
    "sidecar_paths",
]
