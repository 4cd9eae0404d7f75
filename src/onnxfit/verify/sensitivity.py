"""Per-node sensitivity: which nodes' outputs drift most between a model and its optimized form.

The optimize layer uses the ranking to keep the worst layers in higher precision ("back off and
retry"): pass ``NodeDrift.nodes`` of the first entries to ``Int8StaticPass(nodes_to_exclude=)``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.verify.runner import Inputs, ModelArg, feeds_of, input_names, iter_outputs

#: Ops a QDQ quantizer folds into the QuantizeLinear before them (their output takes the name).
_FOLDED = {"Relu", "Clip"}
#: Elements converted to float64 at a time when summing layer errors (8 MiB of float64).
_CHUNK = 1 << 20


@dataclass
class NodeDrift:
    """Drift at one reference tensor ``output``. ``nodes``: the reference nodes from the nearest
    compared tensors upstream down to it, then its consumers: excluding them all from
    quantization keeps the tensor and its computation float (ORT quantizes a tensor when its
    producer or any consumer is quantized). ``node`` is the main producer (the first that is
    not a folded activation)."""

    node: str
    op_type: str
    output: str
    rel_error: float
    cosine: float
    added: float
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "nodes": list(self.nodes)}


def _float_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({o.name: o.type.tensor_type.elem_type for o in proto.graph.output})
    return types


def _expose(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )


def _dequantized_names(proto: onnx.ModelProto) -> dict[str, str]:
    """tensor X -> the output of the ``DequantizeLinear(QuantizeLinear(X))`` after it: the value
    the consumers of X see in a QDQ model."""
    q_of = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    return {
        q_of[n.input[0]]: n.output[0]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of
    }


def _segment(
    name: str, producers: Mapping[str, onnx.NodeProto], measured: Mapping[str, float]
) -> tuple[list[onnx.NodeProto], float]:
    """Reference nodes from tensor ``name`` back to measured tensors; the worst drift there."""
    nodes: list[onnx.NodeProto] = []
    worst, stack, seen = 0.0, [name], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        nodes.append(node)
        for inp in node.input:
            if inp in measured:
                worst = max(worst, measured[inp])
            elif inp in producers:
                stack.append(inp)
    return nodes, worst


def _rel_error(d2: float, r2: float, c2: float) -> float:
    """||r - c|| / ||r|| from the sums; infinite when the candidate is not finite."""
    if not (math.isfinite(d2) and math.isfinite(c2)):
        return math.inf
    return math.sqrt(d2 / r2) if r2 > 0 else float(c2 > 0)


def _cosine(r2: float, c2: float, rc: float) -> float:
    if not (math.isfinite(c2) and math.isfinite(rc)):
        return 0.0
    return float(rc / (math.sqrt(r2) * math.sqrt(c2))) if r2 > 0 and c2 > 0 else float(r2 == c2)


def _added(error: float, upstream: float) -> float:
    """The error a tensor adds to its inputs' (0 when both are infinite)."""
    if math.isinf(error) and math.isinf(upstream):
        return 0.0
    return error - upstream


