"""What section planning needs to know about a graph, from the IR and :mod:`onnxfit.analysis`.

:func:`analyze_graph` works on an :class:`onnx_ir.Model` whose external weights are still on disk
(``onnxfit.io.load`` leaves them memory-mapped and unread): weight sizes come from the tensors'
dtype and shape. It takes the execution order (:func:`onnxfit.analysis.lifetimes.execution_order`),
each node's initializers (including those a subgraph uses from the outer scope,
:func:`~onnxfit.analysis.lifetimes.node_inputs`), each tensor's size (shape inference of
:func:`onnxfit.analysis.shapes.infer_shapes` with the batch dimension fixed;
:func:`~onnxfit.analysis.lifetimes.value_bytes`), then each step's *live activation bytes*: the
tensors produced before or at that node and still needed at or after it (graph inputs
included). Tensors whose size stays unknown count as 0 (logged). The inferred dtypes and shapes
are written onto the model's own values, so that a section cut out of it has typed inputs and
outputs.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from onnxfit.analysis.lifetimes import execution_order, node_inputs, value_bytes
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.errors import InputError, ModelLoadError

logger = logging.getLogger(__name__)


@dataclass
class GraphInfo:
    """What planning needs to know about a graph, computed once."""

    nodes: list[ir.Node]  # execution order
    node_inits: list[set[str]]
    node_const_bytes: list[int]  # bytes of tensors held in Constant / attribute values
    node_inputs: list[set[str]]  # every value a node reads (subgraph outer-scope uses too)
    init_bytes: dict[str, int]
    value_bytes: dict[str, int]  # activation sizes (0 when unknown)
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


def tensor_bytes(tensor: ir.TensorProtocol) -> int:
    """Bytes of a tensor from its dtype and shape (its data is not read)."""
    if tensor.dtype == ir.DataType.STRING:
        return int(tensor.nbytes)
    return math.ceil(int(np.prod(tensor.shape.numpy(), dtype=np.int64)) * tensor.dtype.itemsize)


def _const_bytes(node: ir.Node) -> int:
    total = 0
    for attr in node.attributes.values():
        if attr.type == ir.AttributeType.TENSOR:
            total += tensor_bytes(attr.value)
        elif attr.type == ir.AttributeType.TENSORS:
            total += sum(tensor_bytes(t) for t in attr.value)
    return total


def _typed(model: ir.Model, batch: int) -> dict[str, int]:
    """Activation sizes by name, with dtypes and shapes written onto ``model``'s values."""
    try:
        shaped = infer_shapes(model, batch=batch)
    except InputError as exc:  # inference is best effort: sizes stay unknown
        logger.warning("shape inference failed (%s); activation sizes unknown", exc.message)
        return {}
    own = {v.name: v for n in model.graph for v in n.outputs if v.name}
    own.update({v.name: v for v in model.graph.inputs if v.name})
    sizes: dict[str, int] = {}
    values = [*shaped.graph.inputs, *(v for n in shaped.graph for v in n.outputs)]
    for v in values:
        if not v.name:
            continue
        target = own.get(v.name)
        if target is not None and v.dtype is not None and target.dtype is None:
            target.dtype = v.dtype
        if target is not None and v.shape is not None and target.shape is None:
            target.shape = v.shape
        n = value_bytes(v)
        if n is not None:
            sizes[v.name] = n
    return sizes


def analyze_graph(model: ir.Model, *, batch: int = 1) -> GraphInfo:
    """Per-node initializers and per-step live activation bytes of ``model`` (module docstring)."""
    graph = model.graph
    init_bytes = {
        str(name): tensor_bytes(v.const_value)
        for name, v in graph.initializers.items()
        if v.const_value is not None
    }
    graph_inputs = [str(v.name) for v in graph.inputs if not v.is_initializer()]
    graph_outputs = [str(v.name) for v in graph.outputs]
    try:
        nodes = execution_order(graph)
    except InputError as exc:
        raise ModelLoadError(exc.message, hint=exc.hint) from None
    sizes = _typed(model, batch)
    node_in: list[set[str]] = []
    node_inits: list[set[str]] = []
    producer = {name: -1 for name in graph_inputs}
    last_use: dict[str, int] = {}
    for pos, n in enumerate(nodes):
        reads = {str(v.name) for v in node_inputs(n) if v.name}
        node_in.append(reads)
        node_inits.append({x for x in reads if x in init_bytes})
        for x in reads:
            if x not in init_bytes:
                last_use[x] = pos
        for o in n.outputs:
            if o.name:
                producer[o.name] = pos
    n_nodes = len(nodes)
    for name in graph_outputs:
        last_use[name] = n_nodes
    # live bytes per step: tensor t occupies [producer, last_use] (a difference array)
    diff = np.zeros(n_nodes + 2, dtype=np.int64)
    unknown: list[str] = []
    for t, p in producer.items():
        size = sizes.get(t)
        if size is None:
            unknown.append(t)
            size = 0
        end = last_use.get(t, p)  # an unused output dies where it is born
        diff[max(p, 0)] += size
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
        node_inputs=node_in,
        init_bytes=init_bytes,
        value_bytes=sizes,
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
