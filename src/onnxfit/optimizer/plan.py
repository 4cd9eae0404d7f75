"""Planning: which precision a target gets, and which passes run, in which order, and why.

``--precision auto`` follows the target (facts in DESIGN.md and FINDINGS.md):

* GPU targets (``xbox-*`` via DirectML, ``cuda``): **FP16**. It halves weights and activations,
  RDNA 2 runs packed FP16 at twice the FP32 rate, and INT8 convolutions measured slower than
  FP16 on DirectML; on CUDA FP16 runs on the tensor cores.
* CPU with VNNI (AVX-512 VNNI, AVX-VNNI or AMX): **INT8** (static QDQ, uint8 activations): on the
  project's CPU it ran ResNet-18 in 3.2-4.6 ms vs 8.2 ms FP32, while FP16 gave nothing (ORT's CPU
  provider computes FP16 models in FP32).
* any other CPU: **FP32** (no fast integer dot products; FP16 saves disk only).
* a custom target: its ``default_precision``.

Default pipeline: ``cleanup`` -> ``dequantize`` (only when the input is an INT8 QDQ/QOperator
model and the precision is not INT8) -> ``fold-batchnorm`` -> ``fuse`` (counts Conv/Gemm +
activation pairs; output stays portable unless ``fuse="fusedconv"`` for a CPU/CUDA target)
-> ``fp16`` | ``int8`` (the lossy step, the one the back-off loop repeats). ``--passes a,b,c``
replaces the list (names from :data:`onnxfit.optimizer.registry.PASSES`, plus ``int8`` /
``int8-dynamic``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.optimizer.registry import PASSES
from onnxfit.passes.base import OnnxfitPass
from onnxfit.targets import Target, get_target, has_vnni

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16", "int8"]
#: Steps the back-off loop repeats with more nodes kept in higher precision.
LOSSY_STEPS = frozenset({"fp16", "int8", "int8-dynamic"})
_STEP_PRECISION: dict[str, Precision] = {"fp16": "fp16", "int8": "int8", "int8-dynamic": "int8"}
_INT8_NODE_OPS = frozenset(
    {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}
    | {"ConvInteger", "QLinearConv", "QLinearMatMul", "QLinearAdd", "QLinearMul", "QGemm"}
)


@dataclass(frozen=True)
class PlanStep:
    """One pass to run: its registry name, its options, and why it is in the plan."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    why: str = ""

    @property
    def lossy(self) -> bool:
        return self.name in LOSSY_STEPS

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "why": self.why}


@dataclass(frozen=True)
class OptimizePlan:
    """The precision chosen (and why), the steps in order, and notes for the user."""

    target: str
    precision: Precision
    reason: str
    steps: tuple[PlanStep, ...]
    model_precision: Precision
    notes: tuple[str, ...] = ()

    @property
    def pass_names(self) -> list[str]:
        return [s.name for s in self.steps]

    @property
    def lossy_index(self) -> int | None:
        """Index of the step the back-off loop repeats (the last lossy one), if any."""
        idx = [i for i, s in enumerate(self.steps) if s.lossy]
        return idx[-1] if idx else None

    @property
    def dequantizes(self) -> bool:
        return "dequantize" in self.pass_names

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "precision": self.precision,
            "reason": self.reason,
            "model_precision": self.model_precision,
            "steps": [s.to_dict() for s in self.steps],
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------- pass table

#: Step options the plan reads itself (not handed to the pass): ``auto`` pruning mode.
PLAN_ONLY = frozenset({"auto"})


def make_step_pass(step: PlanStep, **extra: Any) -> OnnxfitPass:
    """A new pass instance for ``step`` (``extra`` options override the plan's)."""
    cls = PASSES.get(step.name)
    if cls is None:
        raise InputError(f"unknown pass {step.name!r}", hint=f"known passes: {known_passes()}")
    opts = {k: v for k, v in {**step.options, **extra}.items() if k not in PLAN_ONLY}
    return cls(**opts)


