"""Result types of ``bench``: :class:`Static` (what the analysis says), :class:`BatchResult`
(one batch size measured) and :class:`BenchResult` (all of them, with how they were measured).

All times are seconds and sizes bytes; ``to_dict`` gives JSON-ready dicts holding every figure
the tables show (and the raw samples), ``from_dict`` reads them back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from onnxfit.profiling.ortprofile import OrtProfile
from onnxfit.profiling.stats import Summary
from onnxfit.profiling.system import Noise


@dataclass(frozen=True)
class Static:
    """What the analysis says about a model at one batch size (None where it could not tell)."""

    arena_bytes: int | None = None
    lower_bound_bytes: int | None = None
    weights_bytes: int | None = None
    runtime_bytes: int | None = None  # weights + arena + inputs/outputs
    projected_s: float | None = None
    flops: int | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Measured:
    """Figures derived from one measurement (shared by :class:`BatchResult` and
    :class:`onnxfit.profiling.compare.ModelStats`); the dataclass declares the fields."""

    batch: int
    latency: Summary
    peak_rss: int
    rss_baseline: int | None

    @property
    def throughput(self) -> float:
        """Items per second: batch / mean latency."""
        return self.batch / self.latency.mean if self.latency.mean > 0 else 0.0

    @property
    def rss_delta(self) -> int | None:
        """Peak RSS minus the RSS before the session was created (what the model added)."""
        return self.peak_rss - self.rss_baseline if self.rss_baseline is not None else None


@dataclass(frozen=True)
class BatchResult(Measured):
    """One batch size's measurement (times in seconds, sizes in bytes)."""

    batch: int
    provider: str
    threads: int | None
    session_s: float
    first_s: float
    warmup: int
    latency: Summary
    samples: tuple[float, ...]
    peak_rss: int
    rss_baseline: int | None
    device_bytes: int | None
    static: Static
    noise: Noise | None
    pid: int
    isolated: bool
    gpu_latency: Summary | None = None
    profile: OrtProfile | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    pinned_cpus: tuple[int, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "provider": self.provider,
            "threads": self.threads,
            "session_s": self.session_s,
            "first_s": self.first_s,
            "warmup": self.warmup,
            "iterations": self.latency.count,
            "latency": self.latency.to_dict(),
            "throughput": self.throughput,
            "gpu_latency": self.gpu_latency.to_dict() if self.gpu_latency else None,
            "peak_rss": self.peak_rss,
            "rss_baseline": self.rss_baseline,
            "rss_delta": self.rss_delta,
            "device_bytes": self.device_bytes,
            "static": self.static.to_dict(),
            "noise": self.noise.to_dict() if self.noise else None,
            "pid": self.pid,
            "isolated": self.isolated,
            "pinned_cpus": list(self.pinned_cpus) if self.pinned_cpus else None,
            "settings": self.settings,
            "samples": list(self.samples),
            "profile": self.profile.to_dict() if self.profile else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BatchResult:
        return cls(
            batch=d["batch"],
            provider=d["provider"],
            threads=d.get("threads"),
            session_s=d["session_s"],
            first_s=d["first_s"],
            warmup=d.get("warmup", 0),
            latency=Summary.from_dict(d["latency"]),
            samples=tuple(d.get("samples", ())),
            peak_rss=d["peak_rss"],
            rss_baseline=d.get("rss_baseline"),
            device_bytes=d.get("device_bytes"),
            static=Static(**d.get("static", {})),
            noise=Noise.from_dict(d["noise"]) if d.get("noise") else None,
            pid=d.get("pid", 0),
            isolated=d.get("isolated", True),
            gpu_latency=Summary.from_dict(d["gpu_latency"]) if d.get("gpu_latency") else None,
            profile=OrtProfile.from_dict(d["profile"]) if d.get("profile") else None,
            settings=d.get("settings", {}),
            pinned_cpus=tuple(d["pinned_cpus"]) if d.get("pinned_cpus") else None,
        )


@dataclass(frozen=True)
class BenchResult:
    """Every batch size's :class:`BatchResult` for one model, and how it was measured."""

    model: str
    file_bytes: int
    parameters: int
    target: str
    runtime: str
    batches: tuple[BatchResult, ...]
    machine: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    projection: str = ""  # Target.projection_label: how far to trust the projected column

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "file_bytes": self.file_bytes,
            "parameters": self.parameters,
            "target": self.target,
            "projection": self.projection,
            "runtime": self.runtime,
            "options": self.options,
            "machine": self.machine,
            "notes": list(self.notes),
            "batches": [b.to_dict() for b in self.batches],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchResult:
        return cls(
            model=d["model"],
            file_bytes=d["file_bytes"],
            parameters=d["parameters"],
            target=d["target"],
            runtime=d.get("runtime", "onnxfit"),
            batches=tuple(BatchResult.from_dict(b) for b in d["batches"]),
            machine=d.get("machine", {}),
            options=d.get("options", {}),
            notes=tuple(d.get("notes", ())),
            projection=d.get("projection", ""),
        )
