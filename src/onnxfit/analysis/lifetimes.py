"""Tensor lifetimes of a shape-inferred graph: the statistics half of the memory plan.

:func:`analyze_lifetimes` walks the graph in topological order (:func:`execution_order`: the
stored order wherever it is valid) and returns one :class:`~onnxfit.analysis.offsets.TensorLife`
per arena buffer, with its size (shape x dtype) and the steps at which it is first written and
last read. Step ``i`` is the ``i``-th executed node; ``Constant`` nodes are not steps (onnxruntime
folds them into initializers). A value read inside an If/Loop/Scan body counts as read by that
node; values inside subgraphs are not planned.

What is in the arena follows onnxruntime's allocation planner (``allocation_planner.cc``): only
intermediate values. Graph inputs are the caller's buffers and graph outputs are allocated apart
and handed back, so both are counted as IO; initializers and ``Constant`` outputs are weights.
Two reuse rules of that planner are applied (each can be switched off):

* *alias*: output 0 of a view op (:data:`ALIAS_OPS`: Reshape, Flatten, Squeeze, Unsqueeze,
  Identity, Dropout) shares input 0's buffer, whose lifetime grows to the output's last use. A
  view of a graph input or an initializer takes no arena memory.
* *in place*: output 0 of an elementwise op (:data:`INPLACE_OPS`: Relu, BatchNormalization, Add,
  ...) is written over an input of the same byte size whose buffer this node reads for the last
  time (ORT's ``MayInplace`` kernels).
* *QDQ fusion* (``qdq``): onnxruntime fuses DequantizeLinear -> op -> QuantizeLinear into integer
  kernels (QLinearConv, ...; ``qdq_selector_action_transformer``), so the float tensors around a
  quantized op never exist. A DequantizeLinear of a weight takes no arena bytes, one of an
  activation is a view of its quantized input, a float value read only by QuantizeLinear is
  counted at the quantized width, and that QuantizeLinear's output is a view of it. Without this
  rule an INT8 QDQ model would plan *more* memory than its float original.

A used tensor whose shape or dtype is unknown raises :class:`InputError` naming it, unless its
shape depends on data (downstream of NonZero, NonMaxSuppression, Loop, ...): such values, and
non-tensor values (sequences, maps), are counted as 0 bytes and listed in ``unsized``.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import onnx_ir as ir

from onnxfit.analysis.offsets import TensorLife
from onnxfit.analysis.shapes import DATA_DEPENDENT_OPS
from onnxfit.errors import InputError, ModelLoadError

logger = logging.getLogger(__name__)

#: View ops: output 0 may alias input 0 (ORT kernels declare ``Alias(0, 0)`` for these).
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
#: Elementwise ops whose output 0 may overwrite an input of the same byte size.
_INPLACE_NAMES = (
    "Abs Neg Relu LeakyRelu PRelu Elu Selu Celu Sigmoid HardSigmoid HardSwish Tanh Softplus "
    "Softsign Exp Log Sqrt Reciprocal Floor Ceil Round Sign Erf Sin Cos Clip Gelu Mish Not Cast "
    "BatchNormalization Add Sub Mul Div Pow Max Min Sum Mean And Or Xor Where"
)
INPLACE_OPS = frozenset(_INPLACE_NAMES.split())
#: Width of floating-point values under a what-if ``precision``.
PRECISION_DTYPES = {
    "fp32": ir.DataType.FLOAT,
    "fp16": ir.DataType.FLOAT16,
    "bf16": ir.DataType.BFLOAT16,
    "int8": ir.DataType.INT8,
}
#: Bytes counted per element of a string tensor (sizeof(std::string) in libstdc++): an estimate.
STRING_ITEM_BYTES = 32
#: No tensor can be larger than this (1 EiB): a bigger static size means broken shapes.
MAX_TENSOR_BYTES = 2**60
_SHOW = 8


@dataclass(frozen=True)
class Lifetimes:
    """What one walk over a graph learns: buffers, IO and contrast totals (bytes)."""

    lives: tuple[TensorLife, ...]
    naive_bytes: int  # every intermediate value in its own buffer, nothing reused
    input_bytes: int
    output_bytes: int
    dtypes: dict[str, int]  # short dtype name -> naive bytes of intermediate values
    steps: tuple[str, ...]  # node name (or op type) executed at each step
    unsized: tuple[str, ...]  # values of unknown size counted as 0


def is_constant(node: ir.Node) -> bool:
    return node.op_type == "Constant" and node.domain in ("", "ai.onnx")


def _subgraph_inputs(node: ir.Node) -> Iterable[ir.Value]:
    """Values read by nodes inside ``node``'s subgraphs (If/Loop/Scan bodies), recursively."""
    for attr in node.attributes.values():
        graphs: list[ir.Graph] = []
        if attr.type == ir.AttributeType.GRAPH:
            graphs = [attr.value]
        elif attr.type == ir.AttributeType.GRAPHS:
            graphs = list(attr.value)
        for g in graphs:
            for inner in g:
                yield from (v for v in inner.inputs if v is not None)
                yield from _subgraph_inputs(inner)


