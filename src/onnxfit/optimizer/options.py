"""The options of ``onnxfit optimize``, in one dataclass that ``plan`` and ``optimize`` share.

Adding a pipeline feature (e.g. pruning) is: a field here (validated in :meth:`check`), a step
in :func:`onnxfit.optimizer.plan.default_steps`, and a CLI flag in ``cli/optimize_cmd.py``.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

from onnxfit.errors import InputError

PrecisionArg = Literal["auto", "fp32", "fp16", "int8"]
PRECISION_ARGS: tuple[str, ...] = ("auto", "fp32", "fp16", "int8")
FuseEmit = Literal["none", "fusedconv"]
CalibMethod = Literal["minmax", "entropy", "percentile"]

#: Bounded back-off: at most this many judged rounds after the first (best round + bisection).
DEFAULT_MAX_ROUNDS = 8
#: ``--prune auto`` / ``--prune-channels auto``: the largest ratio the budget mode tries.
AUTO_MAX_SPARSITY = 0.9
AUTO_MAX_CHANNELS = 0.5
#: ``--prune-method`` / ``--prune-channels-method`` values.
PRUNE_METHODS = ("auto", "reconstruct", "magnitude")
PruneMethodArg = Literal["auto", "reconstruct", "magnitude"]
#: The back-off keeps at most this share of the lossy step's compute nodes in higher precision.
DEFAULT_MAX_KEPT_SHARE = 0.25


@dataclass(frozen=True)
class OptimizeOptions:
    """Everything that shapes the plan and the run, besides the model, output and target.

    * ``precision``: ``auto`` (the target's best: FP16 on GPUs, INT8 on CPUs with VNNI, else
      FP32) or a forced ``fp32`` / ``fp16`` / ``int8``.
    * ``passes``: registry names that replace the default pipeline (``--passes a,b,c``).
    * ``calibrate``: image folder or ``.npy``/``.npz`` inputs for INT8 calibration and FP16
      activation ranges (and verification when there is no ``eval``); ``calib_count`` images.
    * ``eval``: labelled folder (images + ``labels.tsv``, or YOLO ``images/`` + ``labels/``):
      the gate measures the top-1 / mAP@0.5 drop; ``eval_count`` images at most (None: all).
    * ``verify_count``: held-out ``calibrate`` inputs (after the first ``calib_count``) the
      gate judges on when there are no labels.
    * ``max_accuracy_drop``: the budget in points (see :mod:`onnxfit.optimizer.gate`).
    * ``min_cosine``: cosine floor when no accuracy or agreement applies (None:
      ``1 - max_accuracy_drop / 100``).
    * ``max_rounds``: judged back-off rounds after round 0 (the best round, then bisection on
      the ranked nodes); ``max_kept_share``: at most this share of the compute nodes
      (Conv/Gemm/MatMul) stays in higher precision.
    * ``preset``: image preprocessing preset (None: guessed from the input shape).
    * ``method``: INT8 calibration method; ``fuse``: what the fuse step emits.
    * ``measure_runs``: timed runs for the measured latency on this host (0: skip).
    * ``layer_top``: rows of the layer error table (0: none).
    * ``search``: with ``precision="auto"``, try every precision the target runs well and keep
      the fastest that fits and meets the budget (:mod:`onnxfit.optimizer.search`).
    * ``synthetic_count``: samples of seeded noise when no data is given; ``seed``.
    * ``input_shapes``: full shapes for inputs with dynamic dims (``--input-shape``): the
      synthetic inputs and the analysis use them; the written model keeps its dynamic dims.
    * ``prune``: unstructured magnitude sparsity (``prune_scope`` global or per layer);
      ``prune_channels``: ratio of Conv output channels removed. Both one-shot. A number is
      honoured exactly or refused with the accuracy it costs; ``"auto"`` (``prune_auto`` /
      ``prune_channels_auto``; ``"auto:0.7"`` sets the maximum) lets the accuracy budget choose
      per-layer ratios up to the maximum (:mod:`onnxfit.optimizer.prune_step`).
      ``prune_method`` / ``prune_channels_method``: ``reconstruct`` (layer-wise reconstruction
      on the calibration images: OBS weight updates / least-squares refit of the next layer),
      ``magnitude`` (weights / filter norms alone), or ``auto`` (reconstruct with real
      calibration images, magnitude without). ``channel_multiple``: kept channel counts are
      rounded to multiples of it (1: exact).
    * ``search_channels``: channel-pruning ratios the candidate search also tries (each with the
      target's preferred precision; :mod:`onnxfit.optimizer.search`).
    """

    precision: PrecisionArg = "auto"
    passes: tuple[str, ...] | None = None
    calibrate: str | None = None
    eval: str | None = None
    max_accuracy_drop: float = 1.0
    min_cosine: float | None = None
    max_rounds: int = DEFAULT_MAX_ROUNDS
    max_kept_share: float = DEFAULT_MAX_KEPT_SHARE
    preset: str | None = None
    calib_count: int = 100
    verify_count: int = 200
    eval_count: int | None = None
    method: CalibMethod = "minmax"
    fuse: FuseEmit = "none"
    measure_runs: int = 20
    synthetic_count: int = 16
    seed: int = 0
    prune: float | None = None
    prune_scope: Literal["global", "layer"] = "global"
    prune_channels: float | None = None
    prune_auto: bool = False
    prune_channels_auto: bool = False
    prune_method: PruneMethodArg = "auto"
    prune_channels_method: PruneMethodArg = "auto"
    channel_multiple: int = 8
    layer_top: int = 10
    search: bool = True
    search_channels: tuple[float, ...] = ()
    input_shapes: dict[str, tuple[int, ...]] | None = None

    @classmethod
    def build(cls, **values: Any) -> OptimizeOptions:
        """Options from keyword values; unknown names raise :class:`InputError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(
                f"unknown optimize option(s): {', '.join(unknown)}",
                hint=f"known options: {', '.join(sorted(known))}",
            )
        passes = values.get("passes")
        if isinstance(passes, str):
            values["passes"] = parse_pass_list(passes)
        elif passes is not None:
            values["passes"] = tuple(passes)
        levels = values.get("search_channels")
        if isinstance(levels, str):
            values["search_channels"] = _ratios(levels, "--search-channels")
        elif levels is None:
            values.pop("search_channels", None)
        else:
            values["search_channels"] = tuple(float(r) for r in levels)
        if values.get("input_shapes"):
            shapes = values["input_shapes"]
            values["input_shapes"] = {str(k): tuple(int(d) for d in v) for k, v in shapes.items()}
        else:
            values.pop("input_shapes", None)
        for key in ("calibrate", "eval"):
            if values.get(key) is not None:
                values[key] = os.fspath(values[key])
        for key, default in (("prune", AUTO_MAX_SPARSITY), ("prune_channels", AUTO_MAX_CHANNELS)):
            ratio, auto = parse_prune(values.get(key), flag="--" + key.replace("_", "-"),
                                      default=default)  # fmt: skip
            values[key] = ratio
            if auto:
                values[f"{key}_auto"] = True
        options = cls(**values)
        options.check()
        return options

    @property
    def cosine_floor(self) -> float:
        """Lowest acceptable per-sample cosine similarity when the budget falls back to it."""
        if self.min_cosine is not None:
            return self.min_cosine
        return 1.0 - self.max_accuracy_drop / 100.0

    def check(self) -> None:
        """Raise :class:`InputError` for a value out of range."""
        if self.precision not in PRECISION_ARGS:
            raise InputError(
                f"unknown precision {self.precision!r}",
                hint=f"use one of {', '.join(PRECISION_ARGS)}",
            )
        if not math.isfinite(self.max_accuracy_drop) or self.max_accuracy_drop < 0:
            raise InputError(
                f"--max-accuracy-drop must be a number >= 0, got {self.max_accuracy_drop}",
                hint="points of top-1 accuracy, e.g. --max-accuracy-drop 1.0",
            )
        if not 0.0 < self.max_kept_share <= 1.0:
            raise InputError(
                f"--max-kept-share must lie in (0, 1], got {self.max_kept_share}",
                hint="e.g. --max-kept-share 0.25",
            )
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise InputError(f"min_cosine must lie in [-1, 1], got {self.min_cosine}")
        for name, low in (
            ("max_rounds", 0),
            ("calib_count", 1),
            ("measure_runs", 0),
            ("verify_count", 0),
            ("layer_top", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                flag = "--" + name.replace("_", "-")
                raise InputError(f"{flag} must be an integer >= {low}, got {value!r}")
        if self.synthetic_count < 1:
            raise InputError(f"synthetic_count must be >= 1, got {self.synthetic_count}")
        if self.eval_count is not None and self.eval_count < 1:
            raise InputError(f"--eval-count must be >= 1, got {self.eval_count}")
        if self.method not in ("minmax", "entropy", "percentile"):
            raise InputError(
                f"unknown calibration method {self.method!r}",
                hint="use minmax, entropy or percentile",
            )
        for flag, ratio in (("--prune", self.prune), ("--prune-channels", self.prune_channels)):
            if ratio is not None and not 0.0 < ratio < 1.0:
                raise InputError(f"{flag} must lie in (0, 1), got {ratio}", hint=f"{flag} 0.5")
        for ratio in self.search_channels:
            if not 0.0 < ratio < 1.0:
                raise InputError(
                    f"--search-channels ratios must lie in (0, 1), got {ratio}",
                    hint="--search-channels 0.125,0.25",
                )
        for flag, m in (("--prune-method", self.prune_method),
                        ("--prune-channels-method", self.prune_channels_method)):  # fmt: skip
            if m not in PRUNE_METHODS:
                raise InputError(f"unknown {flag} {m!r}", hint=", ".join(PRUNE_METHODS))
        if not isinstance(self.channel_multiple, int) or self.channel_multiple < 1:
            raise InputError(
                f"--channel-multiple must be an integer >= 1, got {self.channel_multiple!r}",
                hint="8 (the default), or 1 for exact channel counts",
            )
        if self.prune_scope not in ("global", "layer"):
            raise InputError(f"unknown --prune-scope {self.prune_scope!r}", hint="global or layer")
        if self.fuse not in ("none", "fusedconv"):
            raise InputError(f"unknown fuse mode {self.fuse!r}", hint="use none or fusedconv")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["passes"] = list(self.passes) if self.passes is not None else None
        return d


def parse_prune(
    value: float | str | None, *, flag: str, default: float
) -> tuple[float | None, bool]:
    """``--prune`` / ``--prune-channels``: a number (exact), ``auto`` (budget mode up to
    ``default``) or ``auto:R`` (up to R) -> (ratio, auto); bad text raises InputError."""
    if value is None or isinstance(value, int | float):
        return (None if value is None else float(value)), False
    text = str(value).strip().lower()
    if text == "auto":
        return default, True
    head, sep, tail = text.partition(":")
    try:
        if head == "auto" and sep:
            return float(tail), True
        return float(text), False
    except ValueError:
        raise InputError(
            f"{flag} takes a ratio in (0, 1), auto, or auto:MAX; got {value!r}",
            hint=f"{flag} 0.5 (exactly), or {flag} auto:0.7 (the budget chooses, at most 0.7)",
        ) from None


def parse_pass_list(text: str) -> tuple[str, ...]:
    """``"cleanup, fp16"`` -> ("cleanup", "fp16"); an empty list raises InputError."""
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    if not names:
        raise InputError("--passes is empty", hint="e.g. --passes cleanup,fold-batchnorm,fp16")
    return names


def _ratios(text: str, flag: str) -> tuple[float, ...]:
    """``"0.125,0.25"`` -> (0.125, 0.25); InputError for anything else."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise InputError(f"{flag} {text!r}: give ratios like 0.125,0.25") from None
