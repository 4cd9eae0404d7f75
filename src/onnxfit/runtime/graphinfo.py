"""What section planning needs to know about a graph, read from its proto without its weights.

:func:`analyze_graph` works on a ModelProto whose large initializers are *not* loaded (external
data left on disk): sizes come from the proto's fields (dims x element size). It finds, in
topological order, each node's initializers (including those a subgraph uses from the outer
scope) and each tensor's size (ONNX shape inference with the batch dimension fixed), then each
step's *live activation bytes*: the tensors produced before or at that node and still needed at
or after it (graph inputs included). Tensors whose size stays unknown count as 0 (logged).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxfit.errors import ModelLoadError

logger = logging.getLogger(__name__)


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
