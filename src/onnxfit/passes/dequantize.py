"""``dequantize``: a QDQ or QOperator INT8 model back to a float model.

Why: INT8 runs slower than FP16 on DirectML (see DESIGN.md), so an INT8 model is brought back
to float before it is retargeted to FP16 for a console GPU.

Rewrites, in order:

1. QOperator nodes become QDQ form (:mod:`onnxfit.passes.qoperator`: QLinearConv,
   QLinearMatMul, QLinearAdd/Mul, QGemm, ..., and the MatMulInteger / ConvInteger chain of
   ``quantize_dynamic``); DequantizeLinear nodes move above integer data-movement ops
   (Reshape, Flatten, MaxPool, Concat...) so that every Q meets its DQ.
2. Weights: ``QuantizeLinear`` of a constant is evaluated, and ``DequantizeLinear`` of a
   constant (per-tensor, per-axis with ``axis``, or blocked with ``block_size``) becomes a float
   initializer ``(q - zero_point) * scale``. Weights keep the values the INT8 model used.
3. Activations: each ``QuantizeLinear -> DequantizeLinear`` pair is removed and the consumers
   read the float value directly. **A hidden ReLU is kept** (``clip="zero"``, the default):
   when the QuantizeLinear's range starts exactly at 0 (uint8 with zero point 0, int8 with
   zero point -128) it clipped every negative to 0, so a ``Relu`` is inserted, unless the
   value is already known to be >= 0 (output of a Relu, or of a shape or pooling op on such a
   value: :mod:`onnxfit.passes._bounds`). The ShuffleNetV2 QDQ model of the ONNX zoo has no
   Relu node at all: its 37 ReLUs exist only as such uint8 QuantizeLinear nodes (FINDINGS.md).
   By default the top of the range is NOT turned into a Clip: it is the calibrated maximum of
   the activation, a quantization artefact rather than part of the float network. A ReLU6
   calibrated to end at 6 would lose its upper clip; ``clip="range"`` keeps every saturation
   (a Clip to the representable range wherever the value may leave it), which follows the
   INT8 model more closely at the cost of extra Clip nodes.
4. Opset: a model below ``min_opset`` (13 by default: the first with per-axis
   DequantizeLinear, which ORT's per-channel quantization needs, FINDINGS.md) is converted
   with the onnxscript version converter, after the Q/DQ nodes are gone.

A graph output keeps its name. Q/DQ nodes that are not a pair (a quantized graph input or
output, DQ of a computed value) stay and are counted in ``stats["qdq_left"]``. Stats:
``qoperator_converted`` (per op), ``dq_moved``, ``weights_folded``, ``pairs_removed``,
``relu_inserted``, ``clip_inserted``, ``scale_mismatch``,
``unsupported`` (ops left quantized), ``opset`` (before -> after).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxfit.errors import InputError
from onnxfit.passes._bounds import ValueBounds, dq_interval
from onnxfit.passes._quant import (
    Q_OPS,
    const_array,
    dequantize_array,
    int_attr,
    quant_type,
    quantize_array,
)
from onnxfit.passes.base import OnnxfitPass
from onnxfit.passes.qoperator import qoperator_to_qdq, sink_dequantize

logger = logging.getLogger(__name__)


def _is_onnx(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx")


def _can_take_name(value: ir.Value) -> bool:
    """A value that may be renamed into a graph output (not an input, output or constant)."""
    return not (value.is_graph_input() or value.is_graph_output() or value.is_initializer())


def _axis_block(node: ir.Node) -> tuple[int, int]:
    return int_attr(node, "axis", 1), int_attr(node, "block_size", 0)


def _constant_operands(
    node: ir.Node,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """x, scale and zero point (None if absent) of a Q/DQ node whose operands are all constant,
    else None."""
    x, scale = const_array(node.inputs[0]), const_array(node.inputs[1])
    zp_v = node.inputs[2] if len(node.inputs) > 2 else None
    zp = const_array(zp_v)
    if x is None or scale is None or (zp_v is not None and zp is None):
        return None
    return x, scale, zp


def _new_initializer(graph: ir.Graph, array: np.ndarray, name: str) -> ir.Value:
    base, i = name, 0
    while name in graph.initializers:
        i += 1
        name = f"{base}_{i}"
    value = ir.Value(
        name=name,
        const_value=ir.tensor(array, name=name),
        type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
        shape=ir.Shape(array.shape),
    )
    graph.register_initializer(value)
    return value


class DequantizePass(OnnxfitPass):
    """Turn a QDQ or QOperator INT8 model into a float model (see the module docstring).

    ``clip`` says what the removed QuantizeLinear's saturation becomes:

    * ``"zero"`` (default): a Relu where the range started at exactly 0 (the hidden ReLU);
    * ``"range"``: a Clip to the whole representable range wherever the value may leave it,
      which reproduces the INT8 model's saturation (closer to its outputs; more nodes);
    * ``"none"``: nothing, the naive conversion (wrong for hidden ReLUs; for comparison).

    A clip is skipped when the value is already known to lie inside (after a Relu, a pooling
    or shape op of such a value, ...). ``min_opset`` (default 13; 0 = keep) is the lowest
    ai.onnx opset of the result.
    """

    name = "dequantize"
    portable = True

    def __init__(
        self, *, clip: Literal["zero", "range", "none"] = "zero", min_opset: int = 13
    ) -> None:
        super().__init__()
        if clip not in ("zero", "range", "none"):
            raise InputError(
                f"dequantize: unknown clip={clip!r}", hint="use 'zero', 'range' or 'none'"
            )
        if min_opset and not 7 <= min_opset <= 23:
            raise InputError(f"dequantize: min_opset={min_opset} is out of range 7-23")
        self.clip = clip
        self.min_opset = min_opset

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        qop = qoperator_to_qdq(model)
        self.stats["qoperator_converted"] = qop.converted
        common.TopologicalSortPass()(model)
        self.stats["dq_moved"] = sink_dequantize(graph)
        folded = self._fold_constant_q(graph) + self._fold_constant_dq(graph)
        pairs, relus, clips, mismatch = self._remove_pairs(graph)
        common.RemoveUnusedNodesPass()(model)
        common.NameFixPass()(model)
        self.stats["weights_folded"] = folded
        self.stats["pairs_removed"] = pairs
        self.stats["relu_inserted"] = relus
        self.stats["clip_inserted"] = clips
        self.stats["scale_mismatch"] = mismatch
        left = [f"{n.op_type}:{n.name}" for n in graph if n.op_type in Q_OPS]
        self.stats["qdq_left"] = left
        self.stats["unsupported"] = qop.unsupported
        if left:
            logger.warning("%d Q/DQ nodes are not pairs and stay: %s", len(left), left[:5])
        modified = bool(qop.converted or folded or pairs)
        before = model.opset_imports.get("", 0)
        after = before
        if self.min_opset and before < self.min_opset:
            from onnxscript.version_converter import ConvertVersionPass

            ConvertVersionPass(self.min_opset, fallback=True)(model)
            after = model.opset_imports.get("", before)
            modified = True
        self.stats["opset"] = f"{before} -> {after}"
        return modified

    def _fold_constant_q(self, graph: ir.Graph) -> int:
        """QuantizeLinear(constant) -> its integer initializer."""
        count = 0
        for node in list(graph):
            if node.op_type != "QuantizeLinear" or not _is_onnx(node):
                continue
            operands = _constant_operands(node)
            qtype = quant_type(node)
            if operands is None or qtype is None:
                continue
            x, scale, zp = operands
            axis, block = _axis_block(node)
            q = quantize_array(x, scale, zp, qtype=qtype, axis=axis, block_size=block)
            out = node.outputs[0]
            src_name = node.inputs[0].name if node.inputs[0] is not None else None
            value = _new_initializer(graph, q.astype(qtype.numpy()), (src_name or "w") + "_q")
            out.replace_all_uses_with(value, replace_graph_outputs=True)
            graph.remove(node, safe=True)
            count += 1
        return count

    def _fold_constant_dq(self, graph: ir.Graph) -> int:
        """DequantizeLinear(constant) -> a float initializer."""
        count = 0
        for node in list(graph):
            if node.op_type != "DequantizeLinear" or not _is_onnx(node):
                continue
            operands = _constant_operands(node)
            if operands is None:
                continue
            x, scale, zp = operands
            axis, block = _axis_block(node)
            array = dequantize_array(x, scale, zp, axis=axis, block_size=block)
            out = node.outputs[0]
            if out.is_graph_output():
                continue
            name = out.name or "dequantized"
            out.name = None
            value = _new_initializer(graph, array, name)
            out.replace_all_uses_with(value)
            graph.remove(node, safe=True)
            count += 1
        return count

    def _remove_pairs(self, graph: ir.Graph) -> tuple[int, int, int, int]:
        """Drop activation Q -> DQ pairs, keeping the Q's clipping where it mattered."""
        bounds = ValueBounds()
        pairs = relus = clips = mismatch = 0
        opset = graph.opset_imports.get("", 13)
        for q in list(graph):
            if q.op_type != "QuantizeLinear" or not _is_onnx(q) or q.graph is None:
                continue
            dqs = [
                user
                for user, idx in q.outputs[0].uses()
                if user.op_type == "DequantizeLinear" and idx == 0 and _is_onnx(user)
            ]
            src = q.inputs[0]
            if not dqs or src is None:
                continue
            value = src
            q_lo, q_hi = dq_interval(q)
            s_lo, s_hi = bounds(src)
            need_lo = q_lo > s_lo and (self.clip == "range" or (self.clip == "zero" and q_lo == 0))
            need_hi = self.clip == "range" and q_hi < s_hi
            if need_lo and not need_hi and q_lo == 0:
                value = self._insert(graph, q, "Relu", [src], {})
                relus += 1
            elif need_lo or need_hi:
                dtype = const_array(q.inputs[1]) if len(q.inputs) > 1 else None
                np_dtype = dtype.dtype if dtype is not None else np.float32
                lo, hi = (q_lo if need_lo else None), (q_hi if need_hi else None)
                value = self._insert_clip(graph, q, src, lo, hi, np_dtype, opset)
                clips += 1
            bounds.set(
                value, (max(s_lo, q_lo) if need_lo else s_lo, min(s_hi, q_hi) if need_hi else s_hi)
            )
            q_scale = const_array(q.inputs[1])
            for dq in dqs:
                dq_scale = const_array(dq.inputs[1])
                if q_scale is None or dq_scale is None or not np.array_equal(q_scale, dq_scale):
                    mismatch += 1
                out = dq.outputs[0]
                if out.is_graph_output() and _can_take_name(value):
                    out.replace_all_uses_with(value, replace_graph_outputs=True)
                    name, out.name = out.name, None
                    value.name = name
                    value.type = value.type or out.type
                    value.shape = value.shape or out.shape
                elif out.is_graph_output():  # keep the output's name: Identity(value)
                    ident = ir.node("Identity", [value])
                    graph.insert_before(dq, ident)
                    new_out = ident.outputs[0]
                    new_out.type, new_out.shape = out.type, out.shape
                    out.replace_all_uses_with(new_out, replace_graph_outputs=True)
                    name, out.name = out.name, None
                    new_out.name = name
                else:
                    out.replace_all_uses_with(value)
                graph.remove(dq, safe=True)
                pairs += 1
            if not q.outputs[0].uses() and not q.outputs[0].is_graph_output():
                graph.remove(q, safe=True)
        return pairs, relus, clips, mismatch

    @staticmethod
    def _insert(
        graph: ir.Graph, q: ir.Node, op: str, inputs: list[ir.Value | None], attrs: dict
    ) -> ir.Value:
        src = inputs[0]
        assert src is not None
        node = ir.node(op, inputs, attrs, name=f"{q.name or 'q'}_{op.lower()}")
        out = node.outputs[0]
        out.name = f"{src.name or 'x'}_{op.lower()}"
        out.type, out.shape = src.type, src.shape
        graph.insert_before(q, node)
        return out

    def _insert_clip(
        self,
        graph: ir.Graph,
        q: ir.Node,
        src: ir.Value,
        lo: float | None,
        hi: float | None,
        dtype: np.dtype | type,
        opset: int,
    ) -> ir.Value:
        if opset < 11:  # Clip-6 takes its bounds as attributes
            attrs = {k: float(v) for k, v in (("min", lo), ("max", hi)) if v is not None}
            return self._insert(graph, q, "Clip", [src], attrs)
        base = q.name or "q"
        ins: list[ir.Value | None] = [src]
        for tag, bound in (("min", lo), ("max", hi)):
            ins.append(
                None
                if bound is None
                else _new_initializer(graph, np.array(bound, dtype=dtype), f"{base}_{tag}")
            )
        while ins[-1] is None:
            ins.pop()
        return self._insert(graph, q, "Clip", ins, {})
