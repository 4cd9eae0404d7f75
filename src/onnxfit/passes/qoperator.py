"""QOperator INT8 nodes rewritten as DequantizeLinear -> float op -> QuantizeLinear (QDQ form).

The dequantize pass first brings every QOperator node into QDQ form with these rewrites, then
removes the Q/DQ pairs in one place. Rewrites (inputs per the ONNX and onnxruntime contrib
schemas):

* ``QLinearConv(x, xs, xzp, w, ws, wzp, ys, yzp, B)`` -> ``Q(Conv(DQ(x), DQ(w, axis=0),
  B * xs * ws), ys, yzp)`` (the int32 bias is dequantized with scale ``xs * ws``);
* ``QLinearMatMul(a, as, azp, b, bs, bzp, ys, yzp)`` -> ``Q(MatMul(DQ(a), DQ(b, axis=-1)))``;
* com.microsoft ``QLinearAdd`` / ``QLinearMul`` -> Add / Mul; ``QLinearSigmoid`` -> Sigmoid;
  ``QLinearLeakyRelu`` -> LeakyRelu; ``QLinearGlobalAveragePool`` / ``QLinearAveragePool``
  (``channels_last=0`` only) -> GlobalAveragePool / AveragePool; ``QLinearConcat`` -> Concat;
  ``QGemm`` -> Gemm (bias scale ``alpha * as * bs``; float output when it has no ``y_scale``);
  ``QLinearSoftmax`` -> Softmax (unless its ``opset`` semantics differ from the model's at a
  non-last axis);
* the dynamic-quantization chain written by ``onnxruntime.quantization.quantize_dynamic``:
  ``Mul(Cast(MatMulInteger(DynamicQuantizeLinear(x), Wq, .., Wzp)), Mul(x_scale, Ws))`` ->
  ``MatMul(x, (Wq - Wzp) * Ws)``, and the same with ConvInteger -> Conv.

Between QOperator nodes, QOperator models run data-movement ops (Reshape, Flatten, MaxPool,
Concat...) on the integers; :func:`sink_dequantize` moves the DequantizeLinear above them so
that the Q -> DQ pairs meet.

Anything else (such a QLinearSoftmax, channels-last pooling, integer ops not in that chain) stays as
it is and is named in the returned ``unsupported`` list.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir

from onnxfit.passes._quant import const_array, dequantize_array
from onnxfit.passes.base import name_after

logger = logging.getLogger(__name__)

MS = "com.microsoft"

#: QOperator op -> (float op, [(x, scale, zp, DQ axis or None)], (y_scale, y_zp) or None,
#: attributes to drop). Indices are input positions.
_SIMPLE: dict[
    str, tuple[str, list[tuple[int, int, int, int | None]], tuple[int, int], set[str]]
] = {
    "QLinearAdd": ("Add", [(0, 1, 2, None), (3, 4, 5, None)], (6, 7), set()),
    "QLinearMul": ("Mul", [(0, 1, 2, None), (3, 4, 5, None)], (6, 7), set()),
    "QLinearSigmoid": ("Sigmoid", [(0, 1, 2, None)], (3, 4), set()),
    "QLinearLeakyRelu": ("LeakyRelu", [(0, 1, 2, None)], (3, 4), set()),
    "QLinearGlobalAveragePool": ("GlobalAveragePool", [(0, 1, 2, None)], (3, 4), {"channels_last"}),
    "QLinearAveragePool": ("AveragePool", [(0, 1, 2, None)], (3, 4), {"channels_last"}),
    "QLinearMatMul": ("MatMul", [(0, 1, 2, None), (3, 4, 5, -1)], (6, 7), set()),
    "QLinearSoftmax": ("Softmax", [(0, 1, 2, None)], (3, 4), {"opset"}),
}
QOPERATOR_OPS = frozenset({*_SIMPLE, "QLinearConv", "QLinearConcat", "QGemm", "QLinearSoftmax"})
INTEGER_OPS = frozenset({"MatMulInteger", "ConvInteger"})


@dataclass
class QOperatorResult:
    converted: dict[str, int] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)


def _inp(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _channels_last(node: ir.Node) -> bool:
    attr = node.attributes.get("channels_last")
    return attr is not None and attr.as_int() != 0


def _dq(x: ir.Value, scale: ir.Value, zp: ir.Value | None, axis: int | None) -> ir.Node:
    attrs = {} if axis is None else {"axis": axis}
    return ir.node("DequantizeLinear", [x, scale] + ([zp] if zp is not None else []), attrs)


def _float_init(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    value = ir.Value(name=_unique_name(graph, name), const_value=ir.tensor(array))
    value.dtype = ir.DataType.from_numpy(array.dtype)
    value.shape = ir.Shape(array.shape)
    graph.register_initializer(value)
    return value


def _unique_name(graph: ir.Graph, base: str) -> str:
    name, i = base, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    return name


def _replace(graph: ir.Graph, node: ir.Node, new_nodes: Sequence[ir.Node], out: ir.Value) -> None:
    ir.convenience.replace_nodes_and_values(
        graph, node, [node], list(new_nodes), [node.outputs[0]], [out]
    )


def _requantize(
    node: ir.Node, y: ir.Node, scale: ir.Value | None, zp: ir.Value | None
) -> tuple[list[ir.Node], ir.Value]:
    """[y, Q(y)] and the value that replaces the QOperator output (float y without a scale)."""
    if scale is None:
        return [y], y.outputs[0]
    q = ir.node("QuantizeLinear", [y.outputs[0], scale] + ([zp] if zp is not None else []))
    return [y, q], q.outputs[0]


def _softmax_differs(graph: ir.Graph, node: ir.Node) -> bool:
    """True when QLinearSoftmax's ``opset`` semantics (< 13: coerce to 2-D at ``axis``) differ
    from the model's own Softmax and the axis is not the last one (where both agree)."""
    own = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 13))
    theirs = node.attributes.get_int("opset", own)
    if (own < 13) == (theirs < 13):
        return False
    axis = node.attributes.get_int("axis", 1 if theirs < 13 else -1)
    x = node.inputs[0] if node.inputs else None
    rank = len(x.shape) if x is not None and x.shape is not None else None
    return not (axis == -1 or (rank is not None and axis == rank - 1))


