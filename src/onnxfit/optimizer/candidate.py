"""One optimization candidate: a plan run on the data, judged, measured — nothing written.

:func:`build_candidate` runs the float passes once, prunes under the budget
(:mod:`onnxfit.optimizer.prune_step`), runs the lossy step in the back-off loop
(:mod:`onnxfit.optimizer.backoff`), compares the result with the original, measures both
(size, parameters, FLOPs, memory plan, fit verdict, projected and measured latency) and gives
the model and its :class:`~onnxfit.optimizer.result.OptimizeResult`. :mod:`onnxfit.optimizer.run`
runs one candidate (a forced precision) or several (the candidate search) and writes the chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit import io
from onnxfit.optimizer.backoff import Outcome, run_lossy
from onnxfit.optimizer.data import RunData
from onnxfit.optimizer.gate import Judge
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import OptimizePlan, make_step_pass
from onnxfit.optimizer.prune_step import PRUNE_STEPS, run_budgeted
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.optimizer.stats import measure_latency, model_stats, one_sample, precision_share
from onnxfit.passes.base import PassReport
from onnxfit.targets import Target
from onnxfit.verify import compare_models

logger = logging.getLogger(__name__)

#: progress(label, done, total): called as each stage starts; total grows with back-off rounds
ProgressFn = Callable[[str, int, int | None], None]


class Stages:
    def __init__(self, progress: ProgressFn | None, total: int) -> None:
        self.progress, self.done, self.total = progress, 0, total

    def __call__(self, label: str) -> None:
        logger.info("%s", label)
        if self.progress is not None:
            if self.done >= self.total:
                self.total = self.done + 1
            self.progress(label, self.done, self.total)
        self.done += 1


def build_candidate(
    original: ir.Model,
    the_plan: OptimizePlan,
    data: RunData,
    opts: OptimizeOptions,
    tgt: Target,
    *,
    src: Path,
    out: Path,
    report_path: Path,
    deploy_path: Path,
    stages: Stages,
    budget: int | str | None = None,
) -> tuple[ir.Model, OptimizeResult]:
    """Run ``the_plan`` on ``original`` (module docstring); the model and its result.
    Raises :class:`~onnxfit.errors.VerificationError` when no round meets the budget."""
    lossy_at = the_plan.lossy_index
    prefix = the_plan.steps[: lossy_at if lossy_at is not None else len(the_plan.steps)]
    outcome, prefix_reports, warnings = _run_pipeline(
        original, the_plan, prefix, data, opts, stages
    )
    sample = one_sample(data.verify_feeds(original, limit=1)[0], original)
    _probe(outcome.model, sample, the_plan)
    stages("comparing the written model with the original")
    verification = compare_models(
        original,
        outcome.model,
        data.verify_inputs,
        labels=data.labels if data.info is None or data.info.task == "classify" else None,
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
        budget=budget,
        input_shapes=opts.input_shapes,
    )
    after = model_stats(
        final,
        target=tgt,
        file_bytes=len(payload),
        precision=the_plan.precision,
        budget=budget,
        input_shapes=opts.input_shapes,
    )
    before.measured_latency_s = measure_latency(original, sample, runs=opts.measure_runs)
    after.measured_latency_s = measure_latency(final, sample, runs=opts.measure_runs)
    free, left = _free_dims(final)
    from onnxfit.runtime.session import deploy_settings

    deploy = deploy_settings(tgt, free_dims=free)
    deploy.update(precision=the_plan.precision)
    deploy.update(_deploy_checks(final, tgt, after.fit, opts.input_shapes))
    if left:
        deploy.setdefault("notes", []).append(
            f"symbolic dims {left} stay dynamic: add free-dimension overrides for them"
        )
    reports = prefix_reports + outcome.reports
    achieved = _achieved(final, the_plan, reports, tgt)
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
        deploy=deploy,
        notes=_notes(the_plan, data, outcome) + warnings,
        ranking=outcome.ranking,
        layer_errors=outcome.layer_errors,
        achieved=achieved,
        projection=tgt.projection_label,
    )
    return final, result


def _deploy_checks(
    model: ir.Model,
    tgt: Target,
    fit: dict[str, Any] | None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The memory verdict, and on DirectML the pre-flight, for the deploy manifest."""
    from onnxfit.analysis.directml import directml_preflight
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.pruning.sparse import densified

    out: dict[str, Any] = {}
    if fit is not None:
        keys = ("budget_bytes", "load_bytes", "first_run_bytes", "activations_bytes", "fits")
        out["memory"] = {k: fit[k] for k in keys} | {"allocator": fit["allocator"]}
    if tgt.providers and tgt.providers[0] == "DmlExecutionProvider":
        dense = densified(model)
        pre = directml_preflight(
            infer_shapes(dense, batch=1, input_shapes=input_shapes), original=dense
        )
        out["directml"] = {
            "all_on_dml": pre.all_on_dml,
            "fallback_nodes": [f"{n.name} ({n.op_type}): {n.reason}" for n in pre.fallback],
            "graph_capture": pre.graph_capture,
            "graph_capture_blockers": list(pre.capture_blockers),
            "pin": pre.to_dict()["pin"],
            "operator_table": pre.source,
        }
    return out


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


