"""onnxruntime's own profiler, parsed into a per-operator table and joined with the cost model.

With ``SessionOptions.enable_profiling`` ORT writes a Chrome-trace JSON: one ``"cat": "Node"``
event named ``<node>_kernel_time`` per node execution (``dur`` in microseconds, ``args.op_name``,
``args.provider``, input/output shapes) and one ``"cat": "Session"`` ``model_run`` event per
``run``. :func:`parse_profile` groups kernel events by the ``model_run`` that contains them,
drops the first ``skip_runs`` runs (warm-up), and sums per node: calls, total and mean time,
share of the summed kernel time.

:func:`onnxfit.profiling.opcost.join_cost` adds the cost model's figures to every row.

Caveat: on the CUDA and DirectML providers kernel launches are asynchronous, so ``dur`` is host
time to enqueue, not device time; the per-operator split is then only indicative.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from onnxfit.errors import InputError

logger = logging.getLogger(__name__)

_KERNEL = "_kernel_time"


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
        (
            e
            for e in events
            if e.get("cat") == "Session" and e.get("name") == "session_initialization"
        ),
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