def node_inputs(node: ir.Node) -> list[ir.Value]:
    """Every value ``node`` reads: its inputs and the outer values its subgraphs capture."""
    return [v for v in node.inputs if v is not None] + list(_subgraph_inputs(node))


def execution_order(graph: ir.Graph) -> list[ir.Node]:
    """The graph's nodes in the order a runtime would execute them; the graph is not changed.

    Kahn's algorithm taking the ready node that comes first in the stored order, then every node
    that reads only initializers and constants (DequantizeLinear of a weight, a Transpose of a
    constant, ...) moved to just before its first consumer: onnxruntime constant-folds such nodes
    or runs them just in time (its default order is a DFS from the outputs), so a QDQ model that
    lists all its weight DequantizeLinear nodes first does not hold every fp32 weight copy live
    at once. A cycle raises :class:`InputError`.
    """
    nodes = list(graph)
    producer = {id(out): i for i, n in enumerate(nodes) for out in n.outputs}
    deps = [{producer[id(v)] for v in node_inputs(n) if id(v) in producer} for n in nodes]
    users: list[list[int]] = [[] for _ in nodes]
    for i, d in enumerate(deps):
        for j in d:
            users[j].append(i)
    waiting = [len(d) for d in deps]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(order) != len(nodes):
        stuck = [n.name or n.op_type for n, w in zip(nodes, waiting, strict=True) if w > 0]
        raise InputError(
            f"the graph has a cycle through node(s) {', '.join(stuck[:_SHOW])}",
            hint="check the model with onnx.checker.check_model",
        )
    return [nodes[i] for i in _just_in_time(nodes, order, deps)]


def _just_in_time(nodes: Sequence[ir.Node], order: list[int], deps: list[set[int]]) -> list[int]:
    """``order`` with constant-only nodes moved to just before their first consumer."""
    const = [False] * len(nodes)
    for i in order:  # topological: a node's producers are decided before it
        graph_fed = any(
            v.producer() is None and not v.is_initializer() for v in node_inputs(nodes[i])
        )
        const[i] = not graph_fed and all(const[j] for j in deps[i])
    emitted = [False] * len(nodes)
    out: list[int] = []

    def emit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            k, expanded = stack.pop()
            if emitted[k]:
                continue
            if expanded:
                emitted[k] = True
                out.append(k)
                continue
            stack.append((k, True))
            stack.extend((j, False) for j in sorted(deps[k], reverse=True) if not emitted[j])

    for i in order:
        if not const[i]:
            emit(i)
    for i in order:
        emit(i)
    return out


def check_precision(precision: str | None) -> None:
    if precision is not None and precision not in PRECISION_DTYPES:
        raise InputError(
            f"unknown precision {precision!r}", hint=f"use one of {', '.join(PRECISION_DTYPES)}"
        )


