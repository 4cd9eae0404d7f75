"""``optimize()``: plan, read the data, run the passes, verify (backing off), measure, write.

Order of work, so that a failure leaves nothing behind: check the output path, load the model,
plan, read calibration / evaluation data, run the float passes once, run the lossy step in the
back-off loop (:mod:`onnxfit.optimizer.backoff`), compare with the original, measure before and
after, and only then write ``OUT`` (atomic, :func:`onnxfit.io.save`), ``OUT.report.json``,
``OUT.deploy.json`` and ``OUT.golden.npz`` (the deploy bundle, :mod:`onnxfit.optimizer.deploy`;
atomic too). ``OUT.report.json`` is named by replacing a ``.onnx`` suffix
(``net.onnx`` -> ``net.report.json``, ``net.deploy.json``); other names get the suffix appended.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit import atomic, io
from onnxfit.errors import DoesNotFitError
from onnxfit.optimizer.candidate import ProgressFn, Stages, build_candidate

__all__ = ["ProgressFn", "check_output", "golden_path", "optimize", "sidecar_paths"]
from onnxfit.optimizer.data import RunData, load_run_data
from onnxfit.optimizer.gate import USE_SCORE_THRESHOLD
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import OptimizePlan, build_plan
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.runtime.ort_errors import guard_ort
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)


def sidecar_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(report, deploy) paths that belong to model file ``out``."""
    p = Path(out)
    stem = p.with_suffix("") if p.suffix.lower() == ".onnx" else p
    return stem.with_name(stem.name + ".report.json"), stem.with_name(stem.name + ".deploy.json")


