"""The fit verdict: does a model's runtime memory fit the target's budget, and if not, what next.

:func:`fit_verdict` takes the memory figures (weights, activation arena, inputs/outputs) and a
budget and gives a :class:`FitVerdict`: ``FITS`` / ``DOES NOT FIT``, the headroom or the
excess, and — when it does not fit — the next step with numbers, from a projection of the same
model at each narrower precision (``INT8 would need 12.8 MiB``).

Projection rule (stated, not measured): float weights and the activation arena scale with the
element width (fp32 4 bytes, fp16 2, int8 1); other weights (integer tensors, already
quantized weights) and the graph inputs/outputs (kept float32 by onnxfit's passes) stay as they
are. The arena at INT8 is an upper-bound guess (ORT keeps some activations float around QDQ
pairs); the optimized model is re-planned exactly after optimizing.

The budget is the target's ``memory_budget`` unless ``budget_bytes`` overrides it (``--budget``).
:data:`EXIT_DOES_NOT_FIT` is the exit status the CLI uses for a model that does not fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = ["EXIT_DOES_NOT_FIT", "WIDTH", "FitVerdict", "fit_verdict", "verdict_of"]

#: Exit status of ``onnxfit inspect`` / ``optimize`` when the model does not fit (0: fits;
#: 2: a usage error).
EXIT_DOES_NOT_FIT = 3
WIDTH: dict[str, int] = {"fp32": 4, "fp16": 2, "int8": 1}
_FLOAT_DTYPES = {"float": 4, "float32": 4, "float16": 2, "bfloat16": 2, "double": 8, "float64": 8}
_PRECISION_OF = {"float": "fp32", "float32": "fp32", "float16": "fp16", "bfloat16": "fp16"}
_PRECISION_OF |= {"int8": "int8", "uint8": "int8"}


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if abs(n) < 2**30 else f"{n / 2**30:.2f} GiB"


@dataclass(frozen=True)
class FitVerdict:
    """Runtime memory against a budget, with the projection at narrower precisions."""

    fits: bool
    needed_bytes: int
    budget_bytes: int
    target: str
    precision: str
    projected: dict[str, int] = field(default_factory=dict)  # precision -> bytes
    target_arg: str = ""  # the --target the user gave (a .toml path), for the next command

    @property
    def headroom_bytes(self) -> int:
        return self.budget_bytes - self.needed_bytes

    def line(self) -> str:
        """``FITS: uses X of Y (Z free)`` or ``DOES NOT FIT: needs X of Y (Z over)``."""
        used, budget = _mib(self.needed_bytes), _mib(self.budget_bytes)
        if self.fits:
            return f"FITS {self.target}: uses {used} of {budget} ({_mib(self.headroom_bytes)} free)"
        return (
            f"DOES NOT FIT {self.target}: needs {used} of {budget} "
            f"({_mib(-self.headroom_bytes)} over)"
        )

    def next_need(self) -> str | None:
        """``FP16 would need 5.6 MiB (projected)`` for the first narrower precision that fits,
        else what even the narrowest would need (None when it fits)."""
        step = self.next_step()
        return step.split(":")[0] if step is not None and "onnxfit optimize" in step else step

    def next_step(self) -> str | None:
        """What to try when it does not fit, with the projected need (None when it fits)."""
        if self.fits:
            return None
        for prec, need in self.projected.items():
            if need <= self.budget_bytes:
                return (
                    f"{prec.upper()} would need {_mib(need)} (projected): onnxfit optimize "
                    f"MODEL -o OUT --target {self.target_arg or self.target} --precision {prec}"
                )
        if self.projected:
            prec, need = list(self.projected.items())[-1]
            return (
                f"even {prec.upper()} would need {_mib(need)} (projected) > "
                f"{_mib(self.budget_bytes)}: remove channels (--prune-channels auto) or use a "
                "smaller model"
            )
        return "remove channels (--prune-channels auto) or use a smaller model"

    def to_dict(self) -> dict[str, Any]:
        return {
            "fits": self.fits,
            "needed_bytes": self.needed_bytes,
            "budget_bytes": self.budget_bytes,
            "headroom_bytes": self.headroom_bytes,
            "target": self.target,
            "precision": self.precision,
            "projected_bytes": dict(self.projected),
            "text": self.line(),
            "next_step": self.next_step(),
        }


def fit_verdict(
    *,
    weight_bytes: int,
    arena_bytes: int,
    io_bytes: int,
    budget_bytes: int,
    target: str,
    precision: str = "fp32",
    float_weight_bytes: int | None = None,
) -> FitVerdict:
    """The verdict for a model needing ``weights + arena + io`` bytes against ``budget_bytes``.

    ``float_weight_bytes``: the part of the weights stored as floats at ``precision`` (default:
    all of them); only that part and the arena shrink in the projection (module docstring).
    """
    need = int(weight_bytes + arena_bytes + io_bytes)
    width = WIDTH.get(precision, 4)
    floats = int(weight_bytes if float_weight_bytes is None else float_weight_bytes)
    projected = {}
    for prec, w in WIDTH.items():
        if w < width:
            scale = w / width
            projected[prec] = int(
                (weight_bytes - floats) + floats * scale + arena_bytes * scale + io_bytes
            )
    return FitVerdict(need <= budget_bytes, need, int(budget_bytes), target, precision, projected)


def verdict_of(result: Any, *, budget_bytes: int | None = None) -> FitVerdict:
    """:func:`fit_verdict` for an :class:`~onnxfit.analysis.inspect.InspectResult` (its
    budget unless ``budget_bytes``)."""
    dtypes = result.weight_dtypes
    floats = sum(n * _FLOAT_DTYPES[d] for d, n in dtypes.items() if d in _FLOAT_DTYPES)
    counted = {d: n for d, n in dtypes.items() if d in _PRECISION_OF}
    precision = _PRECISION_OF[max(counted, key=counted.__getitem__)] if counted else "fp32"
    fv = fit_verdict(
        weight_bytes=result.weight_bytes,
        arena_bytes=result.memory.arena_bytes,
        io_bytes=result.io_bytes,
        budget_bytes=result.budget_bytes if budget_bytes is None else budget_bytes,
        target=result.target.name,
        precision=precision,
        float_weight_bytes=floats,
    )
    # the result's own verdict (load / first run as the provider allocates) decides; the
    # projection keeps its scaling of the planned figures
    if budget_bytes is not None:
        return fv
    need = int(getattr(result, "first_run_bytes", fv.needed_bytes))
    return replace(fv, fits=bool(result.fits), needed_bytes=need)