def value_dtype(value: ir.Value, *, precision: str | None = None) -> ir.DataType | None:
    """The value's dtype; a floating-point one becomes ``precision``'s when that is given."""
    dtype = value.dtype
    if dtype is not None and precision is not None and dtype.is_floating_point():
        return PRECISION_DTYPES[precision]
    return dtype


def value_bytes(value: ir.Value, *, precision: str | None = None) -> int | None:
    """Bytes of a tensor value (shape x dtype), or None when its shape or dtype is not known.

    A shape with a negative dimension (an attribute larger than its input, say) or one that
    would need more than :data:`MAX_TENSOR_BYTES` raises :class:`ModelLoadError`: such a model
    cannot run anywhere, and no memory plan can hold it."""
    dtype = value_dtype(value, precision=precision)
    shape = value.shape
    if dtype is None or dtype == ir.DataType.UNDEFINED or shape is None:
        return None
    dims = [d for d in shape.dims if isinstance(d, int)]
    if len(dims) != len(shape.dims):
        return None
    if any(d < 0 for d in dims):
        raise ModelLoadError(
            f"value {value.name!r} would have shape {dims}, with a negative dimension, so the "
            "model cannot run",
            hint="an attribute (kernel_shape, pads, strides...) or an input dimension is wrong",
        )
    numel = math.prod(dims)
    bits = STRING_ITEM_BYTES * 8 if dtype.is_string() else dtype.bitwidth
    nbytes = (numel * bits + 7) // 8
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelLoadError(
            f"value {value.name!r} would have shape {dims}: {nbytes / 2**60:,.3g} EiB, more "
            "memory than any machine has",
            hint="an input dimension or a shape-giving attribute of the model is wrong",
        )
    return nbytes


def _unknown_shape_error(names: Sequence[str]) -> InputError:
    shown = ", ".join(names[:_SHOW])
    more = f" and {len(names) - _SHOW} more" if len(names) > _SHOW else ""
    return InputError(
        f"cannot plan memory: unknown shape for {len(names)} tensor(s): {shown}{more}",
        hint="fix the batch and input shapes first (onnxfit inspect --batch N "
        "--input-shape name=1x3x224x224)",
    )


@dataclass
class _Group:
    """A buffer under construction: the values sharing it, its size and lifetime."""

    values: list[str]
    size: int
    first: int
    last: int


def _data_dependent(order: Sequence[ir.Node]) -> set[int]:
    """ids of values whose shape may depend on data (downstream of DATA_DEPENDENT_OPS)."""
    tainted: set[int] = set()
    for node in order:
        if node.op_type in DATA_DEPENDENT_OPS or any(id(v) in tainted for v in node_inputs(node)):
            tainted.update(id(o) for o in node.outputs)
    return tainted


_QDQ_OPS = ("DequantizeLinear", "QuantizeLinear")


def _quantized_only(value: ir.Value) -> ir.Value | None:
    """The QuantizeLinear output when every reader of ``value`` is a QuantizeLinear, else None."""
    uses = list(value.uses())
    if not uses or any(u[0].op_type != "QuantizeLinear" for u in uses):
        return None
    return uses[0][0].outputs[0]


