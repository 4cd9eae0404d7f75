""":class:`OptimizeResult`: what ``onnxfit optimize`` did, measured and wrote."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from onnxfit.optimizer.backoff import Attempt
from onnxfit.optimizer.gate import GateResult
from onnxfit.optimizer.plan import OptimizePlan
from onnxfit.optimizer.stats import ModelStats
from onnxfit.passes.base import PassReport
from onnxfit.verify import VerifyResult


@dataclass
class OptimizeResult:
    """The plan, each pass's stats, before/after figures, verification and outputs.

    ``verification`` compares the written model's outputs with the original's (ORT CPU);
    ``gate`` is the budget's verdict (measure, value, limit, rule, details). ``kept_higher``
    lists the nodes the back-off kept in higher precision; ``kept_float`` the nodes a pass
    could not handle (name -> pass and reason); ``ranking`` the nodes by measured
    sensitivity (worst first) when the back-off ranked them; ``achieved``: what was asked
    and what was delivered — ``precision`` (share of the compute nodes and FLOPs at the plan's
    precision), ``sparsity`` and ``channels`` (requested ratio, achieved share);
    ``layer_errors`` the nodes adding the most error in the written model, under the model's
    own node names; ``candidates`` the candidate search's table (empty without a search).
    """

    model: str
    output: str
    report_path: str
    deploy_path: str
    target: str
    options: dict[str, Any]
    plan: OptimizePlan
    passes: list[PassReport]
    before: ModelStats
    after: ModelStats
    verification: VerifyResult
    gate: GateResult
    data: dict[str, Any]
    attempts: list[Attempt] = field(default_factory=list)
    kept_higher: list[str] = field(default_factory=list)
    kept_float: dict[str, str] = field(default_factory=dict)
    ranking: list[dict[str, Any]] = field(default_factory=list)
    achieved: dict[str, dict[str, Any]] = field(default_factory=dict)
    layer_errors: list[dict[str, Any]] = field(default_factory=list)
    candidates: list[dict[str, Any]] = field(default_factory=list)
    deploy: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    projection: str = ""  # Target.projection_label of the target projected on
    written: bool = False

    @property
    def precision(self) -> str:
        return self.plan.precision

    @property
    def fits(self) -> bool:
        """The optimized model fits the budget (load and first run; ``after.fit``)."""
        return bool(self.after.fit["fits"]) if self.after.fit else self.after.fits

    def exit_code(self, *, allow_over_budget: bool = False) -> int:
        """0, or :data:`onnxfit.analysis.budget.EXIT_DOES_NOT_FIT` when it does not fit."""
        from onnxfit.analysis.budget import EXIT_DOES_NOT_FIT

        return 0 if self.fits or allow_over_budget else EXIT_DOES_NOT_FIT

    @property
    def size_ratio(self) -> float:
        """Optimized file size over the original's."""
        return self.after.file_bytes / self.before.file_bytes if self.before.file_bytes else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "output": self.output,
            "report": self.report_path,
            "deploy": self.deploy_path,
            "target": self.target,
            "projection": self.projection,
            "precision": self.precision,
            "options": dict(self.options),
            "plan": self.plan.to_dict(),
            "passes": [p.to_dict() for p in self.passes],
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "size_ratio": self.size_ratio,
            "fits": self.fits,
            "fit": self.after.fit,
            "verification": self.verification.to_dict(),
            "gate": self.gate.to_dict(),
            "ranking": list(self.ranking),
            "requested_vs_achieved": {k: dict(v) for k, v in self.achieved.items()},
            "layer_errors": list(self.layer_errors),
            "candidates": list(self.candidates),
            "data": dict(self.data),
            "backoff": {
                "rounds": max(0, len(self.attempts) - 1),
                "attempts": [a.to_dict() for a in self.attempts],
                "kept_higher_precision": list(self.kept_higher),
            },
            "kept_float": dict(self.kept_float),
            "deploy_settings": dict(self.deploy),
            "notes": list(self.notes),
            "elapsed_s": self.elapsed_s,
            "written": self.written,
        }
