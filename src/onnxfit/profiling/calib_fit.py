"""Fit the calibrated latency model (:mod:`onnxfit.analysis.calibrated`) to measurements.

:func:`fit` takes a :class:`~onnxfit.profiling.calibrate.CalibrationRun` and returns the
``[calibration]`` table, in four steps (0 to 3):

1. **Per op class and precision** (:func:`fit_class`): the kernel samples of the class are fit
   with ``t = max(flops / (eta x peak), bytes / (beta x bandwidth)) + overhead`` by minimising
   the squared error of log times (relative error), weighted by the square root of each
   kernel's time so that the kernels that dominate a model's latency weigh more than the many
   tiny ones. A grid over (eta, beta, overhead), then three rounds of a finer grid around the
   best point. A class with fewer than ``min_samples`` kernels uses the ``default`` entry, fit
   on every sample of that precision.
2. **Fusion**: an (op, producer op) pair is ``fused`` when, in the training models, at least
   half of its occurrences (and two at least) had no kernel of their own.
3. **Anchoring** (per-kernel profiles only): the kernels are timed in a profiled session and
   the latency in a plain one, which on a shared host run under different contention (and the
   profiler's own cost is only estimated): every time of the table is scaled by one factor,
   the median over the training models of measured wall time / projection
   (``wall_scale``; on this 2-core host 1 thread 3.7 -> 4.7 % median error but 89 -> 93 %
   within +-20 %, 2 threads 75 -> 86 % within +-20 %, leave-one-model-out).
0. **Profiler correction** (before 1): ORT's profiler adds a little to every kernel it times
   and leaves out the work of ``run`` around the kernels. Over every training graph, (summed
   profiled kernel time - measured wall time) is regressed on the number of kernels with a
   Theil-Sen fit (median of pairwise slopes: robust to a run disturbed by other load): the slope
   is the profiler's cost per kernel, taken off every sample, and minus the intercept is the
   fixed cost per run, ``run_s``. ``per_kernel_s`` stays 0 (each class's ``overhead_s`` holds
   the cost of a kernel). On a provider measured by wall time alone (GPU providers, see
   :mod:`onnxfit.profiling.calib_measure`) the ``null`` probe's wall time is the cost of a run:
   it is taken off every probe sample and becomes ``run_s``; the fused pairs are then
   :data:`DML_FUSED` on DirectML (none elsewhere). With three measured models or more, a
   wall-time-only provider is fit on whole graphs instead (:mod:`onnxfit.profiling.calib_wall`:
   run, host<->device copies, launches, scaled roofline, weights); the probes above are the
   fallback.

:func:`leave_one_out` refits without each model in turn and predicts it: the validation of
``benchmarks/bench_latency_model.py``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.profiling.calib_measure import SYNC_PROFILE, CalibrationRun, KernelSample, ModelRun
from onnxfit.targets import Target, get_target


def _predict_kernels(
    f: np.ndarray,
    b: np.ndarray,
    eta: np.ndarray,
    beta: np.ndarray,
    o: float,
    peak: float,
    bw: float,
) -> np.ndarray:
    comp = f[None, :] / (eta[:, None] * peak)
    mem = b[None, :] / (beta[:, None] * bw)
    return np.maximum(comp[:, None, :], mem[None, :, :]) + o  # eta x beta x samples


def fit_class(
    samples: Sequence[KernelSample], *, peak: float, bandwidth: float
) -> dict[str, float]:
    """(compute_efficiency, bandwidth_efficiency, overhead_s) for one class (module docstring)."""
    f = np.array([s.flops for s in samples], float)
    b = np.array([s.bytes for s in samples], float)
    t = np.array([s.time_s for s in samples], float)
    t = np.maximum(t, 1e-8)
    w = np.sqrt(t / t.sum())
    logt = np.log(t)
    etas = np.geomspace(1e-4, 8.0, 40)
    betas = np.geomspace(1e-4, 64.0, 40)
    overheads = np.concatenate([[0.0], np.geomspace(1e-7, float(t.min()), 20)])
    best = (math.inf, 1.0, 1.0, 0.0)
    for _ in range(4):
        for o in overheads:
            pred = _predict_kernels(f, b, etas, betas, float(o), peak, bandwidth)
            err = (w * (np.log(np.maximum(pred, 1e-12)) - logt) ** 2).sum(-1)
            i, j = np.unravel_index(int(np.argmin(err)), err.shape)
            if err[i, j] < best[0]:
                best = (float(err[i, j]), float(etas[i]), float(betas[j]), float(o))
        _, eta, beta, o = best
        etas = np.geomspace(eta / 1.6, eta * 1.6, 15)
        betas = np.geomspace(beta / 1.6, beta * 1.6, 15)
        hi = max(o * 1.6, 1e-7)
        overheads = np.concatenate([[0.0], np.geomspace(max(o / 1.6, 1e-8), hi, 9)])
    return {
        "compute_efficiency": best[1],
        "bandwidth_efficiency": best[2],
        "overhead_s": best[3],
        "samples": len(samples),
    }


def fused_pairs(models: Iterable[ModelRun]) -> list[str]:
    """``"op<-producer"`` pairs the runtime ran inside another kernel (module docstring)."""
    seen: Counter[tuple[str, str]] = Counter()
    gone: Counter[tuple[str, str]] = Counter()
    for m in models:
        for op, producer, fused in m.fusion:
            seen[(op, producer)] += 1
            gone[(op, producer)] += bool(fused)
    return sorted(f"{op}<-{p}" for (op, p), n in seen.items() if gone[(op, p)] >= max(2, n / 2))


_ACTIVATIONS = (
    "Sigmoid",
    "HardSigmoid",
    "Tanh",
    "ScaledTanh",
    "Relu",
    "LeakyRelu",
    "PRelu",
    "ThresholdedRelu",
    "Elu",
    "Selu",
    "Softsign",
    "Softplus",
    "ParametricSoftplus",
    "Dropout",
)
_NORM_LIKE = (
    "Conv",
    "ConvTranspose",
    "BatchNormalization",
    "InstanceNormalization",
    "MeanVarianceNormalization",
)
#: DirectML's operator fusion (ORT ``DmlExecutionProvider/src/FusionHelpers.cpp``: an activation
#: into Conv / ConvTranspose / the normalizations; only Relu / LeakyRelu into Gemm, MatMul, Add,
#: Sum), plus BatchNormalization into Conv (ORT's basic level, before partitioning).
DML_FUSED = sorted(
    {f"{act}<-{op}" for op in _NORM_LIKE for act in _ACTIVATIONS}
    | {f"{act}<-{op}" for op in ("Gemm", "MatMul", "Add", "Sum") for act in ("Relu", "LeakyRelu")}
    | {"BatchNormalization<-Conv"}
)


def base_target(run: CalibrationRun, target: Target | str | None = None) -> Target:
    """The target whose peaks ``run``'s figures are relative to: ``target`` when given, else
    the run's base; for ``cuda`` the GPU named in the run's host line
    (:func:`onnxfit.targets.cuda_target_for`), not this machine's, so a refit anywhere reads
    the measurements against the peaks of the GPU they were taken on."""
    if target is not None:
        return get_target(target)
    if run.base == "cuda":
        from onnxfit.targets import cuda_target_for

        return cuda_target_for(run.host)
    return get_target(run.base)


def _wall_correction(models: Sequence[ModelRun]) -> float:
    """The cost of a run on a wall-time-only provider: the ``null`` probe's wall time."""
    null = [m.wall_s for m in models if m.name == "null"]
    return float(null[0]) if null else 0.0