def analyze_lifetimes(
    model: ir.Model,
    *,
    alias: bool = True,
    inplace: bool = True,
    precision: str | None = None,
    qdq: bool = True,
) -> Lifetimes:
    """Buffers, IO bytes and naive total of a shape-inferred model (rules: module docstring).

    ``alias`` / ``inplace`` switch the two reuse rules; with both off every intermediate value is
    its own buffer. ``precision`` ("fp32", "fp16", "bf16", "int8") counts every floating-point
    value at that width (a what-if; fp16 halves an fp32 model's activations). ``qdq`` applies the
    QDQ-fusion rule of the module docstring.
    """
    check_precision(precision)
    graph = model.graph
    order = [n for n in execution_order(graph) if not is_constant(n)]
    outputs = {id(v) for v in graph.outputs}
    external = {id(v) for v in graph.inputs} | {id(v) for v in graph.initializers.values()}
    external |= {id(o) for n in graph if is_constant(n) for o in n.outputs}
    weights = external - {id(v) for v in graph.inputs if not v.is_initializer()}
    last_use = {id(v): step for step, node in enumerate(order) for v in node_inputs(node)}
    dynamic = _data_dependent(order)
    unknown: list[str] = []
    unsized: list[str] = []

    def size_of(v: ir.Value) -> int:
        n = value_bytes(v, precision=precision)
        if n is not None:
            return n
        is_tensor = v.type is None or isinstance(v.type, ir.TensorType)
        used = id(v) in last_use or id(v) in outputs
        hard = is_tensor and used and id(v) not in dynamic
        (unknown if hard else unsized).append(v.name or "<unnamed>")
        return 0

    input_bytes = sum(size_of(v) for v in graph.inputs if not v.is_initializer())
    output_bytes = sum(
        size_of(v) for v in graph.outputs if not v.is_graph_input() and not v.is_initializer()
    )
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    dtypes: dict[str, int] = {}
    naive = 0

    def join(g: _Group, out: ir.Value, last: int) -> None:
        g.values.append(out.name or "<unnamed>")
        g.last = max(g.last, last)
        group_of[id(out)] = g

    for step, node in enumerate(order):
        ins = [v for v in node.inputs if v is not None]
        std = node.domain in ("", "ai.onnx")
        for k, out in enumerate(node.outputs):
            if id(out) in outputs or id(out) in external:
                continue
            quantized = _quantized_only(out) if qdq else None
            size = size_of(quantized if quantized is not None else out)
            naive += size
            dt = value_dtype(out, precision=precision)
            if dt is not None:
                dtypes[dt.short_name()] = dtypes.get(dt.short_name(), 0) + size
            last = last_use.get(id(out), step)
            if qdq and std and k == 0 and ins and node.op_type in _QDQ_OPS:
                src = ins[0]
                if node.op_type == "DequantizeLinear" and id(src) in weights:
                    external.add(id(out))  # a dequantized weight: fused kernels read the int8 one
                    continue
                fused = node.op_type == "DequantizeLinear" or _quantized_only(src) is out
                if fused and id(src) in group_of:
                    join(group_of[id(src)], out, last)
                    continue
            if alias and std and k == 0 and ins and node.op_type in ALIAS_OPS:
                src = ins[0]
                if id(src) in external:  # a view of a graph input / initializer: no arena bytes
                    external.add(id(out))
                    continue
                if id(src) in group_of and group_of[id(src)].size >= size:
                    join(group_of[id(src)], out, last)
                    continue
            if inplace and std and k == 0 and node.op_type in INPLACE_OPS:
                dying = [
                    group_of[id(v)]
                    for v in ins
                    if id(v) in group_of
                    and group_of[id(v)].last == step
                    and group_of[id(v)].size == size
                ]
                if dying:
                    join(dying[0], out, last)
                    continue
            g = _Group([out.name or "<unnamed>"], size, step, last)
            groups.append(g)
            group_of[id(out)] = g
    if unknown:
        raise _unknown_shape_error(unknown)
    if unsized:
        logger.warning(
            "memory plan: %d value(s) of unknown size counted as 0 bytes: %s",
            len(unsized),
            ", ".join(unsized[:_SHOW]),
        )
    return Lifetimes(
        lives=tuple(
            TensorLife(g.values[0], g.size, g.first, g.last, tuple(g.values)) for g in groups
        ),
        naive_bytes=naive,
        input_bytes=input_bytes,
        output_bytes=output_bytes,
        dtypes=dtypes,
        steps=tuple(n.name or n.op_type for n in order),
        unsized=tuple(unsized),
    )


def tensor_lifetimes(
    model: ir.Model, *, alias: bool = True, inplace: bool = True, precision: str | None = None
) -> list[TensorLife]:
    """One :class:`TensorLife` per arena buffer of a shape-inferred model, in creation order.

    See :func:`analyze_lifetimes` for the options; raises :class:`InputError` naming every used
    tensor whose shape is unknown.
    """
    return list(analyze_lifetimes(model, alias=alias, inplace=inplace, precision=precision).lives)
