"""Split a model's graph into sections that each fit a memory budget (the pure half of
:mod:`onnxfit.runtime.progressive`).

Works on a ModelProto whose large initializers are *not* loaded (external data left on disk): every
size comes from the proto's fields (dims x element size). :func:`analyze_graph` finds, in
topological order, each node's initializers (including those a subgraph uses from the outer scope)
and each tensor's size (ONNX shape inference with the batch dimension fixed), then each step's
*live activation bytes*: the tensors produced before or at that node and still needed at or after
it (graph inputs included). :func:`plan_sections` cuts the order into contiguous runs whose cost,
``weights of the section + peak live activations inside it``, stays within a section budget,
choosing (by dynamic programming over cut points) the fewest sections; among those, the fewest
cuts between two ops ORT would fuse (Conv | BatchNormalization, Conv | Relu, ...: a cut there
changes rounding), then the fewest tensors crossing the cuts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper

from onnxfit.errors import BudgetExceededError, ModelLoadError

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


@dataclass
class GraphInfo:
    """What planning needs to know about a graph, computed once."""

    nodes: list[onnx.NodeProto]
    node_inits: list[set[str]]
    node_const_bytes: list[int]  # bytes of tensors held in Constant / attribute values
    node_inputs: list[set[str]]  # every value a node reads (subgraph outer-scope uses too)
    init_bytes: dict[str, int]
    value_bytes: dict[str, int]  # activation sizes (0 when unknown)
    elem_types: dict[str, int]
    graph_inputs: list[str]
    graph_outputs: list[str]
    producer: dict[str, int]  # tensor -> node position (-1: graph input)
    last_use: dict[str, int]  # tensor -> last consumer position (n for graph outputs)
    live_bytes: list[int]  # per node position
    unknown_sizes: list[str]

    @property
    def weight_bytes(self) -> int:
        return sum(self.init_bytes.values()) + sum(self.node_const_bytes)

    @property
    def peak_activation_bytes(self) -> int:
        return max(self.live_bytes, default=0)


def tensor_nbytes(t: onnx.TensorProto) -> int:
    """Bytes of a tensor from its dims and element type (its data need not be loaded)."""
    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    try:
        item = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        item = 4
    return int(np.prod(t.dims, dtype=np.int64)) * item if t.dims else item


def _attr_graphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


def _outer_uses(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads that it does not define (outer-scope values)."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    used: set[str] = set()
    for n in graph.node:
        used.update(x for x in n.input if x)
        for g in _attr_graphs(n):
            used |= _outer_uses(g)
        defined.update(n.output)
    used.update(o.name for o in graph.output)
    return used - defined


def _const_bytes(node: onnx.NodeProto) -> int:
    total = 0
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            total += tensor_nbytes(a.t)
        elif a.type == onnx.AttributeProto.TENSORS:
            total += sum(tensor_nbytes(t) for t in a.tensors)
    return total


def _topological(graph: onnx.GraphProto, known: set[str]) -> list[onnx.NodeProto]:
    """The graph's nodes in topological order (kept as stored when it already is)."""
    nodes = list(graph.node)
    reads = [
        {x for x in n.input if x} | set().union(*(_outer_uses(g) for g in _attr_graphs(n)))
        for n in nodes
    ]
    have = set(known)
    ok = True
    for n, r in zip(nodes, reads, strict=True):
        if not r <= have:
            ok = False
            break
        have.update(n.output)
    if ok:
        return nodes
    order: list[onnx.NodeProto] = []
    have = set(known)
    pending = list(range(len(nodes)))
    while pending:
        ready = [i for i in pending if reads[i] <= have]
        if not ready:
            missing = sorted(set().union(*(reads[i] for i in pending)) - have)[:5]
            raise ModelLoadError(f"the graph has a cycle or undefined values: {missing}")
        for i in ready:
            order.append(nodes[i])
            have.update(nodes[i].output)
        pending = [i for i in pending if i not in set(ready)]
    return order


def _fixed_batch_copy(proto: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of the weightless proto with every input's first symbolic dim set to ``batch``."""
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    for vi in m.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].dim_value = batch
    return m


