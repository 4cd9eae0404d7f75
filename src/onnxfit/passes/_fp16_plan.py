"""Which nodes of a float32 model may compute in float16: the plan of the fp16 pass.

A node computes in float16 when it is in the ONNX domain, not blocked, carries no subgraph,
has known output types, and its operator schema (``onnx.defs``) allows ``tensor(float16)`` for
each float32 output; its float32 inputs whose schema allows only float32 (Resize ``scales``)
stay float32, as do Resize ``roi`` and Upsample ``scales`` by rule. Nodes whose float outputs
only feed such shape-like inputs (or Range) stay float32 too, so shape arithmetic is exact.
:func:`infer_dtypes` fills in the value types this needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16

#: Inputs kept float32 although the schema would allow float16 (shape-like semantics).
SHAPE_LIKE_INPUTS: dict[str, frozenset[int]] = {
    "Resize": frozenset({1, 2}),
    "Upsample": frozenset({1}),
}
#: Ops whose float inputs are all scalars of a shape computation: what computes them stays fp32.
SHAPE_OPS = frozenset({"Range"})
#: Ops kept float32 whatever the schema says.
KEEP_FP32_OPS = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)


def _allowed(schema: onnx.defs.OpSchema, type_str: str) -> set[str]:
    for c in schema.type_constraints:
        if c.type_param_str == type_str:
            return set(c.allowed_type_strs)
    return {type_str}


def _formal(params: Sequence[Any], i: int) -> Any:
    return params[min(i, len(params) - 1)] if params else None


class Plan:
    """Which nodes compute in float16 and which of their inputs stay float32."""

    def __init__(self, model: ir.Model, block_list: frozenset[str]) -> None:
        self.opset = model.opset_imports.get("", 13)
        self.fp16: set[ir.Node] = set()
        self.fp32_inputs: dict[ir.Node, set[int]] = {}
        self.kept: dict[str, str] = {}  # node name -> reason
        for node in model.graph:
            reason = self._check(node, block_list)
            if reason is None:
                self.fp16.add(node)
            elif reason != "no float":
                self.kept[node.name or node.op_type] = reason
        self._keep_shape_subgraphs()

    def _check(self, node: ir.Node, block_list: frozenset[str]) -> str | None:
        floats_in = [i for i, v in enumerate(node.inputs) if v is not None and v.dtype == F32]
        floats_out = [i for i, v in enumerate(node.outputs) if v.dtype == F32]
        if not floats_in and not floats_out:
            return "no float"
        if node.name in block_list:
            return "block_list"
        if node.domain not in ("", "ai.onnx"):
            return "not ONNX domain"
        if node.op_type in KEEP_FP32_OPS:
            return "op kept float32"
        if any(
            a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
            for a in node.attributes.values()
        ):
            return "has subgraphs"
        if any(v.dtype is None for v in node.outputs) or any(
            v is not None and v.dtype is None for v in node.inputs
        ):
            return "unknown types"
        try:
            schema = onnx.defs.get_schema(node.op_type, self.opset, "")
        except onnx.defs.SchemaError:
            return "no schema"
        for i in floats_out:
            formal = _formal(schema.outputs, i)
            if formal is None or "tensor(float16)" not in _allowed(schema, formal.type_str):
                return "no float16 in schema"
        fp32_in = set(SHAPE_LIKE_INPUTS.get(node.op_type, ()))
        for i in floats_in:
            formal = _formal(schema.inputs, i)
            if formal is None or "tensor(float16)" not in _allowed(schema, formal.type_str):
                fp32_in.add(i)
        if not floats_out and set(floats_in) <= fp32_in:
            return "no float16 in schema"
        self.fp32_inputs[node] = fp32_in
        return None

    def wants_fp16(self, node: ir.Node, index: int) -> bool:
        return node in self.fp16 and index not in self.fp32_inputs.get(node, ())

    def _keep_shape_subgraphs(self) -> None:
        """fp16 nodes whose float outputs only feed shape-like float32 inputs stay float32.

        Shape-like: an input kept float32 by :meth:`_check` (Resize scales...), any input of
        a SHAPE_OPS node, or of a node kept by this rule. Blocked nodes do not propagate, so
        a block list never spreads to the layers before it.
        """
        shape_nodes: set[ir.Node] = set()

        def shape_use(user: ir.Node, idx: int) -> bool:
            if user in self.fp16:
                return idx in self.fp32_inputs.get(user, ())
            return user in shape_nodes or user.op_type in SHAPE_OPS

        changed = True
        while changed:
            changed = False
            for node in list(self.fp16):
                outs = [v for v in node.outputs if v.dtype == F32]
                if not outs or any(v.is_graph_output() for v in outs):
                    continue
                uses = [u for v in outs for u in v.uses()]
                if uses and all(shape_use(user, idx) for user, idx in uses):
                    self.fp16.discard(node)
                    shape_nodes.add(node)
                    self.kept[node.name or node.op_type] = "feeds float32 shape inputs only"
                    changed = True


def infer_dtypes(model: ir.Model) -> None:
    """Fill in value dtypes: ONNX shape inference, then per-node inference for the gaps."""
    common.ShapeInferencePass(strict_mode=False, data_prop=False)(model)
    opset = model.opset_imports.get("", 13)
    for node in model.graph:
        if all(v.dtype is not None for v in node.outputs):
            continue
        if node.domain not in ("", "ai.onnx"):
            # contrib ops (FusedConv, QLinear*...) mostly keep their first input's type
            first = node.inputs[0] if node.inputs else None
            if first is not None and first.dtype is not None and len(node.outputs) == 1:
                node.outputs[0].dtype = first.dtype
            continue
        _infer_node(node, opset)


def _infer_node(node: ir.Node, opset: int) -> None:
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
        types = {}
        for v in node.inputs:
            if v is not None and v.name and v.dtype is not None:
                types[v.name] = onnx.helper.make_tensor_type_proto(v.dtype.value, None)
        proto = ir.serde.serialize_node(node)
        out = onnx.shape_inference.infer_node_outputs(schema, proto, types)
    except Exception:  # inference of one node is best effort
        return
    for v in node.outputs:
        if v.dtype is None and v.name in out:
            elem = out[v.name].tensor_type.elem_type
            if elem:
                v.dtype = ir.DataType(elem)