def _convert_simple(graph: ir.Graph, node: ir.Node) -> bool:
    float_op, ins, (ys, yzp), drop = _SIMPLE[node.op_type]
    if "channels_last" in drop and _channels_last(node):
        return False
    if node.op_type == "QLinearSoftmax" and _softmax_differs(graph, node):
        return False
    dqs = []
    for xi, si, zi, axis in ins:
        x, s = _inp(node, xi), _inp(node, si)
        if x is None or s is None:
            return False
        scale = const_array(s)
        per_axis = scale is not None and scale.size > 1
        dqs.append(_dq(x, s, _inp(node, zi), axis if per_axis else None))
    attrs = {k: v for k, v in node.attributes.items() if k not in drop}
    y = ir.node(float_op, [d.outputs[0] for d in dqs], attrs)
    tail, out = _requantize(node, y, _inp(node, ys), _inp(node, yzp))
    _named(node, dqs, y, tail)
    _replace(graph, node, [*dqs, *tail], out)
    return True


def _named(node: ir.Node, dqs: Sequence[ir.Node], main: ir.Node, tail: Sequence[ir.Node]) -> None:
    """The float op takes the QOperator node's name; its DequantizeLinear / QuantizeLinear
    helpers are named after it (``name/dq0``, ``name/q``)."""
    origin = node.name or ""
    for i, dq in enumerate(dqs):
        name_after(dq, origin, role=f"dq{i}")
    name_after(main, origin)
    for extra in tail:
        if extra is not main:
            name_after(extra, origin, role="q")


def _bias(
    graph: ir.Graph, b: ir.Value | None, scales: Sequence[ir.Value | None], factor: float, name: str
) -> ir.Value | None:
    """Float bias ``B * prod(scales) * factor`` as an initializer (None when B is absent)."""
    if b is None:
        return None
    arrays = [const_array(b), *(const_array(s) for s in scales)]
    if any(a is None for a in arrays):
        raise _Unsupported("bias or its scales are not constants")
    q, *ss = arrays
    assert q is not None
    scale = np.float32(factor) * np.ones((), np.float32)
    for s in ss:
        assert s is not None
        scale = scale * s.astype(np.float32).reshape(-1)
    return _float_init(graph, dequantize_array(q, scale, None, axis=0), name)


class _Unsupported(Exception):
    pass


