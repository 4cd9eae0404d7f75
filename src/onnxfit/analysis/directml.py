"""DirectML pre-flight: which nodes ONNX Runtime's DirectML provider would not run, and whether
DirectML graph capture is possible.

The facts come from ONNX Runtime's own DirectML operator table,
``onnxruntime/core/providers/dml/DmlExecutionProvider/src/Operators/OperatorRegistration.cpp``,
turned into data by ``tools/gen_dml_ops.py`` (``dml_ops.json`` beside this module; its
``source`` block names the repository and commit read: the fork ``ShirasawaSama/onnxruntime``
at 7e729660b28137da5e28e3309923b1cbb2b07610, the newest copy of the file available here, 404
table rows; the copy of ``microsoft/onnxruntime`` available was older). Rules applied, in order:

1. **Removed before partitioning.** ORT's basic-level optimizations run before the graph is
   split between providers ("Graph optimizations" docs), so nodes they delete never need a
   kernel: ``Constant`` (becomes an initializer), ``Identity`` and ``Dropout`` (the
   EliminateIdentity / EliminateDropout rules), a BatchNormalization with constant parameters
   right after a Conv that feeds only it (ConvBNFusion), and constant folding: a node whose
   inputs are all constants, or a ``Shape`` / ``Size`` of a tensor whose shape is static.
2. **Registered?** A kernel registered at since-version *s* runs a node only when the node's
   schema since-version equals *s* (``KernelRegistry::VerifyKernelDef``), i.e. when the
   model's opset for the node's domain lies in the table's ``[since, until]`` range. An op
   missing from the table, or an opset outside every range, falls back to the CPU.
3. **Data types.** Every input and output bound to a type label the registration lists must
   have one of the listed dtypes (e.g. Conv takes float16/float32 only: a float64 or an int8
   Conv falls back).
4. **Support queries.** A registration with a support-query function is asked again at
   session creation with the node's attributes. Three are re-implemented in ``dml_queries`` from
   their sources (``DmlOperatorPooling.cpp``, ``DmlOperatorBatchNormalization.cpp``,
   ``DmlOperatorResize.cpp``): MaxPool falls back when ``storage_order != 0``;
   BatchNormalization when ``training_mode != 0``, with fewer than 5 inputs, or when
   scale/bias/mean/var dtypes differ from the input's; Resize for ``mode="cubic"``,
   ``exclude_outside != 0`` or ``extrapolation_value != 0``. Nodes of the other queried ops
   (Slice, Pad, Einsum, Attention, ...) are listed as *conditional*, not as fallbacks; so are
   kernels registered outside the table whose versions were not read (STFT, GridSample,
   DeformConv).

Graph capture (``ep.dml.enable_graph_capture``) follows ORT's policy for DirectML, CUDA and
WebGPU (``ALLOW_CPU_FOR_SHAPES`` in ``InferenceSession``): nodes may stay on the CPU only for
shape computation, with no ``Memcpy`` between CPU and GPU. A copy is needed where a tensor
produced on one device is read on the other: a CPU node reading a GPU tensor, a GPU input slot
fed by a CPU node, or a DirectML kernel's CPU-read input (``requiredConstantCpuInputs``: Reshape's
shape, Resize's scales, ...) computed on the GPU. Capture also needs every shape fixed: symbolic
input dims must be pinned (free-dimension overrides) and no op may have a data-dependent output
shape (NonZero, NonMaxSuppression, Loop, If, ...).
"""

from __future__ import annotations

import functools
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import onnx_ir as ir

from onnxfit.analysis.dml_queries import QUERIES
from onnxfit.analysis.shapes import DATA_DEPENDENT_OPS, static_dims

_TABLE = Path(__file__).with_name("dml_ops.json")
_REMOVED = frozenset({"Constant", "Identity", "Dropout"})
_NO_FOLD = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)
_CONTROL_FLOW = frozenset({"If", "Loop", "Scan"})
Status = Literal["cpu", "conditional", "note"]


@functools.cache
def dml_table() -> dict[str, Any]:
    """The generated registration table (``dml_ops.json``), read once."""
    data: dict[str, Any] = json.loads(_TABLE.read_text(encoding="utf-8"))
    by_op: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for reg in data["registrations"]:
        by_op[(reg["domain"], reg["op"])].append(reg)
    data["by_op"] = dict(by_op)
    return data


def _domain(node_domain: str) -> str:
    return "" if node_domain in ("", "ai.onnx") else node_domain


def _opset(model: ir.Model, domain: str) -> int:
    if domain == "":
        return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1)))
    return int(model.opset_imports.get(domain, 1))


