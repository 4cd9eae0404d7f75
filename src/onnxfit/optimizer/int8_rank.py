"""Measured INT8 sensitivity: which compute nodes cost the most accuracy when quantized.

Ranking nodes by the error their own output adds (:func:`onnxfit.verify.per_node_sensitivity`)
misses the nodes whose error *compounds*: on ShuffleNetV2 (this project's CPU, 250 ImageNet
images) keeping the first convolution float alone took the expected top-1 drop of the INT8
model from 1.35 to 0.64 pt, yet the drift ranking put it 29th. So the back-off measures:

* the INT8 candidate is built once with every node quantized;
* for each compute node X (Conv / ConvTranspose / Gemm / MatMul) that runs in INT8, its group
  is X and the nodes producing X's quantized activations (ORT quantizes a tensor whose
  producer is quantized, so X alone excluded would still read quantized inputs); a copy with
  X fed the float activations (the tensors before their QuantizeLinear) and the group's float
  weights and biases (from the prepared model) is run on up to :data:`RANKING_SAMPLES`
  samples;
* the node's sensitivity is how much that lowers the distance to the float model: mean KL on
  the softmax for a classifier output, else the relative L2 error of every output
  (:func:`distance_to`);
* one more candidate is the **output tail**: the non-compute nodes between the last compute
  nodes and the graph outputs (YOLOX concatenates raw box offsets and sigmoid scores there: one
  per-tensor uint8 scale over both crushes the scores), all fed float activations;
* nodes are ranked by it, largest first (nodes that do not help are left out).

Feeding the float inputs is a quick stand-in for ``nodes_to_exclude`` (no re-quantization per
node; the node's output keeps its QDQ pair when its consumers are quantized); the back-off
then builds the real candidates with ``nodes_to_exclude``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit import io
from onnxfit.optimizer.stats import COMPUTE_OPS, compute_precision
from onnxfit.verify import distance
from onnxfit.verify.runner import first_samples, run_all

logger = logging.getLogger(__name__)

#: Samples each probe runs: enough for a stable mean KL, quick per node.
RANKING_SAMPLES = 64
Feeds = list[dict[str, np.ndarray]]


@dataclass(frozen=True)
class NodeSensitivity:
    """One compute node: the distance to the float model with it float, and the gain."""

    node: str
    op_type: str
    distance: float
    gain: float  # baseline distance minus ``distance``; > 0: keeping it float helps
    group: tuple[str, ...] = ()  # the nodes to keep float with it

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "group": list(self.group),
            "distance": self.distance,
            "gain": self.gain,
            "measure": "measured: distance to float with this node float",
        }


def _rel(ref: np.ndarray, out: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return float(np.linalg.norm(r - out)) / max(float(np.linalg.norm(r)), 1e-12)


def distance_to(
    reference: Mapping[str, np.ndarray],
    outputs: Mapping[str, np.ndarray],
    *,
    yolox: bool = False,
) -> float:
    """Mean KL (softmax) for a single classifier output ``[N, C]``; for a YOLOX output
    ``[N, A, 5 + C]`` (``yolox``) the relative L2 error of the box columns plus that of the
    score columns (scores are small next to box offsets: one norm over both would rank nodes
    by their box error only); else the summed relative L2 error of every output. Infinite for
    non-finite outputs."""
    if any(not np.all(np.isfinite(outputs[n])) for n in reference):
        return float("inf")
    if len(reference) == 1:
        ((name, ref),) = reference.items()
        if ref.ndim == 2 and ref.shape[1] > 1:
            return distance.mean_kl(ref, outputs[name])
        if yolox and ref.ndim == 3 and ref.shape[2] > 5:
            out = outputs[name]
            return _rel(ref[..., :4], out[..., :4]) + _rel(ref[..., 4:], out[..., 4:])
    return sum(_rel(ref, outputs[name]) for name, ref in reference.items())


def _float_inputs(prepared: ir.Model) -> dict[str, dict[int, np.ndarray]]:
    """Compute node name -> {input index: float constant} (weights, biases) of the prepared
    float model."""
    out: dict[str, dict[int, np.ndarray]] = {}
    for node in prepared.graph:
        if node.op_type not in COMPUTE_OPS:
            continue
        for i, v in enumerate(node.inputs):
            if v is not None and v.const_value is not None:
                out.setdefault(node.name or "", {})[i] = np.asarray(v.const_value.numpy())
    return out


def _weight_from(value: ir.Value | None) -> bool:
    """A DequantizeLinear output of a constant (a quantized weight or bias)."""
    p = value.producer() if value is not None else None
    if p is None or p.op_type != "DequantizeLinear":
        return False
    src = p.inputs[0]
    return src is not None and (src.const_value is not None or src.producer() is None)


def group_of(qdq: ir.Model, name: str) -> list[str]:
    """``name`` and the nodes producing its quantized activation inputs (through Q/DQ)."""
    node = next(n for n in qdq.graph if n.name == name)
    out = [name]
    for value in node.inputs:
        p = value.producer() if value is not None else None
        if p is None or p.op_type != "DequantizeLinear" or _weight_from(value):
            continue
        src = p.inputs[0]
        q = src.producer() if src is not None else None
        raw = q.inputs[0] if q is not None and q.op_type == "QuantizeLinear" else None
        maker = raw.producer() if raw is not None else None
        if maker is not None and maker.name and maker.name not in out:
            out.append(maker.name)
    return out


_QDQ = frozenset({"QuantizeLinear", "DequantizeLinear"})
TAIL = "(output tail)"


def output_tail(qdq: ir.Model) -> list[str]:
    """The non-compute, non-Q/DQ nodes on the paths from the last compute nodes to the graph
    outputs (walking back through Q/DQ pairs), outputs first."""
    out: list[str] = []
    stack = [v for v in qdq.graph.outputs]
    seen: set[int] = set()
    while stack:
        value = stack.pop()
        node = value.producer()
        if node is None or id(node) in seen or node.op_type in COMPUTE_OPS:
            continue
        seen.add(id(node))
        if node.op_type not in _QDQ:
            out.append(node.name or "")
            ins = [v for v in node.inputs if v is not None and v.const_value is None]
        else:
            ins = [node.inputs[0]] if node.inputs and node.inputs[0] is not None else []
        stack += [v for v in ins if v.producer() is not None]
    return [n for n in out if n]


def floated(
    qdq: ir.Model,
    group: Sequence[str],
    constants: Mapping[str, Mapping[int, np.ndarray]],
    *,
    all_float: bool = False,
) -> ir.Model:
    """A copy of QDQ model ``qdq`` with ``group[0]`` (every group node with ``all_float``) fed
    float inputs — the tensor before each activation's QuantizeLinear — and every group
    node's weights / biases float (``constants``: node name -> {input index: float array})."""
    model = io.from_proto(io.to_proto(qdq))
    by_name = {n.name: n for n in model.graph}
    for k, name in enumerate(group):
        node = by_name.get(name)
        if node is None:
            continue
        consts = constants.get(name, {})
        for i, value in enumerate(list(node.inputs)):
            producer = value.producer() if value is not None else None
            if producer is None or producer.op_type != "DequantizeLinear":
                continue
            src = producer.inputs[0]
            q = src.producer() if src is not None else None
            if q is not None and q.op_type == "QuantizeLinear" and q.inputs[0] is not None:
                if k == 0 or all_float:  # the node itself reads float activations
                    node.replace_input_with(i, q.inputs[0])
            elif i in consts:
                arr = consts[i]
                const = ir.Value(
                    name=f"{name}__float_input{i}",
                    type=ir.TensorType(ir.DataType.from_numpy(arr.dtype)),
                    shape=ir.Shape(arr.shape),
                    const_value=ir.tensor(arr),
                )
                model.graph.register_initializer(const)
                node.replace_input_with(i, const)
    return model


