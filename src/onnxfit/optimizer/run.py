"""``optimize()``: plan, read the data, run the passes, verify (backing off), measure, write.

Order of work, so that a failure leaves nothing behind: check the output path, load the model,
plan, read calibration / evaluation data, run the float passes once, run the lossy step in the
back-off loop (:mod:`onnxfit.optimizer.backoff`), compare with the original, measure before and
after, and only then write ``OUT`` (atomic, :func:`onnxfit.io.save`), ``OUT.report.json`` and
``OUT.deploy.json`` (atomic too). ``OUT.report.json`` is named by replacing a ``.onnx`` suffix
(``net.onnx`` -> ``net.report.json``, ``net.deploy.json``); other names get the suffix appended.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit import atomic, io
from onnxfit.errors import InputError
from onnxfit.optimizer.backoff import Outcome, clone, run_lossy
from onnxfit.optimizer.data import RunData, load_run_data
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import OptimizePlan, build_plan, make_step_pass
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.optimizer.stats import measure_latency, model_stats, one_sample
from onnxfit.passes.base import PassReport
from onnxfit.prune_budget import PRUNE_STEPS, run_budgeted
from onnxfit.runtime.ort_errors import guard_ort
from onnxfit.targets import Target, get_target
from onnxfit.verify import compare_models

logger = logging.getLogger(__name__)

#: progress(label, done, total): called as each stage starts; total grows with back-off rounds
ProgressFn = Callable[[str, int, int | None], None]


def sidecar_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(report, deploy) paths that belong to model file ``out``."""
    p = Path(out)
    stem = p.with_suffix("") if p.suffix.lower() == ".onnx" else p
    return stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".deploy.json")


def check_output(src: Path, out: Path, *, force: bool) -> None:
    """Refuse (InputError) an output that is a folder, the input itself, or exists, unless
    ``force`` (the input is never overwritten without it)."""
    if out.is_dir():
        raise InputError(f"{out}: is a folder", hint="give a file name ending in .onnx")
    same = src.exists() and out.exists() and src.resolve() == out.resolve()
    if same and not force:
        raise InputError(
            f"{out}: refusing to overwrite the input model",
            hint="write to another file, or pass --force",
        )
    if out.exists() and not force:
        raise InputError(f"{out}: file exists", hint="choose another -o path, or pass --force")


class _Stages:
    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.done, self.total = progress, 0, total

    def __call__(self, label: str) -> None:
        logger.info("%s", label)
        if self.progress is not None:
            if self.done >= self.total:
                self.total = self.done + 1
            self.progress(label, self.done, self.total)
        self.done += 1


def _free_dims(model: ir.Model, batch: int = 1) -> tuple[dict[str, int], list[str]]:
    """Symbolic leading (batch) dims of the inputs -> ``batch``; other symbolic dims listed."""
    fixed: dict[str, int] = {}
    left: list[str] = []
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name in inits or v.shape is None:
            continue
        for axis, d in enumerate(v.shape):
            if isinstance(d, int):
                continue
            name = d.value if isinstance(d, ir.SymbolicDim) else None
            if axis == 0 and name:
                fixed[name] = batch
            elif name and name not in fixed:
                left.append(name)
    return fixed, left


