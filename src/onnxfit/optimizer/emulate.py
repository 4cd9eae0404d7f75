"""A float32 model that behaves like a float16 one on onnxruntime's CPU provider.

Why: ORT's CPU provider has few float16 kernels; it wraps float16 nodes in Casts to float32
and removes the Casts between consecutive such nodes (its mandatory InsertCastTransformer),
so a float16 model verified on CPU mostly computes and *stores* in float32: an activation
that overflows float16 (> 65504) on a GPU shows up as a fine number on CPU (measured here on a
three-Mul graph: no inf at any graph optimization level). Explicit ``Cast(to=FLOAT16) ->
Cast(to=FLOAT)`` round trips, on the other hand, are kept by ORT at every level.

:func:`emulate_fp16` therefore rewrites a model produced by the fp16 pass into float32
arithmetic with float16 *storage*: float16 weights are widened (their values stay the rounded
ones), every node output that was float16 is computed in float32 and passed through a
round trip to float16 and back, which rounds, flushes tiny values to 0 and turns values beyond
65504 into inf, as storing them in a float16 buffer on the GPU does. Value names are kept (the
rounded value takes the original name), so per-node comparisons line up with the reference.
It does not model float16 accumulation inside a kernel.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from onnxfit import io

F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16


def emulate_fp16(model: ir.Model) -> ir.Model:
    """A float32 copy of fp16-pass output ``model`` with float16 rounding at every fp16 value."""
    emu = io.clone(model)
    graph = emu.graph
    for value in list(graph.initializers.values()):
        tensor = value.const_value
        if tensor is not None and tensor.dtype == F16:
            array = np.asarray(tensor.numpy()).astype(np.float32)
            value.const_value = ir.tensor(array, name=value.name)
            value.dtype = F32
    for value in graph.inputs:
        if value.dtype == F16:
            value.dtype = F32
    for node in list(graph):
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            to = node.attributes.get("to")
            if to is not None and to.as_int() == F16.value:
                node.attributes["to"] = ir.AttrInt64("to", F32.value)
        if node.op_type == "ConstantOfShape":
            attr = node.attributes.get("value")
            if attr is not None and attr.as_tensor().dtype == F16:
                array = np.asarray(attr.as_tensor().numpy()).astype(np.float32)
                node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))
        for out in node.outputs:
            if out.dtype == F16:
                _round_trip(graph, node, out)
    return emu


def _round_trip(graph: ir.Graph, producer: ir.Node, value: ir.Value) -> None:
    """Compute ``value`` in float32 and let its users read it rounded through float16."""
    name = value.name or ""
    value.dtype = F32
    uses = list(value.uses())
    was_output = value.is_graph_output()
    value.name = f"{name}__f32"
    down = ir.node("Cast", [value], {"to": F16.value}, name=f"{name}__to_f16")
    up = ir.node("Cast", [down.outputs[0]], {"to": F32.value}, name=f"{name}__rounded")
    down.outputs[0].name = f"{name}__f16"
    down.outputs[0].dtype = F16
    up.outputs[0].name = name
    up.outputs[0].dtype = F32
    up.outputs[0].shape = value.shape
    graph.insert_after(producer, [down, up])
    for user, idx in uses:
        user.replace_input_with(idx, up.outputs[0])
    if was_output:
        for i, out in enumerate(graph.outputs):
            if out is value:
                graph.outputs[i] = up.outputs[0]