def measured_ranking(
    qdq: ir.Model,
    prepared: ir.Model,
    feeds: Feeds,
    *,
    say: Callable[[str], None] = lambda _: None,
    samples: int = RANKING_SAMPLES,
    yolox: bool = False,
) -> list[NodeSensitivity]:
    """Compute nodes of INT8 model ``qdq`` ranked by measured sensitivity (module docstring),
    most sensitive first; only nodes whose float copy lowers the distance."""
    feeds = first_samples(feeds, samples)
    reference = run_all(prepared, feeds)
    base = distance_to(reference, run_all(qdq, feeds), yolox=yolox)
    consts = _float_inputs(prepared)
    todo = [
        n
        for n in qdq.graph
        if n.op_type in COMPUTE_OPS and compute_precision(n) == "int8" and n.name in consts
    ]
    out = []
    for k, node in enumerate(todo):
        if k % 8 == 0:
            say(f"ranking nodes: measured INT8 sensitivity ({k}/{len(todo)})")
        group = group_of(qdq, node.name or "")
        d = distance_to(reference, run_all(floated(qdq, group, consts), feeds), yolox=yolox)
        out.append(NodeSensitivity(node.name or "", node.op_type, d, base - d, tuple(group)))
    tail = output_tail(qdq)
    if tail:
        say("ranking nodes: the output tail")
        floated_tail = floated(qdq, tail, consts, all_float=True)
        d = distance_to(reference, run_all(floated_tail, feeds), yolox=yolox)
        out.append(NodeSensitivity(TAIL, "tail", d, base - d, tuple(tail)))
    out.sort(key=lambda s: s.gain, reverse=True)
    logger.info(
        "measured INT8 sensitivity: baseline distance %.4g; top %s",
        base,
        [(s.node, round(s.gain, 4)) for s in out[:5]],
    )
    return [s for s in out if s.gain > 0]


def ranked_groups(ranking: Sequence[NodeSensitivity]) -> list[list[str]]:
    """The ranking as back-off groups (each node with the producers of its activations)."""
    return [list(s.group) or [s.node] for s in ranking]