def per_node_sensitivity(
    reference: ModelArg,
    candidate: ModelArg,
    inputs: Inputs,
    *,
    top: int | None = None,
    batch: int = 8,
) -> list[NodeDrift]:
    """Rank reference nodes by the error the candidate adds after them, worst first.

    Every float tensor a reference node computes is compared with the candidate's tensor of the
    same name (QDQ quantization keeps names) or, where the candidate quantizes it, with the
    ``DequantizeLinear`` output that its consumers see; relative L2 error and cosine over all
    ``inputs``. ``added`` is a tensor's error minus the worst error of the compared tensors it
    is computed from. Pass the model the candidate was made from (for INT8: the *prepared*
    model) so that names line up with ``nodes_to_exclude``. ``top`` keeps the first entries.
    """
    ref_proto = (
        io.to_proto(reference)
        if isinstance(reference, ir.Model)
        else io.load_proto(Path(reference))
    )
    cand_proto = (
        io.to_proto(candidate)
        if isinstance(candidate, ir.Model)
        else io.load_proto(Path(candidate))
    )
    ref_types = _float_types(ref_proto)
    producers = {o: n for n in ref_proto.graph.node for o in n.output if o}
    cand_tensors = {o for n in cand_proto.graph.node for o in n.output}
    seen_as = {**{t: t for t in cand_tensors}, **_dequantized_names(cand_proto)}
    pairs = {
        name: seen_as[name]
        for name in producers
        if ref_types.get(name) == onnx.TensorProto.FLOAT and name in seen_as
    }
    _expose(ref_proto, list(pairs))
    _expose(cand_proto, sorted(set(pairs.values())))
    feeds, _ = feeds_of(inputs, input_names(reference))
    # running sums per tensor: |r - c|^2, |r|^2, |c|^2, r.c (all samples; memory stays flat)
    sums: dict[str, np.ndarray] = {n: np.zeros(4) for n in pairs}
    runs = zip(
        iter_outputs(ref_proto, feeds, batch=batch),
        iter_outputs(cand_proto, feeds, batch=batch),
        strict=True,
    )
    for ref_out, cand_out in runs:
        for name in list(sums):
            r, c = ref_out[name].ravel(), cand_out[pairs[name]].ravel()
            if r.shape != c.shape:
                del sums[name]
                continue
            for i in range(0, r.size, _CHUNK):  # float64 a chunk at a time: memory stays flat
                a = r[i : i + _CHUNK].astype(np.float64)
                b = c[i : i + _CHUNK].astype(np.float64)
                with np.errstate(all="ignore"):  # inf/nan (an fp16 overflow) -> infinite error
                    sums[name] += (np.dot(a - b, a - b), np.dot(a, a), np.dot(b, b), np.dot(a, b))
    rel = {n: _rel_error(d2, r2, c2) for n, (d2, r2, c2, _) in sums.items()}
    consumers: dict[str, list[str]] = {}
    for node in ref_proto.graph.node:
        for inp in set(node.input):
            consumers.setdefault(inp, []).append(node.name)
    drifts = []
    for name, (_, r2, c2, rc) in sums.items():
        nodes, upstream = _segment(name, producers, {k: v for k, v in rel.items() if k != name})
        main = next((n for n in reversed(nodes) if n.op_type not in _FOLDED), nodes[0])
        cos = _cosine(r2, c2, rc)
        drifts.append(
            NodeDrift(
                main.name,
                main.op_type,
                name,
                rel[name],
                cos,
                _added(rel[name], upstream),
                [n.name for n in nodes] + consumers.get(name, []),
            )
        )
    drifts.sort(key=lambda d: d.added, reverse=True)
    return drifts[:top] if top is not None else drifts


def layer_errors(
    reference: ModelArg,
    candidate: ModelArg,
    inputs: Inputs,
    *,
    top: int = 10,
    origins: ir.Model | None = None,
) -> list[dict[str, Any]]:
    """The layer error table: the ``top`` reference nodes by the error the candidate adds after
    them (:func:`per_node_sensitivity`), as dicts (``node``, ``op_type``, ``output``,
    ``rel_error``, ``added``, ``cosine``, ``from``: what the node came from, read from the
    ``onnxfit:from`` metadata of the same-named node in ``origins``)."""
    if top <= 0:
        return []
    drifts = per_node_sensitivity(reference, candidate, inputs, top=top)
    meta = (
        {n.name: n.metadata_props.get("onnxfit:from", "") for n in origins.graph} if origins else {}
    )
    return [
        {
            "node": d.node,
            "op_type": d.op_type,
            "output": d.output,
            "rel_error": d.rel_error,
            "added": d.added,
            "cosine": d.cosine,
            "from": meta.get(d.node, ""),
        }
        for d in drifts
    ]
