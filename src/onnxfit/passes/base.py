"""What every onnxfit pass shares: the base class, its statistics and the pipeline runner.

A pass is an :class:`onnx_ir.passes.InPlacePass` with typed keyword options and one
``call(model) -> PassResult`` (DESIGN habit 1). It never prints: it logs (totals at INFO,
per-node detail at DEBUG) and fills ``self.stats``, a small dict of counts and names that the
optimize report shows. :func:`run_passes` composes passes with :class:`onnx_ir.passes.PassManager`
and returns one :class:`PassReport` per pass.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

logger = logging.getLogger(__name__)

#: A stats value: a count, a measurement, a list of names or a nested count table.
StatValue = int | float | str | list[str] | dict[str, int]


@dataclass
class PassReport:
    """What one pass did: its registry name, whether it changed the model, and its stats."""

    name: str
    modified: bool
    stats: dict[str, StatValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "modified": self.modified, "stats": dict(self.stats)}


class OnnxfitPass(ir.passes.InPlacePass):
    """Base of every onnxfit pass: in place, with a registry ``name`` and per-run ``stats``.

    Subclasses set ``name`` and ``portable`` (True when the output runs on every execution
    provider, DirectML included) and implement :meth:`run`, which returns whether the model
    changed. ``stats`` is reset at every call.
    """

    name: ClassVar[str] = ""
    portable: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.stats: dict[str, StatValue] = {}
        self.modified = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.stats = {}
        self.modified = bool(self.run(model))
        logger.info("%s: %s", self.name, _summary(self.stats))
        return ir.passes.PassResult(model, self.modified)

    def run(self, model: ir.Model) -> bool:
        """Transform ``model`` in place, fill ``self.stats``; return True if it changed."""
        raise NotImplementedError

    def report(self) -> PassReport:
        """The stats of the last call, for the optimize report."""
        return PassReport(self.name, self.modified, dict(self.stats))

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if _is_option(k))
        return f"{type(self).__name__}({opts})"


def _is_option(key: str) -> bool:
    return not key.startswith("_") and key not in {"stats", "modified"}


def _summary(stats: dict[str, StatValue]) -> str:
    parts = []
    for k, v in stats.items():
        if isinstance(v, list):
            parts.append(f"{k}={len(v)}")
        elif isinstance(v, dict):
            parts.append(f"{k}={sum(v.values())}")
        else:
            parts.append(f"{k}={v}")
    return ", ".join(parts) or "nothing to do"


def run_passes(
    model: ir.Model, passes: Sequence[OnnxfitPass]
) -> tuple[ir.passes.PassResult, list[PassReport]]:
    """Run ``passes`` in order on ``model`` (in place) through a PassManager; return reports."""
    if not passes:
        return ir.passes.PassResult(model, False), []
    manager = ir.passes.PassManager(list(passes), steps=1)
    result = manager(model)
    return result, [p.report() for p in passes]


def count_ops(model: ir.Model) -> dict[str, int]:
    """Op-type histogram of the main graph (``domain::op`` for non-ONNX domains)."""
    counts: dict[str, int] = {}
    for node in model.graph:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[key] = counts.get(key, 0) + 1
    return counts


#: Node metadata key saying which original node(s) a rewritten node came from.
ORIGIN_KEY = "onnxfit:from"


def name_after(node: ir.Node, origin: str, *, role: str | None = None, source: str = "") -> None:
    """Name a node a pass creates after the node it replaces (reports then speak the model's
    own names): ``origin`` itself for the op that takes the original's place, else
    ``origin/role`` for a helper; ``source`` (default ``origin``) goes to the node's metadata
    under :data:`ORIGIN_KEY`."""
    if not origin:
        return
    node.name = origin if role is None else f"{origin}/{role}"
    node.metadata_props[ORIGIN_KEY] = source or origin