def _table_ops(
    samples: Sequence[KernelSample], target: Target, *, min_samples: int
) -> dict[str, dict[str, dict[str, float]]]:
    ops: dict[str, dict[str, dict[str, float]]] = {}
    by_key: dict[tuple[str, str], list[KernelSample]] = {}
    for s in samples:
        if s.time_s > 0:
            by_key.setdefault((s.op_class, s.precision), []).append(s)
            by_key.setdefault(("default", s.precision), []).append(s)
    for (cls, prec), group in sorted(by_key.items()):
        if len(group) < min_samples:
            continue
        figures = fit_class(group, peak=target.peak(prec), bandwidth=target.memory_bandwidth)
        ops.setdefault(cls, {})[prec] = figures
    return ops


def fit(
    run: CalibrationRun,
    models: Mapping[str, ir.Model],
    *,
    target: Target | str | None = None,
    exclude: Sequence[str] = (),
    min_samples: int = 3,
) -> dict[str, Any]:
    """The ``[calibration]`` table fit on ``run`` without the models named in ``exclude``.

    ``models`` maps each measured model's name to its graph (for step 3).
    """
    tgt = base_target(run, target)
    train = [m for m in run.models if m.name not in set(exclude)]
    sync = run.provider in SYNC_PROFILE
    if not sync:
        from onnxfit.profiling.calib_wall import fit_wall

        published = DML_FUSED if run.provider == "DmlExecutionProvider" else []
        fitted = fit_wall(run, train, models, tgt, published)
        if fitted is not None:
            return fitted
    per_kernel, per_run = profiler_correction(train) if sync else (_wall_correction(train), 0.0)
    if not sync:  # the probe's whole run was the sample: take the run's cost off it
        per_run = per_kernel
    samples = [
        dataclasses.replace(s, time_s=max(s.time_s - per_kernel, 0.25 * s.time_s))
        for m in train
        for s in m.samples
    ]
    table: dict[str, Any] = {
        "source": f"{run.provider}, {run.threads} thread(s), onnxruntime {run.ort_version}",
        "ops": _table_ops(samples, tgt, min_samples=min_samples),
        "fused": fused_pairs(train)
        if sync
        else (DML_FUSED if run.provider == "DmlExecutionProvider" else []),
        "per_kernel_s": 0.0,
        "run_s": per_run,
        "profiler_per_kernel_s": per_kernel,
    }
    return anchored(table, train, models, tgt) if sync else table


