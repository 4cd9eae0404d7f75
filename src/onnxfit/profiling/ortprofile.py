"""onnxruntime's own profiler, parsed into a per-operator table and joined with the cost model.

With ``SessionOptions.enable_profiling`` ORT writes a Chrome-trace JSON: one ``"cat": "Node"``
event named ``<node>_kernel_time`` per node execution (``dur`` in microseconds, ``args.op_name``,
``args.provider``, input/output shapes) and one ``"cat": "Session"`` ``model_run`` event per
``run``. :func:`parse_profile` groups kernel events by the ``model_run`` that contains them,
drops the first ``skip_runs`` runs (warm-up), and sums per node: calls, total and mean time,
share of the summed kernel time.

:func:`join_cost` maps each profiled node back to the nodes of the model the cost model saw.
ORT renames nodes it rewrites: ``relu_nchwc`` (a Conv+BN+Relu fused and converted to NCHWc, named
after the last node fused or its output tensor), ``Conv_0_quant_token_1`` (a QDQ Conv turned into
QLinearConv), ``Mul_43/QuickGeluFusion/``. The suffixes are stripped, the rest is looked up as a
node name, then as an output tensor name, and the match grows upstream to the node of the
kernel's base op type (Conv for FusedConv / QLinearConv / NCHWc Conv), so a fused kernel is
credited with the FLOPs of every node it replaced. Nodes ORT inserted (``ReorderOutput``, layout
``Transpose``) stay unmatched. For each matched node the table gives achieved FLOP/s and bytes/s
(per call) against the roofline of the device that ran it: attainable = min(peak, intensity x
bandwidth) (Williams et al., CACM 2009), and ``efficiency`` = achieved / attainable.

Caveat: on the CUDA and DirectML providers kernel launches are asynchronous, so ``dur`` is host
time to enqueue, not device time; the per-operator split is then only indicative.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.targets import Target, get_target

logger = logging.getLogger(__name__)

_KERNEL = "_kernel_time"
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


@dataclass(frozen=True)
class OpTiming:
    """One profiled node: times per call; cost-model figures when it could be matched."""

    node: str
    op_type: str
    provider: str
    calls: int
    total_s: float
    mean_s: float
    share: float
    input_shapes: tuple[tuple[int, ...], ...] = ()
    output_shapes: tuple[tuple[int, ...], ...] = ()
    matched: tuple[str, ...] = ()
    flops: int | None = None
    bytes: int | None = None
    precision: str | None = None
    bound: str | None = None
    achieved_flops_s: float | None = None
    achieved_bytes_s: float | None = None
    attainable_flops_s: float | None = None
    efficiency: float | None = None

    @property
    def intensity(self) -> float | None:
        if self.flops is None or not self.bytes:
            return None
        return self.flops / self.bytes

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_shapes"] = [list(s) for s in self.input_shapes]
        d["output_shapes"] = [list(s) for s in self.output_shapes]
        d["matched"] = list(self.matched)
        d["intensity"] = self.intensity
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OpTiming:
        d = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        d["input_shapes"] = tuple(tuple(s) for s in d.get("input_shapes", ()))
        d["output_shapes"] = tuple(tuple(s) for s in d.get("output_shapes", ()))
        d["matched"] = tuple(d.get("matched", ()))
        return cls(**d)


@dataclass(frozen=True)
class OrtProfile:
    """A parsed ORT profile: per-node rows (largest total first) and per-run times.

    ``run_s`` are ORT's ``model_run`` durations (inside ORT); ``wall_s`` the times measured
    around ``session.run`` by the caller for the same runs, when known. ``kernel_s`` is the
    summed kernel time of each run.
    """

    ops: tuple[OpTiming, ...]
    run_s: tuple[float, ...]
    kernel_s: tuple[float, ...]
    skipped_runs: int = 0
    session_init_s: float | None = None
    wall_s: tuple[float, ...] = ()
    roofline_target: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def runs(self) -> int:
        return len(self.run_s)

    @staticmethod
    def _mean(xs: Sequence[float]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    @property
    def mean_kernel_s(self) -> float | None:
        return self._mean(self.kernel_s)

    @property
    def mean_run_s(self) -> float | None:
        return self._mean(self.run_s)

    @property
    def mean_wall_s(self) -> float | None:
        return self._mean(self.wall_s)

    @property
    def coverage(self) -> float | None:
        """Summed operator time / measured run time (wall when known, else ORT's model_run)."""
        ref = self.mean_wall_s or self.mean_run_s
        k = self.mean_kernel_s
        return k / ref if ref and k is not None else None

    @property
    def matched_share(self) -> float:
        """Share of the operator time on nodes matched to the cost model."""
        return sum(o.share for o in self.ops if o.matched)

    def by_op_type(self) -> list[dict[str, Any]]:
        """Per op type: nodes, calls, total and mean-per-run time, share; largest first."""
        acc: dict[str, dict[str, Any]] = {}
        runs = max(1, self.runs)
        for o in self.ops:
            row = acc.setdefault(
                o.op_type, {"op_type": o.op_type, "nodes": 0, "calls": 0, "total_s": 0.0}
            )
            row["nodes"] += 1
            row["calls"] += o.calls
            row["total_s"] += o.total_s
        total = sum(r["total_s"] for r in acc.values()) or 1.0
        out = sorted(acc.values(), key=lambda r: -r["total_s"])
        for r in out:
            r["per_run_s"] = r["total_s"] / runs
            r["share"] = r["total_s"] / total
        return out

    def top(self, k: int = 15) -> list[OpTiming]:
        return list(self.ops[: max(0, k)])

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "skipped_runs": self.skipped_runs,
            "session_init_s": self.session_init_s,
            "run_s": list(self.run_s),
            "kernel_s": list(self.kernel_s),
            "wall_s": list(self.wall_s),
            "mean_run_s": self.mean_run_s,
            "mean_kernel_s": self.mean_kernel_s,
            "mean_wall_s": self.mean_wall_s,
            "coverage": self.coverage,
            "matched_share": self.matched_share,
            "roofline_target": self.roofline_target,
            "notes": list(self.notes),
            "by_op_type": self.by_op_type(),
            "ops": [o.to_dict() for o in self.ops],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrtProfile:
        return cls(
            ops=tuple(OpTiming.from_dict(o) for o in data.get("ops", ())),
            run_s=tuple(data.get("run_s", ())),
            kernel_s=tuple(data.get("kernel_s", ())),
            skipped_runs=int(data.get("skipped_runs", 0)),
            session_init_s=data.get("session_init_s"),
            wall_s=tuple(data.get("wall_s", ())),
            roofline_target=data.get("roofline_target"),
            notes=tuple(data.get("notes", ())),
        )


def _shapes(arg: Any) -> tuple[tuple[int, ...], ...]:
    out = []
    for item in arg or ():
        if isinstance(item, Mapping):
            for dims in item.values():
                out.append(tuple(int(d) for d in dims))
    return tuple(out)


def load_events(source: str | os.PathLike[str] | Sequence[Mapping[str, Any]]) -> list[dict]:
    """The trace events of a profile file (a JSON list, or ``{"traceEvents": [...]}``)."""
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise InputError(f"{p}: cannot read the profile ({exc.strerror})") from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: not a JSON profile ({exc.msg}, line {exc.lineno})") from None
    else:
        data = list(source)
    if isinstance(data, Mapping):
        data = data.get("traceEvents", [])
    if not isinstance(data, list):
        raise InputError("an ORT profile is a JSON list of trace events")
    return [dict(e) for e in data if isinstance(e, Mapping)]


def parse_profile(
    source: str | os.PathLike[str] | Sequence[Mapping[str, Any]], *, skip_runs: int = 0
) -> OrtProfile:
    """Parse an ORT profile (path or list of events); drop the first ``skip_runs`` runs."""
    events = load_events(source)
    runs = sorted(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
        key=lambda e: e["ts"],
    )
    if not runs:
        raise InputError(
            "the profile holds no model_run event", hint="run the session at least once"
        )
    if skip_runs >= len(runs):
        raise InputError(f"cannot skip {skip_runs} of the profile's {len(runs)} runs")
    init = next(
        (e for e in events if e.get("cat") == "Session" and e.get("name") == "session_initialization"),
        None,
    )
    kept = runs[skip_runs:]
    spans = [(int(r["ts"]), int(r["ts"]) + int(r["dur"])) for r in kept]
    kernel = [0.0] * len(kept)
    rows: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith(_KERNEL):
            continue
        ts = int(e["ts"])
        idx = next((i for i, (a, b) in enumerate(spans) if a <= ts <= b), None)
        if idx is None:
            continue  # a skipped (warm-up) run, or outside any run
        dur = int(e.get("dur", 0)) / 1e6
        kernel[idx] += dur
        name = str(e["name"])[: -len(_KERNEL)]
        args = e.get("args", {})
        row = rows.get(name)
        if row is None:
            order.append(name)
            row = rows[name] = {
                "op_type": str(args.get("op_name", "?")),
                "provider": str(args.get("provider", "")),
                "calls": 0,
                "total": 0.0,
                "inputs": _shapes(args.get("input_type_shape")),
                "outputs": _shapes(args.get("output_type_shape")),
            }
        row["calls"] += 1
        row["total"] += dur
    grand = sum(r["total"] for r in rows.values()) or 1.0
    ops = [
        OpTiming(
            node=n,
            op_type=r["op_type"],
            provider=r["provider"],
            calls=r["calls"],
            total_s=r["total"],
            mean_s=r["total"] / r["calls"],
            share=r["total"] / grand,
            input_shapes=r["inputs"],
            output_shapes=r["outputs"],
        )
        for n, r in ((n, rows[n]) for n in order)
    ]
    ops.sort(key=lambda o: -o.total_s)
    return OrtProfile(
        ops=tuple(ops),
        run_s=tuple(int(r["dur"]) / 1e6 for r in kept),
        kernel_s=tuple(kernel),
        skipped_runs=skip_runs,
        session_init_s=int(init["dur"]) / 1e6 if init else None,
    )


def base_name(name: str) -> str:
    """A profiled node name with ORT's rewrite suffixes (``_nchwc``, ``_token_N``...) removed."""
    prev = None
    while prev != name:
        prev, name = name, _SUFFIXES.sub("", name)
    return name


def match_nodes(op_names: Mapping[str, str], model: ir.Model) -> dict[str, list[ir.Node]]:
    """Profiled node name -> the model nodes it stands for (see the module docstring).

    ``op_names`` maps each profiled node to its ORT op type.
    """
    by_name = {str(n.name): n for n in model.graph if n.name}
    by_output = {str(v.name): n for n in model.graph for v in n.outputs if v.name}
    out: dict[str, list[ir.Node]] = {}
    for name, op_type in op_names.items():
        key = base_name(name)
        node = by_name.get(name) or by_name.get(key) or by_output.get(key)
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
        nbytes = costs[0].bytes if len(costs) == 1 else costs[0].bytes_read + costs[-1].bytes_written
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
