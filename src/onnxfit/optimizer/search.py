"""The candidate search: with ``--precision auto`` the optimizer tries every precision the target
runs well, measures each, and keeps the fastest that fits and meets the accuracy budget.

Candidates (:func:`candidate_precisions`):

* a GPU target (``xbox-*`` via DirectML, ``cuda``): **FP16**, which becomes *mixed*
  FP16/FP32 when the back-off keeps nodes in float32. INT8 is not tried: its convolutions
  measured slower than FP16 on DirectML, and ORT's CUDA provider runs QDQ models through
  float kernels;
* a CPU target: **INT8** (7-bit weights without VNNI, see :func:`onnxfit.optimizer.plan.int8_step`)
  and **FP32**; whether INT8 is faster is measured, not assumed (FP16 is not tried: ORT's CPU
  provider computes it in FP32);
* a custom target: its default precision and FP32;
* an FP16 model: FP16 only (onnxfit does not widen it); an INT8 model: its candidates after
  dequantizing.

Pruning levels (``--search-channels 0.125,0.25``, :attr:`OptimizeOptions.search_channels`): each
ratio adds a candidate "preferred precision + that share of the Conv output channels removed"
(least-squares refit of the next layers on the calibration images), honoured exactly or listed
as failing the budget. Channel pruning is the kind that saves time and memory; unstructured
sparsity only shrinks the file (runtimes densify it), so it is not a speed candidate. Each
level costs a full build and verification, so the levels are asked for, not implied.

"Fastest" is the median latency measured on this host when the target is this host's CPU
(``cpu``) and ``measure_runs`` > 0, else the roofline projection on the target. A candidate
that fails the budget or does not fit stays in the table with the reason; the report keeps the
whole table (:attr:`OptimizeResult.candidates`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from onnxfit.errors import VerificationError
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.plan import Precision, build_plan, model_precision
from onnxfit.optimizer.result import OptimizeResult
from onnxfit.targets import Target

logger = logging.getLogger(__name__)

Build = Callable[[Any], tuple[ir.Model, OptimizeResult]]


def candidate_precisions(target: Target, model_prec: str) -> list[tuple[Precision, str]]:
    """(precision, why) pairs to try for ``target`` (module docstring), preferred first."""
    if model_prec == "fp16":
        return [("fp16", "the model is FP16 already")]
    if target.is_gpu:
        return [("fp16", "GPU: FP16, mixed with FP32 where the back-off needs it")]
    if target.device_kind == "cpu" or target.name == "cpu" or target.features:
        return [
            ("int8", "CPU: INT8 where it is measured faster"),
            ("fp32", "CPU: FP32 (ORT's CPU provider computes FP16 in FP32)"),
        ]
    prec = target.default_precision if target.default_precision in ("fp16", "int8") else "fp32"
    out: list[tuple[Precision, str]] = [(prec, f"{target.name}'s default precision")]  # type: ignore[list-item]
    if prec != "fp32":
        out.append(("fp32", "FP32 fallback"))
    return out


def speed_key(result: OptimizeResult) -> tuple[float, str]:
    """(seconds, how) the search compares candidates by (module docstring)."""
    measured = result.after.measured_latency_s
    if result.target == "cpu" and measured is not None:
        return measured, "measured on this host"
    return result.after.projected_latency_s, f"projected on {result.target}"


def label(result: OptimizeResult) -> str:
    """``fp16``, ``fp16+fp32 (mixed, 3 nodes float32)``, ``int8+float (5 nodes float)``, with
    `` + 25% channels`` when channels were removed."""
    kept = len(result.kept_higher)
    text = result.precision
    if kept:
        higher = "fp32" if result.precision == "fp16" else "float"
        text = f"{result.precision}+{higher} (mixed, {kept} node(s) {higher})"
    channels = result.achieved.get("channels", {}).get("requested")
    return text + (f" + {float(channels):.0%} channels" if channels else "")


def candidate_options(
    target: Target, model_prec: str, options: OptimizeOptions
) -> list[tuple[str, str, OptimizeOptions]]:
    """(label, why, options) of every candidate: the precisions (:func:`candidate_precisions`)
    and, for each ``options.search_channels`` ratio, the preferred precision with that share
    of channels removed (module docstring)."""
    precisions = candidate_precisions(target, model_prec)
    out: list[tuple[str, str, OptimizeOptions]] = [
        (p, why, dataclasses.replace(options, precision=p)) for p, why in precisions
    ]
    best = precisions[0][0]
    for ratio in options.search_channels:
        opts = dataclasses.replace(
            options, precision=best, prune_channels=ratio, prune_channels_auto=False
        )
        out.append((f"{best} + {ratio:.0%} channels", "pruning level (--search-channels)", opts))
    return out


def row(result: OptimizeResult, status: str) -> dict[str, Any]:
    """One line of the candidate table."""
    seconds, how = speed_key(result)
    share = result.achieved.get("precision", {})
    return {
        "precision": result.precision,
        "label": label(result),
        "status": status,
        "file_bytes": result.after.file_bytes,
        "runtime_bytes": result.after.runtime_bytes,
        "fits": result.after.fits,
        "measured_latency_s": result.after.measured_latency_s,
        "projected_latency_s": result.after.projected_latency_s,
        "speed_s": seconds,
        "speed_from": how,
        "gate": result.gate.describe(),
        "gate_value": result.gate.value,
        "node_share": share.get("node_share"),
        "chosen": False,
    }


def search(
    original: ir.Model,
    target: Target,
    options: OptimizeOptions,
    build: Callable[[Any, str], tuple[ir.Model, OptimizeResult]],
    *,
    say: Callable[[str], None] = lambda _: None,
) -> tuple[ir.Model, OptimizeResult]:
    """Build every candidate (``build(plan, label)``), keep the fastest that fits and meets
    the budget (else the smallest that meets it: the caller's fit check then refuses it), with
    the table in ``result.candidates``. Raises :class:`VerificationError` when none meets the
    budget."""
    rows: list[dict[str, Any]] = []
    built: list[tuple[ir.Model, OptimizeResult, dict[str, Any]]] = []
    failures = []
    for name, why, opts in candidate_options(target, model_precision(original), options):
        plan = build_plan(original, target, opts)
        plan = dataclasses.replace(plan, reason=f"candidate search: {why}; {plan.reason}")
        say(f"candidate {name}")
        try:
            model, result = build(plan, name)
        except VerificationError as exc:
            rows.append({"precision": opts.precision, "label": name, "status": "refused",
                         "gate": exc.message, "chosen": False})  # fmt: skip
            failures.append(f"{name}: {exc.message}")
            continue
        status = "ok" if result.after.fits else "does not fit"
        built.append((model, result, row(result, status)))
        rows.append(built[-1][2])
    if not built:
        raise VerificationError(
            "no candidate was accepted: " + "; ".join(failures),
            hint="each reason is above: raise --max-accuracy-drop, give --eval DIR (labelled "
            "images), or change the request",
        )
    fitting = [b for b in built if b[1].after.fits]
    if fitting:
        model, result, chosen = min(fitting, key=lambda b: speed_key(b[1])[0])
    else:
        model, result, chosen = min(built, key=lambda b: b[1].after.runtime_bytes)
    chosen["chosen"] = True
    result.candidates = rows
    seconds, how = speed_key(result)
    result.notes.append(
        f"candidate search: {label(result)} chosen of {len(rows)} candidate(s), "
        f"{seconds * 1e3:.2f} ms {how}" + ("" if fitting else "; none fits")
    )
    logger.info("candidate search: %s", [(r["label"], r["status"]) for r in rows])
    return model, result