@dataclass(frozen=True)
class DmlNodeReport:
    """A node DirectML would not run (``cpu``), might not (``conditional``), or a caveat."""

    name: str
    op_type: str
    domain: str
    opset: int
    status: Status
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DynamicDim:
    """A symbolic (or unknown) dimension of a graph input, and the value it was pinned to."""

    input: str
    axis: int
    symbol: str | None
    pinned: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DmlPreflight:
    """What DirectML would do with a model: fallbacks, copies and the graph-capture verdict."""

    source: dict[str, Any]
    nodes: int
    removed: int
    fallback: tuple[DmlNodeReport, ...]
    conditional: tuple[DmlNodeReport, ...]
    notes: tuple[DmlNodeReport, ...]
    copies: tuple[str, ...]
    dynamic_dims: tuple[DynamicDim, ...]
    data_dependent: tuple[str, ...]
    control_flow: tuple[str, ...]
    capture_blockers: tuple[str, ...] = field(default_factory=tuple)

    @property
    def on_dml(self) -> int:
        """Nodes that get a DirectML kernel (conditional ones counted as on DirectML)."""
        return self.nodes - self.removed - len(self.fallback)

    @property
    def all_on_dml(self) -> bool:
        return not self.fallback

    @property
    def graph_capture(self) -> bool:
        return not self.capture_blockers

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": dict(self.source),
            "nodes": self.nodes,
            "removed_before_partitioning": self.removed,
            "on_dml": self.on_dml,
            "all_on_dml": self.all_on_dml,
            "fallback": [n.to_dict() for n in self.fallback],
            "conditional": [n.to_dict() for n in self.conditional],
            "notes": [n.to_dict() for n in self.notes],
            "copies": list(self.copies),
            "dynamic_dims": [d.to_dict() for d in self.dynamic_dims],
            "pin": {d.symbol or f"{d.input}[{d.axis}]": d.pinned for d in self.dynamic_dims},
            "data_dependent": list(self.data_dependent),
            "control_flow": list(self.control_flow),
            "graph_capture": self.graph_capture,
            "graph_capture_blockers": list(self.capture_blockers),
        }


def _dtype(value: ir.Value) -> str | None:
    return value.dtype.name if value.dtype is not None else None


def _check_types(node: ir.Node, reg: dict[str, Any]) -> str | None:
    """Why ``node``'s dtypes do not fit ``reg`` (None when they do)."""
    types: dict[str, list[str]] = reg["types"]
    for kind, values, labels, variadic in (
        ("input", node.inputs, reg["inputs"], reg["inputs_variadic"]),
        ("output", node.outputs, reg["outputs"], reg["outputs_variadic"]),
    ):
        for i, v in enumerate(values):
            if v is None or not labels or (i >= len(labels) and not variadic):
                continue
            label = labels[min(i, len(labels) - 1)]
            allowed = types.get(label)
            dt = _dtype(v)
            if allowed is None or "*" in allowed or dt is None or dt in allowed:
                continue
            names = ", ".join(a.lower() for a in allowed)
            return f"{kind} {i} ({v.name}) is {dt.lower()}; DirectML's {node.op_type} takes {names}"
    return None


def _ranges(regs: list[dict[str, Any]]) -> str:
    def one(r: dict[str, Any]) -> str:
        if r["until"] is None:
            return f"{r['since']}+"
        return str(r["since"]) if r["since"] == r["until"] else f"{r['since']}-{r['until']}"

    return ", ".join(one(r) for r in sorted(regs, key=lambda r: r["since"]))


def classify_node(
    node: ir.Node, opset: int, table: dict[str, Any] | None = None
) -> tuple[DmlNodeReport | None, dict[str, Any] | None]:
    """(report or None, the matching registration or None) for one node (rules 2-4)."""
    table = table or dml_table()
    domain = _domain(node.domain)
    regs = table["by_op"].get((domain, node.op_type), [])

    def report(status: Status, reason: str) -> DmlNodeReport:
        return DmlNodeReport(str(node.name or ""), node.op_type, domain, opset, status, reason)

    where = f"{domain}::{node.op_type}" if domain else node.op_type
    if not regs:
        return report("cpu", f"{where} is not registered by DirectML"), None
    match = [r for r in regs if r["since"] <= opset and (r["until"] is None or opset <= r["until"])]
    if not match:
        return report(
            "cpu",
            f"DirectML registers {where} for opsets {_ranges(regs)}; the model uses opset {opset}",
        ), None
    reg = match[0]
    why = _check_types(node, reg)
    if why is not None:
        return report("cpu", why), reg
    query = QUERIES.get(reg["query"])
    if query is not None:
        refused = query(node)
        if refused is not None:
            return report("cpu", f"DirectML's {reg['query']} refuses {refused}"), reg
    elif reg["query"]:
        return report("conditional", f"DirectML decides at session creation ({reg['query']})"), reg
    if reg["extra"] and not reg["schema"]:
        return report("conditional", "registered outside the table; version not checked"), reg
    if reg["guard"]:
        return report("note", f"needs a DirectML build with {reg['guard']}"), reg
    return None, reg


