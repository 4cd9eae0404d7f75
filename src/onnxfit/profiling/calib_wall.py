"""Fit the calibrated latency model from wall times alone (GPU providers).

ONNX Runtime's profile of a GPU provider times the enqueue of each kernel, not its work on the
device, so a GPU calibration has only the wall time of each graph (numpy arrays in and out).
:func:`fit_wall` explains those wall times with a model linear in its figures::

    wall = run_s                                    # a run's fixed cost (sync, bookkeeping)
         + graph_io_bytes / transfer_bandwidth      # inputs to the device, outputs back
         + sum over kernels of  overhead(group)     # launch + runtime work per kernel
                              + scale(group) x roofline(node)
         + weight bytes / weight_bandwidth          # a runtime that touches every weight per run

with kernel groups ``conv`` (conv, conv1x1), ``dwconv``, ``matmul`` and ``memory`` (all other
classes), ``roofline(node) = max(flops / peak, bytes / bandwidth)`` of the base target, the
overheads split between compute kernels (conv, dwconv, matmul) and the rest. The fit is a
non-negative least squares on relative errors (every subset of the columns solved, the best
with no negative figure kept) with ``scale >= 1`` (no kernel beats its roofline): the training
*models* weigh 1, the single-op probes :data:`PROBE_WEIGHT` (their wall time is mostly the copy of
their own inputs and outputs, which pins ``transfer_bandwidth`` and ``run_s``).

The result is an ordinary ``[calibration]`` table (:mod:`onnxfit.analysis.calibrated`): per op
class ``compute_efficiency = bandwidth_efficiency = 1 / scale`` and ``overhead_s``, plus
``run_s``, ``transfer_bandwidth`` and ``weight_bandwidth``, so that
:func:`onnxfit.analysis.cost.analyze_cost` reproduces the fitted sum exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.analysis import opcount
from onnxfit.analysis.calibrated import CLASSES, is_fused, op_class
from onnxfit.profiling.calib_measure import CalibrationRun, ModelRun
from onnxfit.targets import Target

#: weight of a single-op probe against a model in the wall-time fit
PROBE_WEIGHT = 0.3
GROUPS = ("conv", "dwconv", "matmul", "memory")
_GROUP_OF = {"conv": "conv", "conv1x1": "conv", "dwconv": "dwconv", "matmul": "matmul"}
_COMPUTE = frozenset({"conv", "dwconv", "matmul"})
#: the fitted columns, in order; the ``scale_*`` ones are fitted as ``scale - 1 >= 0``
COLUMNS = (
    "run_s",
    "transfer_s_per_byte",
    "overhead_compute_s",
    "overhead_other_s",
    *(f"scale_{g}" for g in GROUPS),
    "weight_s_per_byte",
)


def features(model: ir.Model, target: Target, fused: frozenset[tuple[str, str]]) -> np.ndarray:
    """The columns of :data:`COLUMNS` for one graph (the roofline columns in seconds)."""
    from onnxfit.analysis.cost import analyze_cost, graph_io_bytes

    plain = analyze_cost(model, target=target)
    row = dict.fromkeys(COLUMNS, 0.0)
    row["run_s"] = 1.0
    row["transfer_s_per_byte"] = float(graph_io_bytes(model))
    for node, cost in zip(model.graph, plain.nodes, strict=True):
        if opcount.kind_of(node) == "free" or is_fused(node, fused):
            continue
        group = _GROUP_OF.get(op_class(node), "memory")
        roof = max(cost.flops / target.peak(cost.precision), cost.bytes / target.memory_bandwidth)
        row["overhead_compute_s" if group in _COMPUTE else "overhead_other_s"] += 1.0
        row[f"scale_{group}"] += roof
        row["weight_s_per_byte"] += cost.weight_bytes
    return np.array([row[c] for c in COLUMNS])


def nnls(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares ``x @ c ~ y`` with ``c >= 0``: every subset of columns, the best feasible."""
    best: tuple[float, np.ndarray] | None = None
    n = x.shape[1]
    for r in range(1, n + 1):
        for cols in itertools.combinations(range(n), r):
            c, *_ = np.linalg.lstsq(x[:, cols], y, rcond=None)
            if (c < 0).any():
                continue
            full = np.zeros(n)
            full[list(cols)] = c
            err = float(((x @ full - y) ** 2).sum())
            if best is None or err < best[0]:
                best = (err, full)
    return best[1] if best is not None else np.zeros(n)


def fit_coefficients(rows: Sequence[tuple[np.ndarray, float, float]]) -> dict[str, float]:
    """Figures of :data:`COLUMNS` fit to ``(features, wall seconds, weight)`` rows."""
    x = np.array([f for f, _, _ in rows])
    y = np.array([t for _, t, _ in rows])
    w = np.array([wt / t for _, t, wt in rows])  # relative errors
    scale = np.array([c.startswith("scale_") for c in COLUMNS])
    y_rest = y - x[:, scale].sum(axis=1)  # scale = 1 + a non-negative excess
    coef = nnls(x * w[:, None], y_rest * w)
    coef[scale] += 1.0
    return dict(zip(COLUMNS, (float(c) for c in coef), strict=True))


def table_from(coef: Mapping[str, float], source: str, fused: Sequence[str]) -> dict[str, Any]:
    """The ``[calibration]`` table that projects exactly the fitted sum (module docstring)."""
    ops: dict[str, dict[str, dict[str, float]]] = {}
    for cls in (*CLASSES, "other", "default"):
        group = _GROUP_OF.get(cls, "memory")
        eff = 1.0 / coef[f"scale_{group}"]
        over = coef["overhead_compute_s" if group in _COMPUTE else "overhead_other_s"]
        ops[cls] = {
            "fp32": {
                "compute_efficiency": eff,
                "bandwidth_efficiency": eff,
                "overhead_s": over,
                "samples": 0,
            }
        }
    per_byte = coef["transfer_s_per_byte"]
    weight = coef["weight_s_per_byte"]
    return {
        "source": source,
        "ops": ops,
        "fused": list(fused),
        "per_kernel_s": 0.0,
        "run_s": coef["run_s"],
        "transfer_bandwidth": 1.0 / per_byte if per_byte > 0 else 0.0,
        "weight_bandwidth": 1.0 / weight if weight > 0 else 0.0,
        "profiler_per_kernel_s": 0.0,
    }


def _weight(m: ModelRun) -> float:
    return 1.0 if m.kind == "model" else PROBE_WEIGHT


def fit_wall(
    run: CalibrationRun,
    train: Sequence[ModelRun],
    models: Mapping[str, ir.Model],
    target: Target,
    fused: Sequence[str],
) -> dict[str, Any] | None:
    """The ``[calibration]`` table fit on the wall times of ``train`` (module docstring);
    None when fewer than three of them are models whose graph is in ``models``."""
    from onnxfit.profiling.calib_suite import probes

    graphs = dict(models)
    if any(m.kind == "probe" and m.name not in graphs for m in train):
        graphs.update({p.name: p.model for p in probes()})
    pairs = frozenset((a, b) for a, b in (p.split("<-") for p in fused))
    rows = [
        (features(graphs[m.name], target, pairs), m.wall_s, _weight(m))
        for m in train
        if m.name in graphs and m.wall_s > 0
    ]
    if sum(m.kind == "model" and m.name in graphs for m in train) < 3:
        return None
    source = f"{run.provider}, {run.threads} thread(s), onnxruntime {run.ort_version} (wall fit)"
    return table_from(fit_coefficients(rows), source, fused)