def anchored(
    table: dict[str, Any], train: Sequence[ModelRun], models: Mapping[str, ir.Model], tgt: Target
) -> dict[str, Any]:
    """``table`` with every time scaled by the median, over the training models, of measured
    wall time / projection (step 3 of the module docstring); unchanged without such models."""
    ratios = [
        m.wall_s / p
        for m in train
        if m.kind == "model" and m.name in models and m.wall_s > 0
        if (p := predict(models[m.name], tgt, table)) > 0
    ]
    if not ratios:
        return table
    r = float(np.median(ratios))
    out = copy.deepcopy(table)
    for per_prec in out["ops"].values():
        for f in per_prec.values():
            f["compute_efficiency"] /= r
            f["bandwidth_efficiency"] /= r
            f["overhead_s"] *= r
    out["run_s"] *= r
    out["per_kernel_s"] *= r
    out["wall_scale"] = r
    return out


def profiler_correction(models: Sequence[ModelRun]) -> tuple[float, float]:
    """(profiler cost per kernel, cost per run) in seconds, both >= 0 (module docstring)."""
    pts = [
        (m.kernels, sum(s.time_s for s in m.samples) + m.unmatched_s - m.wall_s)
        for m in models
        if m.kernels
    ]
    if len(pts) < 2:
        return 0.0, 0.0
    slopes = [
        (y2 - y1) / (x2 - x1)
        for i, (x1, y1) in enumerate(pts)
        for x2, y2 in pts[i + 1 :]
        if x2 != x1
    ]
    slope = float(np.median(slopes)) if slopes else 0.0
    intercept = float(np.median([y - slope * x for x, y in pts]))
    return max(0.0, slope), max(0.0, -intercept)


def predict(model: ir.Model, target: Target, table: Mapping[str, Any] | None) -> float:
    """Projected seconds per run of ``model``: calibrated with ``table``, else the roofline."""
    from onnxfit.analysis.cost import analyze_cost

    tgt = dataclasses.replace(target, calibration=dict(table) if table else None)
    return analyze_cost(model, target=tgt).time_s


def leave_one_out(
    run: CalibrationRun,
    models: Mapping[str, ir.Model],
    *,
    target: Target | str | None = None,
    kinds: Sequence[str] = ("model",),
) -> list[dict[str, Any]]:
    """For each measured model of ``kinds``: measured, uncalibrated and held-out calibrated
    projections (seconds) and their relative errors."""
    tgt = base_target(run, target)
    out = []
    for m in run.models:
        if m.kind not in kinds or m.name not in models:
            continue
        table = fit(run, models, target=tgt, exclude=[m.name])
        before = predict(models[m.name], tgt, None)
        after = predict(models[m.name], tgt, table)
        out.append(
            {
                "model": m.name,
                "batch": m.batch,
                "measured_s": m.wall_s,
                "uncalibrated_s": before,
                "calibrated_s": after,
                "error_before": before / m.wall_s - 1,
                "error_after": after / m.wall_s - 1,
            }
        )
    return out


def error_summary(errors: Sequence[float]) -> dict[str, float]:
    """Median |error| and the shares within +-10 % and +-20 % (errors as fractions)."""
    e = np.abs(np.array(errors, float))
    if e.size == 0:
        return {"n": 0, "median_abs": math.nan, "within_10": math.nan, "within_20": math.nan}
    return {
        "n": int(e.size),
        "median_abs": float(np.median(e)),
        "within_10": float((e <= 0.10).mean()),
        "within_20": float((e <= 0.20).mean()),
    }