def known_passes() -> str:
    return ", ".join(PASSES)


# ---------------------------------------------------------------------------- precision


def model_precision(model: ir.Model) -> Precision:
    """``int8`` for a QDQ / QOperator / dynamic-quantized model, ``fp16`` when most float weight
    elements are float16, else ``fp32``."""
    if any(n.op_type in _INT8_NODE_OPS for n in model.graph):
        return "int8"
    f16 = f32 = 0
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        if tensor.dtype == ir.DataType.FLOAT16:
            f16 += tensor.size
        elif tensor.dtype == ir.DataType.FLOAT:
            f32 += tensor.size
    return "fp16" if f16 > f32 else "fp32"


def choose_precision(target: Target, requested: str = "auto") -> tuple[Precision, str]:
    """(precision, human reason) for ``target``; ``requested`` other than auto forces it."""
    if requested in ("fp32", "fp16", "int8"):
        reason = f"--precision {requested} (forced)"
        if requested == "int8" and target.is_gpu:
            reason += "; note: INT8 convolutions measured slower than FP16 on DirectML"
        elif requested == "fp16" and not target.is_gpu:
            reason += "; note: ORT's CPU provider computes FP16 in FP32 (saves disk only)"
        return requested, reason  # type: ignore[return-value]
    if target.is_gpu:
        if "DmlExecutionProvider" in target.providers[:1]:
            return "fp16", (
                f"{target.name} is a DirectML GPU: FP16 halves weights and activations, RDNA 2 "
                "runs packed FP16 at 2x FP32, and INT8 convolutions measured slower than FP16 "
                "on DirectML"
            )
        return "fp16", (
            f"{target.name} is a GPU: FP16 halves weights and activations and runs on the "
            "tensor cores"
        )
    if target.name == "cpu" or target.features:
        if has_vnni(target.features):
            return "int8", (
                f"{target.name} has VNNI ({', '.join(target.features)}): INT8 (uint8 "
                "activations) ran ResNet-18 2-2.5x faster than FP32 on such a CPU; FP16 gives "
                "no CPU speed-up"
            )
        return "fp32", (
            f"{target.name} has no VNNI: INT8 would gain little and FP16 runs as FP32 on CPU"
        )
    return target.default_precision, (
        f"{target.name}: the target's default precision ({target.default_precision})"
    )


# ---------------------------------------------------------------------------- steps


def default_steps(
    model_prec: Precision, precision: Precision, target: Target, options: OptimizeOptions
) -> list[PlanStep]:
    """The default pipeline for a model of ``model_prec`` going to ``precision`` on ``target``."""
    steps = [PlanStep("cleanup", {}, "fold constants, drop dead code, name every node")]
    if model_prec == "int8" and precision != "int8":
        steps.append(
            PlanStep("dequantize", {}, f"the input is INT8 (QDQ/QOperator); {precision} wanted")
        )
    steps.append(
        PlanStep("fold-batchnorm", {}, "BatchNormalization folded into Conv/Gemm (portable)")
    )
    steps.append(_fuse_step(target, options, precision))
    steps += prune_steps(options)  # after the float cleanups, before the precision step
    if precision == "fp16" and model_prec != "fp16":
        steps.append(
            PlanStep(
                "fp16",
                {"keep_io_types": True},
                "float16 weights and activations; float32 inputs/outputs kept",
            )
        )
    elif precision == "int8" and model_prec != "int8":
        steps.append(int8_step(target, options))
    if options.prune is not None:
        steps.append(
            PlanStep(
                "sparse-storage",
                {},
                "pruned weights stored as bitmask + non-zero values when sparsity >= 70 % "
                "(lossless; onnxruntime folds the decode at load)",
            )
        )
    return steps


def int8_reduce_range(target: Target) -> bool:
    """7-bit weights (``reduce_range``) for a CPU target without VNNI (module docstring)."""
    return not target.is_gpu and not has_vnni(target.features)