def check_output(
    src: Path, out: Path, *, force: bool, inputs: tuple[Path | None, ...] = ()
) -> None:
    """Refuse (InputError, before any work) an output that is a folder, the input model or one of
    the other ``inputs`` (its ``.data`` file, the data folders) even with ``force``, or a model,
    report, deploy manifest or golden file that exists unless ``force``
    (:func:`onnxfit.atomic.guard_output`)."""
    model_inputs = (src, src.with_name(src.name + ".data"), *inputs)
    for path in (out, *sidecar_paths(out), golden_path(out)):
        atomic.guard_output(path, inputs=model_inputs, force=force)


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
    allow_over_budget: bool = False,
    progress: ProgressFn | None = None,
    plan: OptimizePlan | None = None,
    budget: int | str | None = None,
    **options: Any,
) -> OptimizeResult:
    """Optimize the model at ``model_path`` for ``target`` and write ``out_path`` (+ sidecars).

    ``options`` are further :class:`~onnxfit.optimizer.options.OptimizeOptions` fields
    (``method``, ``max_rounds``, ``min_cosine``, ``measure_runs``, ``fuse``, ``seed``...).
    ``plan`` reuses a plan made by :func:`onnxfit.optimizer.plan.plan` (e.g. shown first).
    ``budget`` (bytes or ``"256MB"``) replaces the target's memory budget in the fit verdict
    (:func:`onnxfit.analysis.budget.decide_fit`; ``after.fit`` / ``result.fits``).
    Raises :class:`InputError` / :class:`ModelLoadError` for bad input,
    :class:`VerificationError` when no back-off round meets the accuracy budget and
    :class:`DoesNotFitError` (CLI exit status 3; ``.result`` holds the figures) when the
    optimized model does not fit the target's memory budget, unless ``allow_over_budget``;
    then nothing is written.
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
    data_dirs = tuple(Path(d) for d in (calibrate, eval) if d is not None)
    check_output(src, out, force=force, inputs=data_dirs)
    original = io.load(src)
    searching = plan is None and searches(opts)
    the_plan = plan if plan is not None else build_plan(original, tgt, opts)
    stages = Stages(progress, total=len(the_plan.steps) + 4)
    data = load_run_data(original, opts, progress=stages)
    report_path, deploy_path = sidecar_paths(out)

    def build(a_plan: OptimizePlan, _label: str = "") -> tuple[ir.Model, OptimizeResult]:
        return build_candidate(
            original,
            a_plan,
            data,
            opts,
            tgt,
            src=src,
            out=out,
            report_path=report_path,
            deploy_path=deploy_path,
            stages=stages,
            budget=budget,
        )

    if searching:
        from onnxfit.optimizer.search import search

        final, result = search(original, tgt, opts, build, say=stages)
    else:
        final, result = build(the_plan)
    result.elapsed_s = time.perf_counter() - started
    if not result.after.fits and not allow_over_budget:
        verdict = result.after.verdict
        if verdict is not None and not isinstance(target, Target):
            verdict = dataclasses.replace(verdict, target_arg=str(target))
        step = verdict.next_step() if verdict is not None else None
        raise DoesNotFitError(
            f"{verdict.line() if verdict else 'the optimized model does not fit'}; nothing written",
            hint=(f"{step}; " if step else "") + "or pass --allow-over-budget to write it anyway",
            result=result,
        )
    stages(f"writing {out}")
    _write_all(final, result, out, report_path, deploy_path, data=data, target=tgt, force=force)
    return result


def searches(options: OptimizeOptions) -> bool:
    """Whether ``optimize`` runs the candidate search (:mod:`onnxfit.optimizer.search`): with
    ``--precision auto``, no ``--passes`` list, and the search not turned off."""
    return options.precision == "auto" and options.passes is None and options.search


def golden_path(out: str | os.PathLike[str]) -> Path:
    """The golden inputs/outputs file that belongs to model file ``out`` (``net.golden.npz``)."""
    p = Path(out)
    stem = p.with_suffix("") if p.suffix.lower() == ".onnx" else p
    return stem.with_name(stem.name + ".golden.npz")


def _write_all(
    model: ir.Model,
    result: OptimizeResult,
    out: Path,
    report_path: Path,
    deploy_path: Path,
    *,
    data: RunData,
    target: Target,
    force: bool,
) -> None:
    """Write the model, the report, the deploy bundle (deploy.json + golden .npz); on failure
    remove what this call created."""
    from onnxfit.optimizer import deploy as bundle

    gold = golden_path(out)
    created = [p for p in (out, report_path, deploy_path, gold) if not p.exists()]
    try:
        size = io.save(model, out, force=force)
        result.after.file_bytes = size.bytes
        result.written = True
        arrays = bundle.golden(model, data.verify_feeds(model))
        bundle.write_golden(gold, arrays)
        a = result.after
        info = data.info
        post: dict[str, Any] | None = None
        if info is not None:
            post = {
                "task": info.task,
                "decoder": info.decoder,
                "num_classes": info.num_classes,
            }
            if info.task == "detect":
                post.update(score_threshold=USE_SCORE_THRESHOLD, iou_threshold=0.45)
        result.deploy = bundle.bundle(
            model=model,
            model_file=out,
            golden_file=gold,
            golden_arrays=arrays,
            target=target,
            precision=result.precision,
            info=info,
            session=dict(result.deploy),
            memory={
                "weights_bytes": a.weight_bytes,
                "arena_bytes": a.arena_bytes,
                "io_bytes": a.runtime_bytes - a.weight_bytes - a.arena_bytes,
                "runtime_bytes": a.runtime_bytes,
                "budget_bytes": int((a.fit or {}).get("budget_bytes", target.memory_budget)),
                "fits": a.fits,
                **({"verdict": a.fit} if a.fit else {}),
                "note": "planned (greedy-by-size offsets); the provider's own arena and "
                "workspaces come on top",
            },
            free_dims=result.deploy.get("free_dimension_overrides", {}),
            postprocessing=post,
        )
        _write_json(report_path, result.to_dict())
        _write_json(deploy_path, result.deploy)
    except BaseException:
        for p in created:
            with contextlib.suppress(OSError):
                p.unlink()
        raise