def _convert_conv(graph: ir.Graph, node: ir.Node) -> bool:
    if _channels_last(node):
        return False
    x, xs, xzp, w, ws, wzp, ys, yzp = (_inp(node, i) for i in range(8))
    if x is None or xs is None or w is None or ws is None:
        return False
    bias = _bias(graph, _inp(node, 8), [xs, ws], 1.0, f"{node.name or 'conv'}_bias")
    wscale = const_array(ws)
    dx = _dq(x, xs, xzp, None)
    dw = _dq(w, ws, wzp, 0 if wscale is not None and wscale.size > 1 else None)
    attrs = {k: v for k, v in node.attributes.items() if k != "channels_last"}
    conv_in = [dx.outputs[0], dw.outputs[0]] + ([bias] if bias is not None else [])
    conv = ir.node("Conv", conv_in, attrs)
    tail, out = _requantize(node, conv, ys, yzp)
    _named(node, [dx, dw], conv, tail)
    _replace(graph, node, [dx, dw, *tail], out)
    return True


def _convert_gemm(graph: ir.Graph, node: ir.Node) -> bool:
    a, a_s, azp, b, bs, bzp = (_inp(node, i) for i in range(6))
    if a is None or a_s is None or b is None or bs is None:
        return False
    alpha = node.attributes["alpha"].as_float() if "alpha" in node.attributes else 1.0
    trans_b = node.attributes["transB"].as_int() if "transB" in node.attributes else 0
    c = _bias(graph, _inp(node, 6), [a_s, bs], alpha, f"{node.name or 'gemm'}_bias")
    bscale = const_array(bs)
    da = _dq(a, a_s, azp, None)
    db = _dq(b, bs, bzp, (0 if trans_b else 1) if bscale is not None and bscale.size > 1 else None)
    gemm = ir.node(
        "Gemm",
        [da.outputs[0], db.outputs[0]] + ([c] if c is not None else []),
        dict(node.attributes),
    )
    tail, out = _requantize(node, gemm, _inp(node, 7), _inp(node, 8))
    _named(node, [da, db], gemm, tail)
    _replace(graph, node, [da, db, *tail], out)
    return True


def _convert_concat(graph: ir.Graph, node: ir.Node) -> bool:
    ys, yzp = _inp(node, 0), _inp(node, 1)
    rest = list(node.inputs[2:])
    if len(rest) % 3 or ys is None:
        return False
    dqs = []
    for i in range(0, len(rest), 3):
        x, s, z = rest[i : i + 3]
        if x is None or s is None:
            return False
        dqs.append(_dq(x, s, z, None))
    concat = ir.node("Concat", [d.outputs[0] for d in dqs], dict(node.attributes))
    tail, out = _requantize(node, concat, ys, yzp)
    _named(node, dqs, concat, tail)
    _replace(graph, node, [*dqs, *tail], out)
    return True


def _single_use(value: ir.Value) -> ir.Node | None:
    uses = list(value.uses())
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0][0]


def _convert_integer(graph: ir.Graph, node: ir.Node) -> bool:
    """The quantize_dynamic chain around MatMulInteger / ConvInteger -> one float op."""
    a, w, azp, wzp = (_inp(node, i) for i in range(4))
    dql = a.producer() if a is not None else None
    if dql is None or dql.op_type != "DynamicQuantizeLinear" or azp is not dql.outputs[2]:
        return False
    x_scale = dql.outputs[1]
    cast = _single_use(node.outputs[0])
    if cast is None or cast.op_type != "Cast":
        return False
    mul = _single_use(cast.outputs[0])
    if mul is None or mul.op_type != "Mul":
        return False
    other = mul.inputs[1] if mul.inputs[0] is cast.outputs[0] else mul.inputs[0]
    scale_mul = other.producer() if other is not None else None
    if scale_mul is None or scale_mul.op_type != "Mul" or x_scale not in scale_mul.inputs:
        return False
    ws = scale_mul.inputs[1] if scale_mul.inputs[0] is x_scale else scale_mul.inputs[0]
    wq, wscale = const_array(w), const_array(ws)
    wzero = const_array(wzp) if wzp is not None else None
    if wq is None or wscale is None or (wzp is not None and wzero is None):
        return False
    conv = node.op_type == "ConvInteger"
    axis = 0 if conv else wq.ndim - 1
    weight = dequantize_array(wq, wscale.astype(np.float32), wzero, axis=axis)
    w_f = _float_init(graph, weight, f"{w.name or 'w'}_float" if w is not None else "w_float")
    x = dql.inputs[0]
    assert x is not None
    attrs = dict(node.attributes) if conv else {}
    new = ir.node("Conv" if conv else "MatMul", [x, w_f], attrs)
    name_after(new, node.name or "", source=f"{dql.name} + {node.name} + {mul.name}")
    ir.convenience.replace_nodes_and_values(
        graph, mul, [node, cast, mul], [new], [mul.outputs[0]], [new.outputs[0]]
    )
    return True


