"""The result of ``compare``: each model's figures (:class:`ModelStats`) and the comparison
(:class:`CompareResult`, ratios against the first model; layer error tables)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxfit.profiling.bench import Static
from onnxfit.profiling.results import Measured
from onnxfit.profiling.stats import Summary
from onnxfit.profiling.system import Noise
from onnxfit.verify.evaluator import Accuracy

__all__ = ["CompareResult", "ModelStats"]


@dataclass(frozen=True)
class ModelStats(Measured):
    """One model's figures in a comparison (seconds, bytes)."""

    name: str
    path: str
    runtime: str
    file_bytes: int
    parameters: int
    static: Static
    provider: str
    threads: int | None
    session_s: float
    first_s: float
    latency: Summary
    samples: tuple[float, ...]
    peak_rss: int
    rss_baseline: int | None
    device_bytes: int | None
    pid: int
    batch: int
    accuracy: Accuracy | None = None
    gpu_latency: Summary | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": self.path,
            "runtime": self.runtime,
            "file_bytes": self.file_bytes,
            "parameters": self.parameters,
            "static": self.static.to_dict(),
            "provider": self.provider,
            "threads": self.threads,
            "session_s": self.session_s,
            "first_s": self.first_s,
            "latency": self.latency.to_dict(),
            "throughput": self.throughput,
            "gpu_latency": self.gpu_latency.to_dict() if self.gpu_latency else None,
            "peak_rss": self.peak_rss,
            "rss_baseline": self.rss_baseline,
            "rss_delta": self.rss_delta,
            "device_bytes": self.device_bytes,
            "pid": self.pid,
            "batch": self.batch,
            "accuracy": self.accuracy.to_dict() if self.accuracy else None,
            "samples": list(self.samples),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelStats:
        return cls(
            name=d["name"],
            path=d["path"],
            runtime=d.get("runtime", "onnxfit"),
            file_bytes=d["file_bytes"],
            parameters=d["parameters"],
            static=Static(**d.get("static", {})),
            provider=d["provider"],
            threads=d.get("threads"),
            session_s=d["session_s"],
            first_s=d["first_s"],
            latency=Summary.from_dict(d["latency"]),
            samples=tuple(d.get("samples", ())),
            peak_rss=d["peak_rss"],
            rss_baseline=d.get("rss_baseline"),
            device_bytes=d.get("device_bytes"),
            pid=d.get("pid", 0),
            batch=d.get("batch", 1),
            accuracy=Accuracy.from_dict(d["accuracy"]) if d.get("accuracy") else None,
            gpu_latency=Summary.from_dict(d["gpu_latency"]) if d.get("gpu_latency") else None,
        )


def _ratio(first: float | None, this: float | None) -> float | None:
    if not first or not this:
        return None
    return first / this


@dataclass(frozen=True)
class CompareResult:
    """Models measured together; :meth:`ratios` against the first."""

    models: tuple[ModelStats, ...]
    target: str
    batch: int
    warmup: int
    rounds: int
    per_round: int
    schedule: tuple[int, ...]
    isolated: bool
    noise: Noise | None = None
    machine: dict[str, Any] = field(default_factory=dict)
    eval_data: str | None = None
    notes: tuple[str, ...] = ()
    projection: str = ""  # Target.projection_label: how far to trust the projected column
    layer_errors: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def ratios(self) -> list[dict[str, float | None]]:
        """Per model, improvement factors vs the first (see the module docstring)."""
        a = self.models[0]
        out = []
        for m in self.models:
            acc = None
            if a.accuracy is not None and m.accuracy is not None:
                key, base = a.accuracy.headline
                acc = 100.0 * (m.accuracy.metrics.get(key, 0.0) - base)
            out.append(
                {
                    "file_size": _ratio(a.file_bytes, m.file_bytes),
                    "parameters": _ratio(a.parameters, m.parameters),
                    "arena": _ratio(a.static.arena_bytes, m.static.arena_bytes),
                    "runtime_memory": _ratio(a.static.runtime_bytes, m.static.runtime_bytes),
                    "weights": _ratio(a.static.weights_bytes, m.static.weights_bytes),
                    "peak_rss": _ratio(a.peak_rss, m.peak_rss),
                    "rss_delta": _ratio(a.rss_delta, m.rss_delta),
                    "latency": _ratio(a.latency.median, m.latency.median),
                    "throughput": _ratio(m.throughput, a.throughput),
                    "projected": _ratio(a.static.projected_s, m.static.projected_s),
                    "accuracy_pts": acc,
                }
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "batch": self.batch,
            "warmup": self.warmup,
            "rounds": self.rounds,
            "per_round": self.per_round,
            "schedule": list(self.schedule),
            "isolated": self.isolated,
            "noise": self.noise.to_dict() if self.noise else None,
            "machine": self.machine,
            "eval_data": self.eval_data,
            "notes": list(self.notes),
            "projection": self.projection,
            "models": [m.to_dict() for m in self.models],
            "ratios": self.ratios(),
            "layer_errors": {k: list(v) for k, v in self.layer_errors.items()},
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompareResult:
        return cls(
            models=tuple(ModelStats.from_dict(m) for m in d["models"]),
            target=d["target"],
            batch=d["batch"],
            warmup=d.get("warmup", 0),
            rounds=d["rounds"],
            per_round=d["per_round"],
            schedule=tuple(d.get("schedule", ())),
            isolated=d.get("isolated", True),
            noise=Noise.from_dict(d["noise"]) if d.get("noise") else None,
            machine=d.get("machine", {}),
            eval_data=d.get("eval_data"),
            notes=tuple(d.get("notes", ())),
            projection=d.get("projection", ""),
            layer_errors={k: list(v) for k, v in d.get("layer_errors", {}).items()},
        )
