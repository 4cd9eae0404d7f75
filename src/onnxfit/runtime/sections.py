"""Split a model's graph into sections that each fit a memory budget (the pure half of
:mod:`onnxfit.runtime.progressive`; graph facts come from :mod:`onnxfit.runtime.graphinfo`).

:func:`plan_sections` cuts the topological order into contiguous runs whose cost, ``weights of
the section + peak live activations inside it``, stays within a section budget, choosing (by
dynamic programming over cut points) the fewest sections; among those, the fewest cuts between
two ops ORT would fuse (Conv | BatchNormalization, Conv | Relu, ...: a cut there changes
rounding), then the fewest tensors crossing the cuts. :func:`section_model` cuts a section's
standalone model out of the IR (``onnx_ir.convenience.extract``), its weights still external
references on disk.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.errors import BudgetExceededError, ModelLoadError
from onnxfit.runtime.graphinfo import GraphInfo, analyze_graph, max_node_cost, tensor_bytes

__all__ = [
    "GraphInfo",
    "Section",
    "SectionPlan",
    "analyze_graph",
    "make_section",
    "max_node_cost",
    "plan_sections",
    "section_model",
    "tensor_bytes",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Section:
    """Nodes ``[start, stop)`` of the topological order, with what crosses their boundary."""

    index: int
    start: int
    stop: int
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    initializers: tuple[str, ...]
    weight_bytes: int
    activation_bytes: int

    @property
    def cost_bytes(self) -> int:
        return self.weight_bytes + self.activation_bytes

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["inputs"], d["outputs"] = list(self.inputs), list(self.outputs)
        d["initializers"] = len(self.initializers)
        d["nodes"] = self.stop - self.start
        d["cost_bytes"] = self.cost_bytes
        return d


@dataclass(frozen=True)
class SectionPlan:
    """How a model is split: estimate, budgets and sections."""

    path: str
    weight_bytes: int
    activation_bytes: int
    estimate_bytes: int
    budget_bytes: int
    section_budget_bytes: int
    sectioned: bool
    resident: bool
    sections: tuple[Section, ...]

    @property
    def build_overhead_bytes(self) -> int:
        """Stated overhead outside the own accounting: while ONNX Runtime builds a section it
        holds a transient copy of that section's weights (measured on ORT 1.32 CPU at the BASIC
        level: peak RSS about 2x the weights, back to 1x after ``malloc_trim``), so up to the
        largest section's weights on top of the budget."""
        return max((s.weight_bytes for s in self.sections), default=0)

    @property
    def cut_tensors(self) -> int:
        return sum(len(s.inputs) for s in self.sections[1:])

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "estimate_bytes": self.estimate_bytes,
            "budget_bytes": self.budget_bytes,
            "section_budget_bytes": self.section_budget_bytes,
            "sectioned": self.sectioned,
            "resident": self.resident,
            "cut_tensors": self.cut_tensors,
            "build_overhead_bytes": self.build_overhead_bytes,
            "sections": [s.to_dict() for s in self.sections],
        }


#: ops whose output ORT fuses with the op that consumes it (Conv+BatchNormalization, Conv+Relu,
#: MatMul+Add -> Gemm, ...). Cutting between such a pair stops the fusion and changes rounding.
_FUSE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "BatchNormalization"})
_FUSE_CONSUMERS = frozenset(
    {
        "BatchNormalization",
        "Relu",
        "LeakyRelu",
        "Clip",
        "Sigmoid",
        "HardSigmoid",
        "Tanh",
        "Add",
        "Mul",
        "HardSwish",
        "Transpose",
    }
)


def _per_cut(info: GraphInfo, spans: list[tuple[int, int]]) -> np.ndarray:
    """How many of the spans ``(p, end)`` each cut position 0..n crosses (p < cut <= end)."""
    n = len(info.nodes)
    diff = np.zeros(n + 2, dtype=np.int64)
    for p, end in spans:
        end = min(end, n)
        if end > p:
            diff[p + 1] += 1
            diff[end + 1] -= 1
    return np.cumsum(diff)[: n + 1]


def _fusion_spans(info: GraphInfo) -> list[tuple[int, int]]:
    consumers: dict[str, list[int]] = {}
    for pos, reads in enumerate(info.node_inputs):
        for x in reads:
            consumers.setdefault(x, []).append(pos)
    spans = []
    for pos, node in enumerate(info.nodes):
        if node.op_type not in _FUSE_PRODUCERS:
            continue
        for out in (str(o.name) for o in node.outputs if o.name):
            users = consumers.get(out, [])
            if len(users) == 1 and info.nodes[users[0]].op_type in _FUSE_CONSUMERS:
                spans.append((pos, users[0]))
    return spans