def qoperator_to_qdq(model: ir.Model) -> QOperatorResult:
    """Rewrite the QOperator nodes of ``model``'s main graph into QDQ form, in place."""
    result = QOperatorResult()
    graph = model.graph
    for node in list(graph):
        op = node.op_type
        if op not in QOPERATOR_OPS and op not in INTEGER_OPS:
            continue
        if node.domain not in ("", "ai.onnx", MS):
            continue
        try:
            if op in _SIMPLE:
                done = _convert_simple(graph, node)
            elif op == "QLinearConv":
                done = _convert_conv(graph, node)
            elif op == "QGemm":
                done = _convert_gemm(graph, node)
            elif op == "QLinearConcat":
                done = _convert_concat(graph, node)
            elif op in INTEGER_OPS:
                done = _convert_integer(graph, node)
            else:
                done = False
        except _Unsupported as exc:
            logger.debug("%s %s stays: %s", op, node.name, exc)
            done = False
        if done:
            result.converted[op] = result.converted.get(op, 0) + 1
        else:
            result.unsupported.append(f"{op}:{node.name}")
    if result.unsupported:
        logger.warning("quantized ops left as they are: %s", ", ".join(result.unsupported))
    return result


#: Ops that only move, select or compare elements: ``DQ(op(q)) == op(DQ(q))`` for a per-tensor
#: DequantizeLinear with a positive scale (MaxPool: dequantization is increasing).
MOVE_OPS = frozenset(
    {
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Identity",
        "Slice",
        "Gather",
        "Concat",
        "MaxPool",
        "GlobalMaxPool",
        "DepthToSpace",
        "SpaceToDepth",
        "Tile",
        "Expand",
    }
)


def _same_dq(a: ir.Node, b: ir.Node) -> bool:
    arrays = [(const_array(x.inputs[1]), const_array(_inp(x, 2))) for x in (a, b)]
    (sa, za), (sb, zb) = arrays
    if sa is None or sb is None or not np.array_equal(sa, sb):
        return False
    if za is None or zb is None:
        return za is None and zb is None
    return bool(np.array_equal(za, zb))


def sink_dequantize(graph: ir.Graph) -> int:
    """Move per-tensor DequantizeLinear nodes above integer data-movement ops (MOVE_OPS).

    QOperator models run Reshape/Flatten/MaxPool/... on the int8 tensors between QLinear ops;
    with the DQ moved above them the Q -> DQ pairs meet and can be removed. The op must have one
    output read only by DQ nodes with the same scale and zero point. Returns the moves made.
    """
    moved = 0
    changed = True
    while changed:
        changed = False
        for dq in list(graph):
            if dq.op_type != "DequantizeLinear" or dq.graph is None:
                continue
            x = dq.inputs[0]
            op = x.producer() if x is not None else None
            scale = const_array(dq.inputs[1])
            if x is None or op is None or op.op_type not in MOVE_OPS:
                continue
            if op.domain not in ("", "ai.onnx"):
                continue
            if scale is None or scale.size != 1 or np.any(scale <= 0) or len(op.outputs) != 1:
                continue
            users = [u for u, _ in x.uses()]
            if x.is_graph_output() or not all(
                u.op_type == "DequantizeLinear"
                and _same_dq(u, dq)
                and not u.outputs[0].is_graph_output()
                for u in users
            ):
                continue
            data = range(len(op.inputs)) if op.op_type == "Concat" else range(1)
            for i in data:
                src = op.inputs[i]
                if src is None:
                    continue
                new = ir.node("DequantizeLinear", [src, *dq.inputs[1:]])
                if dq.outputs[0].dtype is not None:
                    new.outputs[0].dtype = dq.outputs[0].dtype
                graph.insert_before(op, new)
                op.replace_input_with(i, new.outputs[0])
            x.type = dq.outputs[0].type
            for user in users:
                user.outputs[0].replace_all_uses_with(x)
                graph.remove(user, safe=True)
            moved += 1
            changed = True
    return moved
