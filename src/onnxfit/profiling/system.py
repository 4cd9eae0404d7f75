"""What the machine is doing while we measure: memory high-water marks, CPU noise, a description.

* :func:`peak_rss_bytes` / :func:`rss_bytes` — the process's resident-set high-water mark and
  current size, re-exported from :mod:`onnxfit.runtime.memstat` (the one place that reads them).
* :func:`device_memory_bytes` — GPU memory used by a process as ``nvidia-smi
  --query-compute-apps`` reports it (CUDA only; None elsewhere). ORT exposes no per-session
  figure for CUDA or DirectML.
* :func:`noise_probe` — the median time of a small fixed workload (a numpy matmul and a Python
  loop). Timed before and after a measurement, its drift says whether the machine's load
  changed (FINDINGS.md: the second core of our 2-core hosts is often partly taken).
* :class:`CpuMonitor` — the share of the allowed cores that *other* processes used during a
  measurement, from ``/proc/stat`` busy time minus our own processes' CPU time.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit.profiling.stats import percentile
from onnxfit.runtime.memstat import peak_rss_bytes, rss_bytes

__all__ = [
    "CpuMonitor",
    "Noise",
    "allowed_cpus",
    "device_memory_bytes",
    "load_average",
    "machine_description",
    "noise_probe",
    "own_cpu_seconds",
    "peak_rss_bytes",
    "pin_to",
    "rss_bytes",
]


def device_memory_bytes(pid: int | None = None) -> int | None:
    """GPU memory held by ``pid`` (default: this process) per nvidia-smi; None when unknown."""
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    pid = os.getpid() if pid is None else pid
    try:
        out = subprocess.run(
            [exe, "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    total = None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(pid) and parts[1].isdigit():
            total = (total or 0) + int(parts[1]) * 1024 * 1024
    return total


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def pin_to(cpus: list[int]) -> bool:
    """Restrict this process (all its threads created later) to ``cpus``; False if unsupported."""
    try:
        os.sched_setaffinity(0, set(cpus))
    except (AttributeError, OSError):
        return False
    return True


_A = np.random.default_rng(0).standard_normal(1 << 16).astype(np.float32)


def _workload() -> float:
    """~1-2 ms of single-threaded work: numpy elementwise math and a Python loop (no BLAS,
    whose thread pool would start lazily and measure itself)."""
    t0 = time.perf_counter()
    b: np.ndarray = _A
    for _ in range(8):
        b = np.sqrt(np.abs(b) + 1.0) * 0.5
    acc = 0
    for i in range(20000):
        acc += i * i
    return time.perf_counter() - t0


def noise_probe(*, repeats: int = 7) -> float:
    """Median seconds of the fixed workload over ``repeats`` runs (after one warm-up run)."""
    _workload()
    return percentile([_workload() for _ in range(max(1, repeats))], 50)


def _proc_stat() -> tuple[float, float] | None:
    """(busy, total) CPU seconds summed over the allowed CPUs, from /proc/stat."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cpus = set(allowed_cpus())
    busy = total = 0.0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        if int(name[3:]) not in cpus:
            continue
        nums = [int(v) for v in vals[:8]]
        idle = nums[3] + nums[4]  # idle + iowait
        total += sum(nums)
        busy += sum(nums) - idle
    return busy / tick, total / tick


def own_cpu_seconds() -> float:
    """CPU seconds used by this process and its waited-for children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class CpuMonitor:
    """Measures the share of the allowed cores other processes used between start and stop.

    ``stop(own_cpu_s)`` takes the CPU seconds our own processes used in the window (e.g. the
    measured child's, which ``os.times`` does not see until it is waited for).
    """

    def __init__(self) -> None:
        self._start = _proc_stat()
        self._own = own_cpu_seconds()
        self._t0 = time.perf_counter()

    def stop(self, extra_own_cpu_s: float = 0.0) -> float | None:
        end = _proc_stat()
        wall = time.perf_counter() - self._t0
        if self._start is None or end is None or wall <= 0:
            return None
        busy = end[0] - self._start[0]
        own = own_cpu_seconds() - self._own + extra_own_cpu_s
        capacity = wall * len(allowed_cpus())
        return max(0.0, min(1.0, (busy - own) / capacity))


@dataclass(frozen=True)
class Noise:
    """Noise around one measurement: the probe before/after, other processes' CPU share, load."""

    probe_before_s: float
    probe_after_s: float
    other_cpu_share: float | None
    load_average: float | None

    @property
    def drift(self) -> float:
        """Relative change of the probe time, after vs before (0.05 = 5 % slower after)."""
        return self.probe_after_s / self.probe_before_s - 1.0 if self.probe_before_s else 0.0

    @property
    def quiet(self) -> bool:
        """True when the probe moved < 10 % and others used < 25 % of the cores."""
        return abs(self.drift) < 0.10 and (self.other_cpu_share or 0.0) < 0.25

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift"] = self.drift
        d["quiet"] = self.quiet
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Noise:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def machine_description() -> dict[str, Any]:
    """CPU model, cores, RAM, OS, Python, onnxruntime version and providers, GPU if any."""
    import onnxruntime as ort

    from onnxfit.targets import detect_cpu

    cpu = detect_cpu()
    d: dict[str, Any] = {
        "cpu": cpu.description.removeprefix("this host: "),
        "cores_allowed": len(allowed_cpus()),
        "cores_total": os.cpu_count(),
        "cpu_features": list(cpu.features),
        "ram_bytes": cpu.memory_budget,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "providers": list(ort.get_available_providers()),
        "numpy": np.__version__,
    }
    if "CUDAExecutionProvider" in d["providers"]:
        from onnxfit.targets import detect_cuda

        d["gpu"] = detect_cuda().description
    return d