def analyze_graph(proto: onnx.ModelProto, *, batch: int = 1) -> GraphInfo:
    """Per-node initializers and per-step live activation bytes of ``proto`` (see module doc)."""
    g = proto.graph
    init_bytes = {t.name: tensor_nbytes(t) for t in g.initializer}
    graph_inputs = [i.name for i in g.input if i.name not in init_bytes]
    graph_outputs = [o.name for o in g.output]
    nodes = _topological(g, set(graph_inputs) | set(init_bytes) | {""})
    try:
        inferred = onnx.shape_inference.infer_shapes(
            _fixed_batch_copy(proto, batch), data_prop=True
        )
    except Exception as exc:  # inference is best effort: sizes stay unknown
        logger.warning("shape inference failed (%s); activation sizes unknown", exc)
        inferred = proto
    value_bytes: dict[str, int] = {}
    elem_types: dict[str, int] = {}
    unknown: list[str] = []
    ig = inferred.graph
    for vi in [*ig.input, *ig.value_info, *ig.output]:
        tt = vi.type.tensor_type
        if tt.elem_type:
            elem_types[vi.name] = tt.elem_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim]
        if tt.HasField("shape") and all(d >= 0 for d in dims) and tt.elem_type:
            item = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
            value_bytes[vi.name] = int(np.prod(dims, dtype=np.int64)) * item
    node_inputs: list[set[str]] = []
    node_inits: list[set[str]] = []
    producer = {name: -1 for name in graph_inputs}
    last_use: dict[str, int] = {}
    for pos, n in enumerate(nodes):
        reads = {x for x in n.input if x} | set().union(
            *(_outer_uses(sg) for sg in _attr_graphs(n))
        )
        node_inputs.append(reads)
        node_inits.append({x for x in reads if x in init_bytes})
        for x in reads:
            if x not in init_bytes:
                last_use[x] = pos
        for o in n.output:
            if o:
                producer[o] = pos
    n_nodes = len(nodes)
    for o in graph_outputs:
        last_use[o] = n_nodes
    # live bytes per step: tensor t occupies [producer, last_use] (a difference array)
    diff = np.zeros(n_nodes + 2, dtype=np.int64)
    for t, p in producer.items():
        size = value_bytes.get(t)
        if size is None:
            unknown.append(t)
            size = 0
        end = last_use.get(t, p)  # an unused output dies where it is born
        lo = max(p, 0)
        diff[lo] += size
        diff[min(end, n_nodes - 1) + 1] -= size
    live = np.cumsum(diff)[:n_nodes].tolist()
    if unknown:
        logger.warning(
            "%d tensor sizes unknown after shape inference (counted as 0), e.g. %s",
            len(unknown),
            unknown[:3],
        )
    return GraphInfo(
        nodes=nodes,
        node_inits=node_inits,
        node_const_bytes=[_const_bytes(n) for n in nodes],
        node_inputs=node_inputs,
        init_bytes=init_bytes,
        value_bytes=value_bytes,
        elem_types=elem_types,
        graph_inputs=graph_inputs,
        graph_outputs=graph_outputs,
        producer=producer,
        last_use=last_use,
        live_bytes=[int(x) for x in live],
        unknown_sizes=unknown,
    )


def max_node_cost(info: GraphInfo) -> int:
    """The largest cost of a one-node section (its weights + live activations)."""
    return max(
        (
            sum(info.init_bytes[x] for x in inits) + const + live
            for inits, const, live in zip(
                info.node_inits, info.node_const_bytes, info.live_bytes, strict=True
            )
        ),
        default=0,
    )


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
        for out in node.output:
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
        produced.update(o for o in info.nodes[pos].output if o)
    outs = [
        t for t in sorted(produced) if info.last_use.get(t, -1) >= stop or t in info.graph_outputs
    ]
    outs = sorted(outs, key=lambda t: (info.producer[t], t))
    weight = sum(info.init_bytes[x] for x in inits) + sum(info.node_const_bytes[start:stop])
    act = max(info.live_bytes[start:stop], default=0)
    return Section(
        index, start, stop, tuple(inputs), tuple(outs), tuple(sorted(inits)), weight, act
    )


def section_proto(proto: onnx.ModelProto, info: GraphInfo, section: Section) -> onnx.ModelProto:
    """A standalone model of one section: its nodes, only the initializers it needs (external
    references kept as they are, so no weight bytes are read here), inputs and outputs typed."""
    by_name = {t.name: t for t in proto.graph.initializer}
    g = onnx.GraphProto(name=f"{proto.graph.name or 'graph'}_section{section.index}")
    g.node.extend(info.nodes[section.start : section.stop])
    g.initializer.extend(by_name[x] for x in section.initializers)
    for names, field in ((section.inputs, g.input), (section.outputs, g.output)):
        for name in names:
            elem = info.elem_types.get(name)
            if elem is None:
                raise ModelLoadError(
                    f"cannot tell the element type of {name!r} (cut between sections)",
                    hint="run shape inference on the model first (onnxfit inspect)",
                )
            field.append(helper.make_tensor_value_info(name, elem, None))
    m = helper.make_model(g, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    m.functions.extend(proto.functions)
    return m