def _kept_float(reports: list[PassReport], kept: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for r in reports:
        if r.name == "fp16":
            for n in r.stats.get("nodes_fp32", []):  # type: ignore[union-attr]
                if n not in kept:
                    out[str(n)] = "fp16: kept float32 (no float16 kernel/schema, or shape input)"
        elif r.name in ("int8", "int8-dynamic"):
            for n in r.stats.get("float_nodes", []):  # type: ignore[union-attr]
                if n not in kept:
                    out[str(n)] = f"{r.name}: not quantized (op not supported or no range)"
        elif r.name == "dequantize":
            for n in r.stats.get("unsupported", []):  # type: ignore[union-attr]
                out[str(n)] = "dequantize: left quantized (op not supported)"
    return out


def _write_json(path: Path, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=2, default=_json_default) + "\n"
    atomic.write_text(path, text)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@guard_ort("while optimizing the model")
def optimize(
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    target: str | Target = "xbox-series-s",
    precision: str = "auto",
    calibrate: str | os.PathLike[str] | None = None,
    eval: str | os.PathLike[str] | None = None,
    max_accuracy_drop: float = 1.0,
    passes: str | list[str] | tuple[str, ...] | None = None,
    preset: str | None = None,
    calib_count: int = 100,
    eval_count: int | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    plan: OptimizePlan | None = None,
    **options: Any,
) -> OptimizeResult:
    """Optimize the model at ``model_path`` for ``target`` and write ``out_path`` (+ sidecars).

    ``options`` are further :class:`~onnxfit.optimizer.options.OptimizeOptions` fields
    (``method``, ``max_rounds``, ``min_cosine``, ``measure_runs``, ``fuse``, ``seed``...).
    ``plan`` reuses a plan made by :func:`onnxfit.optimizer.plan.plan` (e.g. shown first).
    Raises :class:`InputError` / :class:`ModelLoadError` for bad input and
    :class:`VerificationError` when no back-off round meets the budget; then nothing is written.
    """
    started = time.perf_counter()
    opts = OptimizeOptions.build(
        precision=precision,
        calibrate=calibrate,
        eval=eval,
        max_accuracy_drop=max_accuracy_drop,
        passes=passes,
        preset=preset,
        calib_count=calib_count,
        eval_count=eval_count,
        **options,
    )
    tgt = get_target(target)
    src, out = Path(model_path), Path(out_path)
    check_output(src, out, force=force)
    original = io.load(src)
    the_plan = plan if plan is not None else build_plan(original, tgt, opts)
    lossy_at = the_plan.lossy_index
    prefix = the_plan.steps[: lossy_at if lossy_at is not None else len(the_plan.steps)]
    stages = _Stages(progress, total=len(prefix) + 4)
    data = load_run_data(original, opts, progress=stages)
    outcome, prefix_reports, gate_ref_is_orig = _run_pipeline(
        original, the_plan, prefix, data, opts, stages
    )
    verification = outcome.verification
    gate_verification = None
    if not gate_ref_is_orig or outcome.emulated:
        stages("comparing the written model with the original")
        gate_verification = verification
        verification = compare_models(
            original,
            outcome.model,
            data.verify_inputs,
            labels=data.labels,
            synthetic=data.synthetic,
        )
    stages("measuring before/after")
    final = outcome.model
    payload = io.to_bytes(final)
    before = model_stats(
        original,
        target=tgt,
        file_bytes=io.file_size(src).bytes,
        precision=the_plan.model_precision,
    )
    after = model_stats(final, target=tgt, file_bytes=len(payload), precision=the_plan.precision)
    sample = one_sample(data.verify_feeds(original, limit=1)[0], original)
    before.measured_latency_s = measure_latency(original, sample, runs=opts.measure_runs)
    after.measured_latency_s = measure_latency(final, sample, runs=opts.measure_runs)
    free, left = _free_dims(final)
    from onnxfit.runtime.session import deploy_settings

    deploy = deploy_settings(tgt, free_dims=free)
    deploy.update(model=out.name, precision=the_plan.precision)
    if left:
        deploy.setdefault("notes", []).append(
            f"symbolic dims {left} stay dynamic: add free-dimension overrides for them"
        )
    report_path, deploy_path = sidecar_paths(out)
    reports = prefix_reports + outcome.reports
    result = OptimizeResult(
        model=str(src),
        output=str(out),
        report_path=str(report_path),
        deploy_path=str(deploy_path),
        target=tgt.name,
        options=opts.to_dict(),
        plan=the_plan,
        passes=reports,
        before=before,
        after=after,
        verification=verification,
        gate=outcome.gate,
        data=data.to_dict(),
        attempts=outcome.attempts,
        kept_higher=outcome.kept,
        kept_float=_kept_float(reports, outcome.kept),
        gate_verification=gate_verification,
        deploy=deploy,
        notes=_notes(the_plan, data, outcome),
    )
    stages(f"writing {out}")
    result.elapsed_s = time.perf_counter() - started
    _write_all(final, result, out, report_path, deploy_path, force=force)
    return result


def _run_pipeline(
    original: ir.Model,
    the_plan: OptimizePlan,
    prefix: tuple[Any, ...],
    data: RunData,
    opts: OptimizeOptions,
    stages: _Stages,
) -> tuple[Outcome, list[PassReport], bool]:
    """Float passes once, then the lossy step in the back-off loop; which reference gated."""
    model = clone(original)
    reports: list[PassReport] = []
    pruning_steps = [s for s in prefix if s.name in PRUNE_STEPS]
    for step in prefix:
        if step.name in PRUNE_STEPS:
            continue  # run below, under the accuracy budget
        stages(f"pass {step.name}")
        p = make_step_pass(step)
        p(model)
        reports.append(p.report())
    if pruning_steps:
        model, prune_reports = run_budgeted(
            model,
            pruning_steps,
            data,
            opts,
            lossy_follows=the_plan.lossy_index is not None,
            say=stages,
        )
        reports += prune_reports
    lossy_at = the_plan.lossy_index
    step = the_plan.steps[lossy_at] if lossy_at is not None else None
    suffix = the_plan.steps[lossy_at + 1 :] if lossy_at is not None else ()
    if step is not None:
        stages(f"pass {step.name}")
    # Labels: always judged against the original's accuracy. Otherwise, after dequantizing,
    # against the float model (the INT8 input's own noise is not a loss of this run).
    gate_ref_is_orig = data.labels is not None or not the_plan.dequantizes or step is None
    outcome = run_lossy(
        base=model,
        gate_ref=original if gate_ref_is_orig else model,
        gate_ref_name="original" if gate_ref_is_orig else "dequantized",
        step=step,
        suffix=suffix,
        data=data,
        options=opts,
        say=stages,
    )
    return outcome, reports, gate_ref_is_orig


def _notes(the_plan: OptimizePlan, data: RunData, outcome: Outcome) -> list[str]:
    notes = list(the_plan.notes)
    if data.synthetic:
        notes.append(
            "verified on SYNTHETIC inputs (seeded noise): the figures say nothing about real "
            "accuracy; give --calibrate DIR or --eval DIR"
        )
    if data.skipped:
        notes.append(f"{len(data.skipped)} unreadable data file(s) skipped")
    if outcome.kept:
        notes.append(
            f"back-off kept {len(outcome.kept)} node(s) in higher precision after "
            f"{len(outcome.attempts) - 1} round(s)"
        )
    return notes


def _write_all(
    model: ir.Model,
    result: OptimizeResult,
    out: Path,
    report_path: Path,
    deploy_path: Path,
    *,
    force: bool,
) -> None:
    """Write the model, then the two JSON files; on failure remove what this call created."""
    created = [p for p in (out, report_path, deploy_path) if not p.exists()]
    try:
        size = io.save(model, out, force=force)
        result.after.file_bytes = size.bytes
        _write_json(report_path, result.to_dict())
        _write_json(deploy_path, result.deploy)
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
