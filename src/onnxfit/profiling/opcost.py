"""Profiled operators joined with the cost model: achieved FLOP/s and bytes/s vs the roofline.

:func:`join_cost` maps each profiled node back to the nodes of the model the cost model saw. ORT
renames nodes it rewrites: ``relu_nchwc`` (a Conv+BN+Relu fused and converted to NCHWc, named after
the last node fused or its output tensor), ``Conv_0_quant_token_1`` (a QDQ Conv turned into
QLinearConv), ``Mul_43/QuickGeluFusion/``. The suffixes come off one at a time and each form,
longest first, is looked up as a node name, then as an output tensor name, and the match grows
upstream to the node of the kernel's base op type (Conv for FusedConv / QLinearConv / NCHWc Conv),
so a fused kernel is credited with the FLOPs of every node it replaced. Nodes ORT inserted
(``ReorderOutput``, layout ``Transpose``) stay unmatched. For each matched node the table gives
achieved FLOP/s and bytes/s (per call) against the roofline of the device that ran it: attainable =
min(peak, intensity x bandwidth) (Williams et al., CACM 2009), and ``efficiency`` = achieved /
attainable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace

import onnx_ir as ir

from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.targets import Target, get_target

_SUFFIXES = re.compile(r"(_nchwc|_token_\d+|_quant|/[A-Za-z0-9]+Fusion/?|_fused)$")
#: ORT kernel op type -> the ONNX op type of the node that carries its FLOPs
BASE_OP = {
    "FusedConv": "Conv",
    "QLinearConv": "Conv",
    "ConvInteger": "Conv",
    "NhwcFusedConv": "Conv",
    "NhwcConv": "Conv",
    "FusedGemm": "Gemm",
    "FusedMatMul": "MatMul",
    "QLinearMatMul": "MatMul",
    "MatMulInteger": "MatMul",
    "MatMulIntegerToFloat": "MatMul",
    "DynamicQuantizeMatMul": "MatMul",
    "NhwcMaxPool": "MaxPool",
    "QLinearAveragePool": "AveragePool",
    "QLinearGlobalAveragePool": "GlobalAveragePool",
    "QLinearAdd": "Add",
    "QLinearMul": "Mul",
    "QLinearConcat": "Concat",
    "QLinearSigmoid": "Sigmoid",
    "QLinearLeakyRelu": "LeakyRelu",
    "QuickGelu": "Mul",
}
_MAX_FUSED = 6


def name_candidates(name: str) -> list[str]:
    """``name`` and each shorter form as ORT's rewrite suffixes come off, longest first:
    ``Conv_0_quant_token_1`` -> [``Conv_0_quant_token_1``, ``Conv_0_quant``, ``Conv_0``]."""
    out = [name]
    while True:
        shorter = _SUFFIXES.sub("", out[-1])
        if shorter == out[-1] or not shorter:
            return out
        out.append(shorter)


def base_name(name: str) -> str:
    """A profiled node name with ORT's rewrite suffixes (``_nchwc``, ``_token_N``...) removed."""
    return name_candidates(name)[-1]


def match_nodes(op_names: Mapping[str, str], model: ir.Model) -> dict[str, list[ir.Node]]:
    """Profiled node name -> the model nodes it stands for (see the module docstring).

    ``op_names`` maps each profiled node to its ORT op type.
    """
    by_name = {str(n.name): n for n in model.graph if n.name}
    by_output = {str(v.name): n for n in model.graph for v in n.outputs if v.name}
    out: dict[str, list[ir.Node]] = {}
    for name, op_type in op_names.items():
        node = None
        for key in name_candidates(name):  # the longest form that names a node or a tensor
            node = by_name.get(key) or by_output.get(key)
            if node is not None:
                break
        if node is None:
            continue
        base = BASE_OP.get(op_type, op_type)
        group = [node]
        cur = node
        while cur.op_type != base and len(group) < _MAX_FUSED:
            producers = [
                v.producer() for v in cur.inputs if v is not None and v.producer() is not None
            ]
            if len(producers) != 1:
                break
            cur = producers[0]  # type: ignore[assignment]
            group.append(cur)
        if group[-1].op_type != base:
            group = [node]
        out[name] = list(reversed(group))
    return out


def join_cost(profile: OrtProfile, model: ir.Model, *, target: str | Target) -> OrtProfile:
    """``profile`` with cost-model figures on every node that matches ``model``.

    ``model`` must be the model that was profiled, shape-inferred at the profiled batch
    (:func:`onnxfit.analysis.shapes.infer_shapes`); ``target`` is the device that ran it.
    """
    from onnxfit.analysis.cost import node_cost

    tgt = get_target(target)
    groups = match_nodes({o.node: o.op_type for o in profile.ops}, model)
    rows = []
    for o in profile.ops:
        group = groups.get(o.node)
        if not group:
            rows.append(o)
            continue
        costs = [node_cost(n, tgt) for n in group]
        flops = sum(c.flops for c in costs)
        nbytes = (
            costs[0].bytes if len(costs) == 1 else costs[0].bytes_read + costs[-1].bytes_written
        )
        prec = max((c.precision for c in costs), key=lambda p: ("fp32", "fp16", "int8").index(p))
        peak = tgt.peak(prec)
        bw = tgt.memory_bandwidth
        bound = "compute" if flops / peak > nbytes / bw else "memory"
        attainable = min(peak, flops / nbytes * bw) if nbytes else peak
        ach_f = flops / o.mean_s if o.mean_s > 0 else None
        ach_b = nbytes / o.mean_s if o.mean_s > 0 else None
        if ach_f is not None and flops > 0:
            eff: float | None = ach_f / attainable
        elif ach_b is not None:
            eff = ach_b / bw
        else:
            eff = None
        rows.append(
            replace(
                o,
                matched=tuple(str(n.name) for n in group),
                flops=flops,
                bytes=nbytes,
                precision=prec,
                bound=bound,
                achieved_flops_s=ach_f,
                achieved_bytes_s=ach_b,
                attainable_flops_s=attainable,
                efficiency=eff,
            )
        )
    matched = {n for g in groups.values() for n in g}
    missing = [n for n in model.graph if n not in matched and n.op_type not in _FREE]
    notes = list(profile.notes)
    if missing:
        notes.append(
            f"{len(missing)} model nodes have no profiled kernel of their own (fused away or "
            f"constant-folded by ORT), e.g. {', '.join(repr(str(n.name)) for n in missing[:3])}"
        )
    return replace(profile, ops=tuple(rows), roofline_target=tgt.name, notes=tuple(notes))


_FREE = frozenset({"Constant", "Shape", "Identity", "Dropout"})


def device_target(provider: str) -> str:
    """The built-in target describing the device a provider runs on (for the roofline)."""
    return {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "xbox-series-s"}.get(
        provider, "cpu"
    )