def int8_step(target: Target, options: OptimizeOptions) -> PlanStep:
    """The static INT8 step for ``target``: U8S8 QDQ, per-channel weights, and on a CPU without
    VNNI 7-bit weights, which keep ORT's int16 accumulation from saturating."""
    reduce = int8_reduce_range(target)
    why = (
        "static QDQ INT8: uint8 activations (U8S8: every conv an int8 kernel), per-channel "
        f"int8 weights, {options.method} calibration"
    )
    if reduce:
        why += (
            f"; {target.name} has no VNNI: 7-bit weights (reduce_range), as ORT advises, since "
            "its AVX2 U8S8 kernels saturate int16 sums (ShuffleNetV2 on such a CPU: top-1 "
            "57.6 % with 8-bit weights, 76.6 % with 7-bit, 77.0 % U8U8 at 4x the latency; "
            "FP32 78.6 %)"
        )
    return PlanStep(
        "int8",
        {
            "method": options.method,
            "activation_type": "uint8",
            "per_channel": True,
            "reduce_range": reduce,
        },
        why,
    )


def prune_steps(options: OptimizeOptions) -> list[PlanStep]:
    """``prune-channels`` then ``prune`` when asked for (``sparse-storage`` is added last)."""
    steps = []
    if options.prune_channels is not None:
        steps.append(prune_step("prune-channels", options))
    if options.prune is not None:
        steps.append(prune_step("prune", options))
    return steps


def prune_step(name: str, options: OptimizeOptions) -> PlanStep:
    """The ``prune`` / ``prune-channels`` step the options ask for: exact, or auto (budget)."""
    if name == "prune-channels":
        ratio, auto = options.prune_channels, options.prune_channels_auto
        what = {
            "magnitude": "remove the lowest-scoring Conv output channels",
            "reconstruct": "remove Conv output channels and refit the next layers by least "
            "squares on the calibration images",
            "auto": "remove Conv output channels (least-squares refit of the next layers with "
            "real calibration images)",
        }[options.prune_channels_method]
        opts: dict[str, Any] = {
            "ratio": ratio,
            "multiple_of": options.channel_multiple,
            "method": options.prune_channels_method,
        }
    else:
        ratio, auto = options.prune, options.prune_auto
        what = {
            "magnitude": f"zero the smallest weights ({options.prune_scope})",
            "reconstruct": f"zero weights with layer-wise OBS reconstruction on the calibration "
            f"images ({options.prune_scope})",
            "auto": f"zero weights ({options.prune_scope}; layer-wise reconstruction with real "
            "calibration images, else the smallest)",
        }[options.prune_method]
        opts = {"sparsity": ratio, "scope": options.prune_scope, "method": options.prune_method}
    if ratio is None:
        flag = "--prune-channels" if name == "prune-channels" else "--prune"
        raise InputError(
            f"--passes names {name} but {flag} gives no ratio",
            hint=f"add {flag} 0.5 (exact) or {flag} auto",
        )
    if auto:
        why = (
            f"{what}: the accuracy budget chooses per-layer ratios up to {ratio:g} "
            "(auto; one-shot, from a sensitivity scan)"
        )
    else:
        why = (
            f"{what}: exactly {ratio:g} as requested (one-shot); refused with its accuracy cost "
            "when that breaks the budget"
        )
    return PlanStep(name, {**opts, "auto": auto}, why)


def _fuse_step(target: Target, options: OptimizeOptions, precision: Precision) -> PlanStep:
    if options.fuse == "fusedconv":
        if "DmlExecutionProvider" in target.providers:
            raise InputError(
                f"fuse=fusedconv writes com.microsoft FusedConv, which {target.name} (DirectML) "
                "cannot run",
                hint="leave --fuse at none for DirectML targets",
            )
        if precision != "fp32":
            raise InputError(
                f"fuse=fusedconv needs an fp32 plan (FusedConv kernels are float32; {precision} "
                "passes would leave them float32)",
                hint="use --precision fp32 with fusedconv, or leave fuse at none",
            )
        provider = "cuda" if "CUDAExecutionProvider" in target.providers[:1] else "cpu"
        return PlanStep(
            "fuse",
            {"emit": "fusedconv", "provider": provider},
            f"Conv/Gemm + activation written as com.microsoft FusedConv/FusedGemm ({provider})",
        )
    return PlanStep(
        "fuse",
        {"emit": "none"},
        "count Conv/Gemm + activation pairs; output stays portable (DirectML fuses them "
        "itself, ORT fuses them at session creation on CPU/CUDA)",
    )