def plan_sections(info: GraphInfo, section_budget: int) -> list[Section]:
    """Contiguous sections each costing <= ``section_budget`` bytes (see module docstring).

    Raises :class:`BudgetExceededError` naming the node when one node alone does not fit.
    """
    n = len(info.nodes)
    if n == 0:
        return []
    spans = [(p, info.last_use.get(t, p)) for t, p in info.producer.items()]
    cuts = _per_cut(info, spans)  # tensors streamed across each cut
    breaks = _per_cut(info, _fusion_spans(info))  # fusable pairs each cut would separate
    inf = (n + 1, 0, 0)
    best: list[tuple[int, int, int]] = [inf] * (n + 1)
    prev = [-1] * (n + 1)
    best[0] = (0, 0, 0)
    for i in range(n):
        if best[i] == inf:
            continue
        inits: set[str] = set()
        w = 0
        act = 0
        for j in range(i + 1, n + 1):
            for name in info.node_inits[j - 1] - inits:
                inits.add(name)
                w += info.init_bytes[name]
            w += info.node_const_bytes[j - 1]
            act = max(act, info.live_bytes[j - 1])
            if w + act > section_budget:
                if j == i + 1:
                    node = info.nodes[i]
                    raise BudgetExceededError(
                        f"node {node.name or node.op_type!r} ({node.op_type}) alone needs "
                        f"{(w + act) / 2**20:.2f} MiB (weights {w / 2**20:.2f} + live activations "
                        f"{act / 2**20:.2f}), more than the section budget "
                        f"{section_budget / 2**20:.2f} MiB",
                        hint="raise the budget, or quantize / split that layer first",
                    )
                break
            inner = j < n
            cand = (
                best[i][0] + 1,
                best[i][1] + (int(breaks[j]) if inner else 0),
                best[i][2] + (int(cuts[j]) if inner else 0),
            )
            if cand < best[j]:
                best[j] = cand
                prev[j] = i
    bounds: list[int] = []
    j = n
    while j > 0:
        bounds.append(j)
        j = prev[j]
    bounds.append(0)
    bounds.reverse()
    return [make_section(info, k, a, b) for k, (a, b) in enumerate(itertools.pairwise(bounds))]


def make_section(info: GraphInfo, index: int, start: int, stop: int) -> Section:
    """The section of nodes ``[start, stop)``: its inputs, outputs, weights and activations."""
    produced: set[str] = set()
    inputs: list[str] = []
    inits: set[str] = set()
    for pos in range(start, stop):
        for x in sorted(info.node_inputs[pos]):
            if x in info.init_bytes:
                inits.add(x)
            elif x not in produced and x not in inputs:
                inputs.append(x)
        produced.update(str(o.name) for o in info.nodes[pos].outputs if o.name)
    outs = [
        t for t in sorted(produced) if info.last_use.get(t, -1) >= stop or t in info.graph_outputs
    ]
    outs = sorted(outs, key=lambda t: (info.producer[t], t))
    weight = sum(info.init_bytes[x] for x in inits) + sum(info.node_const_bytes[start:stop])
    act = max(info.live_bytes[start:stop], default=0)
    return Section(
        index, start, stop, tuple(inputs), tuple(outs), tuple(sorted(inits)), weight, act
    )


def section_model(model: ir.Model, section: Section) -> ir.Model:
    """A standalone model of one section, cut out of ``model`` by its boundary values
    (``onnx_ir.convenience.extract``): its nodes, only the initializers it reads (external
    tensors stay references, so no weight bytes are read here), inputs and outputs typed."""
    graph = model.graph
    by_name = {v.name: v for v in graph.inputs}
    by_name.update({v.name: v for n in graph for v in n.outputs})
    for name in (*section.inputs, *section.outputs):
        value = by_name.get(name)
        if value is None or value.dtype is None:
            raise ModelLoadError(
                f"cannot tell the element type of {name!r} (cut between sections)",
                hint="run shape inference on the model first (onnxfit inspect)",
            )
    try:
        sub = ir.convenience.extract(graph, list(section.inputs), list(section.outputs))
    except ValueError as exc:
        msg = f"cannot cut section {section.index} out of the graph: {exc}"
        raise ModelLoadError(msg) from None
    sub.name = f"{graph.name or 'graph'}_section{section.index}"
    return ir.Model(sub, ir_version=model.ir_version, functions=list(model.functions.values()))