def _removed(model: ir.Model) -> tuple[set[ir.Node], set[ir.Value]]:
    """Nodes ORT's basic level removes before partitioning, and the constant values (rule 1)."""
    const: set[ir.Value] = {v for v in model.graph.initializers.values()}
    removed: set[ir.Node] = set()
    for node in model.graph:
        ins = [v for v in node.inputs if v is not None]
        folds = node.op_type not in _NO_FOLD and not any(
            isinstance(a.value, ir.Graph) for a in node.attributes.values()
        )
        if node.op_type == "Constant":
            gone = True
        elif node.op_type in ("Shape", "Size") and ins:
            gone = static_dims(ins[0]) is not None
        elif node.op_type == "Identity":
            gone = True
        elif node.op_type == "Dropout":
            gone = len(node.outputs) < 2 or not node.outputs[1].uses()
        elif node.op_type == "BatchNormalization" and ins:
            conv = ins[0].producer()
            gone = (
                conv is not None
                and conv.op_type == "Conv"
                and len(ins[0].uses()) == 1
                and all(v in const for v in ins[1:])
            )
            if gone:
                removed.add(node)
                continue
        else:
            gone = folds and bool(ins) and all(v in const for v in ins)
        if gone:
            removed.add(node)
            if node.op_type in ("Identity", "Dropout"):
                if ins and ins[0] in const:
                    const.add(node.outputs[0])
            else:
                const.update(node.outputs)
    return removed, const


def _dynamic_dims(original: ir.Model, shaped: ir.Model) -> list[DynamicDim]:
    pinned = {str(v.name): v for v in shaped.graph.inputs}
    out = []
    for v in original.graph.inputs:
        if v.is_initializer() or v.shape is None:
            continue
        for axis, d in enumerate(v.shape.dims):
            if isinstance(d, int):
                continue
            fixed = static_dims(pinned.get(str(v.name)))
            out.append(
                DynamicDim(
                    str(v.name),
                    axis,
                    d.value if isinstance(d, ir.SymbolicDim) else None,
                    fixed[axis] if fixed is not None and axis < len(fixed) else None,
                )
            )
    return out


def directml_preflight(model: ir.Model, *, original: ir.Model | None = None) -> DmlPreflight:
    """The DirectML pre-flight of ``model`` (shape-inferred) — see the module docstring.

    ``original`` (default ``model``) is the model as given, before batch / shape pinning: its
    symbolic input dims are reported as the dims to pin, with the values ``model`` uses.
    Never changes either model.
    """
    table = dml_table()
    removed, const = _removed(model)
    fallback: list[DmlNodeReport] = []
    conditional: list[DmlNodeReport] = []
    notes: list[DmlNodeReport] = []
    on_cpu: set[ir.Node] = set()
    cpu_slots: dict[ir.Node, frozenset[int]] = {}
    for node in model.graph:
        if node in removed:
            continue
        rep, reg = classify_node(node, _opset(model, _domain(node.domain)), table)
        if rep is not None:
            {"cpu": fallback, "conditional": conditional, "note": notes}[rep.status].append(rep)
        if rep is not None and rep.status == "cpu":
            on_cpu.add(node)
        elif reg is not None:
            cpu_slots[node] = frozenset(reg["cpu_inputs"])
    copies = _copies(model, removed, const, on_cpu, cpu_slots)
    dyn = _dynamic_dims(original if original is not None else model, model)
    data_dep = [
        str(n.name or n.op_type)
        for n in model.graph
        if n.op_type in DATA_DEPENDENT_OPS and n not in removed
    ]
    control = [str(n.name or n.op_type) for n in model.graph if n.op_type in _CONTROL_FLOW]
    blockers = []
    if copies:
        blockers.append(
            f"{len(copies)} tensor(s) cross between CPU and GPU (Memcpy nodes), e.g. {copies[0]}"
        )
    unpinned = [d for d in dyn if d.pinned is None]
    if unpinned:
        blockers.append(f"{len(unpinned)} input dim(s) not pinned to a static size")
    if data_dep:
        blockers.append(f"data-dependent output shapes: {', '.join(data_dep[:3])}")
    if control:
        blockers.append(f"control flow: {', '.join(control[:3])}")
    return DmlPreflight(
        source={k: table["source"][k] for k in ("repo", "commit", "path")},
        nodes=len(model.graph),
        removed=len(removed),
        fallback=tuple(fallback),
        conditional=tuple(conditional),
        notes=tuple(notes),
        copies=tuple(copies),
        dynamic_dims=tuple(dyn),
        data_dependent=tuple(data_dep),
        control_flow=tuple(control),
        capture_blockers=tuple(blockers),
    )


def _copies(
    model: ir.Model,
    removed: set[ir.Node],
    const: set[ir.Value],
    on_cpu: set[ir.Node],
    cpu_slots: dict[ir.Node, frozenset[int]],
) -> list[str]:
    """Tensors ORT must copy between host and device (``name: producer -> consumer``)."""
    out: list[str] = []
    for node in model.graph:
        if node in removed:
            continue
        for i, v in enumerate(node.inputs):
            if v is None or v in const or v.is_graph_input():
                continue
            producer = v.producer()
            if producer is None or producer in removed:
                continue
            src_cpu = producer in on_cpu
            dst_cpu = node in on_cpu or i in cpu_slots.get(node, frozenset())
            if src_cpu != dst_cpu:
                side = ("CPU", "GPU") if src_cpu else ("GPU", "CPU")
                out.append(
                    f"{v.name}: {producer.op_type} on {side[0]} -> {node.op_type} on {side[1]}"
                )
    return out
