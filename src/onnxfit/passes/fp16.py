"""``fp16``: float32 tensors and weights to float16, with float32 kept where it must stay.

Rewrites:

* every ONNX-domain node whose float32 inputs/outputs may be float16 by its operator schema
  computes in float16: its float32 outputs become float16, float32 initializers it reads are
  stored as float16 (values beyond +-65504 are clamped; counted in ``weights_clamped``), a
  ``Cast(to=FLOAT)`` among them becomes ``Cast(to=FLOAT16)``;
* inputs whose schema allows only float32 stay float32 (Resize ``scales``, and by rule also
  Resize ``roi`` and Upsample ``scales``), and so does the shape-like subgraph that computes
  them (nodes whose float outputs feed only such inputs or Range);
* nodes stay float32 when their schema has no float16 (Range, NonMaxSuppression, the Random*
  ops...), when they are not in the ONNX domain (com.microsoft ops: their CPU kernels are
  float32, e.g. FusedConv), when they carry subgraphs (If/Loop/Scan), when their output types
  are unknown, or when their name is in ``block_list`` (the automatic block list grows it);
* one Cast is inserted per value and direction where float16 and float32 meet;
  ``keep_io_types=True`` (default) keeps the model's float32 inputs/outputs: one Cast after each
  input, one before each output (outputs keep their names);
* redundant Casts go: ``Cast(Cast(x:fp16, to=FLOAT), to=FLOAT16) -> x`` and casts to the type a
  value already has.

On CPU this saves disk only (ORT converts back at load and wraps fp16 ops without CPU kernels
in Casts, FINDINGS.md); on DirectML and CUDA it halves weight and activation memory.
Stats: ``already_float16`` (nothing float32 left, float16 weights present), ``nodes_fp16``,
``nodes_fp32`` (names kept float32, with the reason counted in ``kept_reasons``),
``casts_inserted``, ``casts_removed``, ``weights_converted``, ``weights_clamped``,
``weights_underflow``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxfit.passes._fp16_plan import F16, F32, Plan, infer_dtypes
from onnxfit.passes.base import OnnxfitPass

__all__ = [
    "F16",
    "F32",
    "FP16_MAX",
    "FP16_TINY",
    "Fp16Pass",
    "infer_dtypes",
    "remove_redundant_casts",
    "to_fp16_array",
]

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
FP16_TINY = 2.0**-24  # smallest subnormal: smaller magnitudes become 0


def to_fp16_array(array: np.ndarray) -> tuple[np.ndarray, int, int]:
    """float32 -> float16 with clamping; returns (array, clamped count, underflow count)."""
    a = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(a)
    clamped = int(np.count_nonzero(finite & (np.abs(a) > FP16_MAX)))
    under = int(np.count_nonzero((a != 0) & (np.abs(a) < FP16_TINY)))
    out = np.where(finite, np.clip(a, -FP16_MAX, FP16_MAX), a).astype(np.float16)
    return out, clamped, under


class Fp16Pass(OnnxfitPass):
    """Convert a float32 model to float16 (see the module docstring).

    ``block_list``: names of nodes kept float32, with Casts at their boundary.
    ``keep_io_types``: keep the model's float32 inputs and outputs (default True).
    """

    name = "fp16"
    portable = True

    def __init__(
        self, *, keep_io_types: bool = True, block_list: Iterable[str] | None = None
    ) -> None:
        super().__init__()
        self.keep_io_types = keep_io_types
        self.block_list: frozenset[str] = frozenset(block_list or ())

    def run(self, model: ir.Model) -> bool:
        graph = model.graph
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        infer_dtypes(model)
        missing = sorted(self.block_list - {n.name for n in graph if n.name})
        if missing:
            logger.warning("fp16: block_list names not in the model: %s", missing[:10])
        already = not any(v.dtype == F32 for v in self._float32_values(graph)) and any(
            v.dtype == F16 for v in graph.initializers.values()
        )
        self.stats["already_float16"] = already
        plan = Plan(model, self.block_list)
        self._weights = {"converted": 0, "clamped": 0, "underflow": 0}
        self._casts: dict[tuple[ir.Value, ir.DataType], ir.Value] = {}
        self._new_nodes = 0
        original_outputs = list(graph.outputs)
        float_values = self._float32_values(graph)
        fp16_values = self._retype_outputs(plan)
        if not self.keep_io_types:
            for v in graph.inputs:
                if v.dtype == F32:
                    v.dtype = F16
                    fp16_values.add(v)
        for value in float_values:
            self._connect(graph, plan, value, value in fp16_values)
        self._fix_outputs(graph, original_outputs)
        for node in plan.fp16:
            _retype_attributes(node)
        removed = remove_redundant_casts(model)
        common.TopologicalSortPass()(model)
        common.RemoveUnusedNodesPass()(model)
        common.NameFixPass()(model)  # new Cast / copy names never collide with old ones
        self.stats["nodes_fp16"] = len(plan.fp16)
        self.stats["nodes_fp32"] = sorted(plan.kept)
        reasons: dict[str, int] = {}
        for r in plan.kept.values():
            reasons[r] = reasons.get(r, 0) + 1
        self.stats["kept_reasons"] = reasons
        self.stats["casts_inserted"] = self._new_nodes
        self.stats["casts_removed"] = removed
        self.stats["weights_converted"] = self._weights["converted"]
        self.stats["weights_clamped"] = self._weights["clamped"]
        self.stats["weights_underflow"] = self._weights["underflow"]
        return bool(plan.fp16)

    @staticmethod
    def _float32_values(graph: ir.Graph) -> list[ir.Value]:
        seen: dict[ir.Value, None] = {}
        for v in graph.inputs:
            if v.dtype == F32:
                seen[v] = None
        for v in graph.initializers.values():
            if v.dtype == F32:
                seen[v] = None
        for node in graph:
            for v in node.outputs:
                if v.dtype == F32:
                    seen[v] = None
        return list(seen)

    @staticmethod
    def _retype_outputs(plan: Plan) -> set[ir.Value]:
        out = set()
        for node in plan.fp16:
            for v in node.outputs:
                if v.dtype == F32:
                    v.dtype = F16
                    out.add(v)
        return out

    def _connect(self, graph: ir.Graph, plan: Plan, value: ir.Value, is_fp16: bool) -> None:
        """Give every use of ``value`` the dtype it wants, through a Cast or a weight copy."""
        uses = list(value.uses())
        want = [(user, idx, plan.wants_fp16(user, idx)) for user, idx in uses]
        if (
            value.is_initializer()
            and value.const_value is not None
            and not value.is_graph_input()
            and not is_fp16
        ):
            fp16_users = [(u, i) for u, i, w in want if w]
            if not fp16_users:
                return
            if len(fp16_users) == len(uses) and not value.is_graph_output():
                self._convert_initializer(value)
                return
            copy = self._fp16_copy(graph, value)
            for user, idx in fp16_users:
                user.replace_input_with(idx, copy)
            return
        for user, idx, wants in want:
            if wants != is_fp16:
                user.replace_input_with(idx, self._cast(graph, value, F16 if wants else F32))

    def _convert_initializer(self, value: ir.Value) -> None:
        assert value.const_value is not None
        array, clamped, under = to_fp16_array(value.const_value.numpy())
        value.const_value = ir.tensor(array, name=value.name)
        value.dtype = F16
        self._weights["converted"] += 1
        self._weights["clamped"] += clamped
        self._weights["underflow"] += under

    def _fp16_copy(self, graph: ir.Graph, value: ir.Value) -> ir.Value:
        key = (value, F16)
        if key not in self._casts:
            assert value.const_value is not None
            array, clamped, under = to_fp16_array(value.const_value.numpy())
            name = f"{value.name}_fp16"
            copy = ir.Value(
                name=name,
                const_value=ir.tensor(array, name=name),
                type=ir.TensorType(F16),
                shape=value.shape,
            )
            graph.register_initializer(copy)
            self._weights["converted"] += 1
            self._weights["clamped"] += clamped
            self._weights["underflow"] += under
            self._casts[key] = copy
        return self._casts[key]

    def _cast(self, graph: ir.Graph, value: ir.Value, to: ir.DataType) -> ir.Value:
        key = (value, to)
        if key not in self._casts:
            suffix = "fp16" if to == F16 else "fp32"
            node = ir.node("Cast", [value], {"to": to.value}, name=f"{value.name}_to_{suffix}")
            out = node.outputs[0]
            out.name = f"{value.name}_{suffix}"
            out.dtype, out.shape = to, value.shape
            producer = value.producer()
            if producer is not None:
                graph.insert_after(producer, node)
            elif len(graph) > 0:
                graph.insert_before(graph.node(0), node)
            else:
                graph.append(node)
            self._new_nodes += 1
            self._casts[key] = out
        return self._casts[key]

    def _fix_outputs(self, graph: ir.Graph, original: list[ir.Value]) -> None:
        """Graph outputs that became float16 get a Cast back (keep_io_types), same names."""
        if not self.keep_io_types:
            return
        casts: dict[int, ir.Value] = {}  # a value listed twice as an output gets one Cast
        for i, value in enumerate(original):
            if value.dtype != F16 or graph.outputs[i] is not value:
                continue
            if id(value) not in casts:
                name = value.name
                value.name = f"{name}_fp16"
                casts[id(value)] = self._cast(graph, value, F32)
                casts[id(value)].name = name
            graph.outputs[i] = casts[id(value)]


def _retype_attributes(node: ir.Node) -> None:
    """Attributes that fix an output type: Cast ``to``, EyeLike ``dtype``, ConstantOfShape."""
    for key in ("to", "dtype"):
        attr = node.attributes.get(key)
        if node.op_type in ("Cast", "EyeLike") and attr is not None and attr.as_int() == F32.value:
            node.attributes[key] = ir.AttrInt64(key, F16.value)
    if node.op_type == "ConstantOfShape":
        attr = node.attributes.get("value")
        if attr is not None and attr.as_tensor().dtype == F32:
            array = to_fp16_array(attr.as_tensor().numpy())[0]
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(array))
        elif attr is None:  # default is float32 zero
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.zeros(1, np.float16)))


def remove_redundant_casts(model: ir.Model) -> int:
    """Drop Casts to a value's own dtype and lossless round trips (fp16 -> fp32 -> fp16)."""
    removed = 0
    widening = {(F16, F32), (F16, ir.DataType.DOUBLE), (F32, ir.DataType.DOUBLE)}

    def dtype_of(value: ir.Value) -> ir.DataType | None:
        producer = value.producer()
        if value.dtype is None and producer is not None and producer.op_type == "Cast":
            return ir.DataType(producer.attributes["to"].as_int())
        return value.dtype

    for node in list(model.graph):
        if node.op_type != "Cast" or node.domain not in ("", "ai.onnx"):
            continue
        out = node.outputs[0]
        src = node.inputs[0]
        if src is None or out.is_graph_output():
            continue
        to = ir.DataType(node.attributes["to"].as_int())
        replacement = None
        if dtype_of(src) == to:
            replacement = src
        else:
            first = src.producer()
            if first is not None and first.op_type == "Cast" and first.inputs[0] is not None:
                origin = first.inputs[0]
                if dtype_of(origin) == to and (to, dtype_of(src)) in widening:
                    replacement = origin
        if replacement is not None:
            out.replace_all_uses_with(replacement)
            model.graph.remove(node, safe=True)
            removed += 1
    return removed
