"""``onnxfit calibrate``: measure the calibration suite on this device, fit, write a target TOML.

:func:`calibrate` measures (:mod:`onnxfit.profiling.calib_measure`) the suite of
:mod:`onnxfit.profiling.calib_suite` plus any extra models, fits the calibrated latency model
(:mod:`onnxfit.profiling.calib_fit`) and writes ``base = "<target>"`` plus a ``[calibration]``
table (:func:`calibration_toml`) that ``inspect``, ``optimize`` and ``compare`` read through
:func:`onnxfit.targets.get_target`. ``validate=True`` adds the leave-one-model-out errors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.profiling.calib_measure import CalibrationRun, provider_name, run_suite


def calibration_toml(run: CalibrationRun, *, name: str, table: dict[str, Any]) -> str:
    """The target TOML for ``run``'s fitted ``table`` (:func:`onnxfit.profiling.calib_fit.fit`).

    The peaks and bandwidth the figures are relative to are pinned in the file (the base
    target's, for the device measured: :func:`onnxfit.profiling.calib_fit.base_target`), so
    that the file projects the same on any machine, also one whose own ``cpu`` or ``cuda``
    target differs."""
    from onnxfit.profiling.calib_fit import base_target

    tgt = base_target(run)
    lines = [
        f"# written by onnxfit calibrate: {run.provider}, {run.threads} thread(s),",
        f"# onnxruntime {run.ort_version}, {len(run.models)} graphs, on {run.host}",
        f'base = "{run.base}"',
        f'name = "{name}"',
        f'description = "{name}: calibrated with {run.provider}, {run.threads} thread(s)"',
        f"# the figures below are relative to these ({tgt.description})",
        f"peak_fp32 = {tgt.peak_fp32:.6g}",
        f"peak_fp16 = {tgt.peak_fp16:.6g}",
        f"peak_int8 = {tgt.peak_int8:.6g}",
        f"memory_bandwidth = {tgt.memory_bandwidth:.6g}",
        "",
        "[calibration]",
        f'source = "{run.provider}, {run.threads} thread(s), onnxruntime {run.ort_version}"',
        f"per_kernel_s = {table['per_kernel_s']:.6g}",
        f"run_s = {table['run_s']:.6g}",
        f"transfer_bandwidth = {table.get('transfer_bandwidth', 0.0):.6g}",
        f"weight_bandwidth = {table.get('weight_bandwidth', 0.0):.6g}",
        "fused = [" + ", ".join(f'"{p}"' for p in table["fused"]) + "]",
    ]
    for cls, per_prec in sorted(table["ops"].items()):
        for prec, f in sorted(per_prec.items()):
            lines += [
                "",
                f"[calibration.ops.{cls}.{prec}]",
                f"compute_efficiency = {f['compute_efficiency']:.6g}",
                f"bandwidth_efficiency = {f['bandwidth_efficiency']:.6g}",
                f"overhead_s = {f['overhead_s']:.6g}",
                f"samples = {f['samples']}",
            ]
    return "\n".join(lines) + "\n"


@dataclass
class CalibrateResult:
    """What ``onnxfit calibrate`` measured, fit, validated and wrote."""

    output: str
    name: str
    run: CalibrationRun
    table: dict[str, Any]
    fitted: list[dict[str, Any]]  # per model: measured vs projected with the full fit
    validation: list[dict[str, Any]] | None = None  # leave-one-model-out, when asked for

    def to_dict(self) -> dict[str, Any]:
        from onnxfit.profiling.calib_fit import error_summary

        d: dict[str, Any] = {
            "output": self.output,
            "name": self.name,
            "provider": self.run.provider,
            "base": self.run.base,
            "threads": self.run.threads,
            "ort_version": self.run.ort_version,
            "graphs": len(self.run.models),
            "calibration": self.table,
            "fitted": self.fitted,
            "fitted_errors": error_summary([r["error"] for r in self.fitted]),
        }
        if self.validation is not None:
            d["validation"] = self.validation
            d["validation_before"] = error_summary([r["error_before"] for r in self.validation])
            d["validation_after"] = error_summary([r["error_after"] for r in self.validation])
        return d


def calibrate(
    out: str | Path,
    *,
    provider: str | None = None,
    base: str | None = None,
    name: str | None = None,
    threads: int = 1,
    runs: int = 20,
    rounds: int = 1,
    quick: bool = False,
    extra: Sequence[str | Path] = (),
    measurements: CalibrationRun | None = None,
    validate: bool = False,
    force: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> CalibrateResult:
    """Measure (or reuse ``measurements``), fit, optionally validate, and write ``out``.

    Refuses (InputError) an existing ``out`` unless ``force``. The TOML written loads with
    :func:`onnxfit.targets.get_target` (checked before returning).
    """
    from onnxfit import atomic
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.profiling.calib_fit import base_target, fit, leave_one_out, predict
    from onnxfit.profiling.calib_suite import calibration_suite
    from onnxfit.targets import get_target

    path = Path(out)
    if path.suffix.lower() != ".toml":
        raise InputError(f"{path}: a target file must end in .toml", hint="-o my-device.toml")
    if path.exists() and not force:
        raise InputError(f"{path}: file exists", hint="choose another -o path, or pass --force")
    if threads < 1 or runs < 1 or rounds < 1:
        raise InputError("--threads, --runs and --rounds must be >= 1")
    run = measurements or run_suite(
        provider=provider_name(provider),
        base=base,
        threads=threads,
        runs=runs,
        rounds=rounds,
        quick=quick,
        extra=extra,
        progress=progress,
    )
    models = {m.name: m.model for m in calibration_suite(quick=quick)}
    for p in extra:
        models[Path(p).name] = infer_shapes(io.load(p), batch=1)
    table = fit(run, models)
    tgt = base_target(run)
    fitted = []
    for m in run.models:
        if m.kind == "model" and m.name in models:
            pred = predict(models[m.name], tgt, table)
            fitted.append(
                {"model": m.name, "measured_s": m.wall_s, "projected_s": pred,
                 "error": pred / m.wall_s - 1}
            )  # fmt: skip
    validation = leave_one_out(run, models) if validate else None
    label = name or path.stem
    atomic.write_text(path, calibration_toml(run, name=label, table=table))
    loaded = get_target(str(path))
    if not loaded.calibrated:
        raise InputError(f"{path}: written but not read back as a calibrated target")
    return CalibrateResult(str(path), label, run, table, fitted, validation)