def _run_pipeline(
    original: ir.Model,
    the_plan: OptimizePlan,
    prefix: tuple[Any, ...],
    data: RunData,
    opts: OptimizeOptions,
    stages: Stages,
) -> tuple[Outcome, list[PassReport], list[str]]:
    """Float passes once, then the lossy step under the gate; the gate's warnings."""
    model = io.clone(original)
    reports: list[PassReport] = []
    pruning_steps = [s for s in prefix if s.name in PRUNE_STEPS]
    for step in prefix:
        if step.name in PRUNE_STEPS:
            continue  # run below, under the accuracy budget
        stages(f"pass {step.name}")
        p = make_step_pass(step)
        p(model)
        reports.append(p.report())
    float_model = model  # the reference of a label-free gate: the float model before pruning
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
    ref_is_orig = data.evaluator is not None or not the_plan.dequantizes or step is None
    stages("scoring the reference")
    judge = Judge(
        original if ref_is_orig else float_model,
        data,
        budget=opts.max_accuracy_drop,
        cosine_floor=opts.cosine_floor,
        reference_name="original model" if ref_is_orig else "dequantized model",
        float_reference=float_model if the_plan.dequantizes else None,
    )
    outcome = run_lossy(
        base=model, judge=judge, step=step, suffix=suffix, data=data, options=opts, say=stages
    )
    if step is not None or pruning_steps:
        stages("layer error table")
        outcome.layer_errors = layer_errors(float_model, outcome, data, top=opts.layer_top)
    return outcome, reports, list(judge.warnings)


def layer_errors(
    reference: ir.Model, outcome: Outcome, data: RunData, *, top: int
) -> list[dict[str, Any]]:
    """The ``top`` nodes by the error they add in the written model against ``reference`` (the
    float model before pruning and precision), under the model's own node names, on up to 16
    verification feeds; an FP16 model through its float16-storage emulation."""
    from onnxfit.verify.sensitivity import layer_errors as table

    candidate = outcome.model
    if outcome.emulated:
        from onnxfit.optimizer.emulate import emulate_fp16

        candidate = emulate_fp16(candidate)
    feeds = data.verify_feeds(reference, limit=16)
    return table(reference, candidate, feeds, top=top, origins=outcome.model)


def _probe(model: ir.Model, sample: Mapping[str, Any], the_plan: OptimizePlan) -> None:
    """Refuse (VerificationError) a result that crashes onnxruntime itself: its session is
    opened in a child first (:func:`onnxfit.runtime.probe.crash_probe`), since a crash here
    would take the whole command down without a word."""
    from onnxfit.errors import VerificationError
    from onnxfit.runtime.probe import crash_probe

    crash = crash_probe(io.to_bytes(model), sample)
    if crash is not None:
        raise VerificationError(
            f"onnxruntime itself crashed ({crash}) opening the {the_plan.precision} model on the "
            "CPU provider; refused, nothing written",
            hint="try another precision (--precision fp32), or another onnxruntime version",
        )


def _achieved(
    model: ir.Model, the_plan: OptimizePlan, reports: list[PassReport], target: Target
) -> dict[str, dict[str, Any]]:
    """Requested vs achieved: precision share of the compute, sparsity, channels removed."""
    out: dict[str, dict[str, Any]] = {}
    if the_plan.lossy_index is not None:
        share = precision_share(model, the_plan.precision, target=target)
        out["precision"] = {"requested": 1.0, **share}
    for r in reports:
        if r.name in PRUNE_STEPS and "achieved" in r.stats:
            key = "channels" if r.name == "prune-channels" else "sparsity"
            wanted = ("requested", "achieved", "of", "mode", "method", "saves")
            out[key] = {k: r.stats[k] for k in wanted if k in r.stats}
    return out


def _notes(the_plan: OptimizePlan, data: RunData, outcome: Outcome) -> list[str]:
    notes = list(the_plan.notes) + list(data.notes)
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
            f"{len(outcome.attempts) - 1} round(s) (smallest passing prefix of the ranked nodes)"
        )
    return notes