def steps_from_names(
    names: Sequence[str], options: OptimizeOptions, target: Target | None = None
) -> list[PlanStep]:
    """Steps for ``--passes a,b,c``: registry names with their default options (``int8``:
    the target's INT8 settings, :func:`int8_step`)."""
    table = PASSES
    unknown = [n for n in names if n not in table]
    if unknown:
        raise InputError(
            f"unknown pass {unknown[0]!r}" if len(unknown) == 1 else f"unknown passes {unknown}",
            hint=f"known passes: {', '.join(table)}",
        )
    steps = []
    for name in names:
        if name in ("prune", "prune-channels"):
            step = prune_step(name, options)
            steps.append(PlanStep(name, step.options, f"from --passes; {step.why}"))
            continue
        opts: dict[str, Any] = {}
        if name == "int8":
            opts = dict(int8_step(target or get_target("cpu"), options).options)
        steps.append(PlanStep(name, opts, "from --passes"))
    return steps


def plan(
    model: ir.Model | str | os.PathLike[str],
    target: str | Target = "xbox-series-s",
    *,
    precision: str = "auto",
    passes: Sequence[str] | str | None = None,
    **options: Any,
) -> OptimizePlan:
    """The plan for ``model`` (a model or a path) on ``target``; nothing runs.

    ``options`` are further :class:`~onnxfit.optimizer.options.OptimizeOptions` fields
    (``fuse``, ``method``...). Raises :class:`InputError` for an unknown pass or target, a
    ``--passes`` list whose precision step contradicts ``precision``, or a conversion the
    passes cannot make (FP16 input to FP32/INT8).
    """
    opts = OptimizeOptions.build(precision=precision, passes=passes, **options)
    return build_plan(model, get_target(target), opts)


def build_plan(
    model: ir.Model | str | os.PathLike[str], target: Target, options: OptimizeOptions
) -> OptimizePlan:
    """:func:`plan` with options already built."""
    loaded = model if isinstance(model, ir.Model) else io.load(Path(model))
    model_prec = model_precision(loaded)
    notes: list[str] = []
    if options.passes is not None:
        steps = steps_from_names(options.passes, options, target)
        lossy = [s.name for s in steps if s.lossy]
        from_passes: Precision = _STEP_PRECISION[lossy[-1]] if lossy else model_prec
        if "dequantize" in options.passes and not lossy:
            from_passes = "fp32"
        if options.precision not in ("auto", from_passes):
            raise InputError(
                f"--passes {','.join(options.passes)} gives {from_passes}, but --precision "
                f"{options.precision} was asked for",
                hint="drop --precision, or put the matching pass (fp16 / int8) in --passes",
            )
        chosen, reason = from_passes, f"from --passes ({','.join(options.passes)})"
    else:
        chosen, reason = choose_precision(target, options.precision)
        if model_prec == "fp16" and chosen != "fp16":
            raise InputError(
                f"the model is already FP16; onnxfit cannot turn it into {chosen}",
                hint="start from the FP32 model, or use --precision fp16",
            )
        steps = default_steps(model_prec, chosen, target, options)
    if model_prec == chosen and options.passes is None:
        notes.append(
            f"the model is already {chosen.upper()}: no precision pass runs; it is still verified"
        )
    elif model_prec == "int8" and chosen != "int8":
        notes.append(f"INT8 input: dequantized to float first, then {chosen}")
    return OptimizePlan(target.name, chosen, reason, tuple(steps), model_prec, tuple(notes))
