"""Target profiles: the hardware a model must fit and run fast on.

A :class:`Target` carries what the analysis and the runtime need: peak throughput per precision
(for the roofline projection), memory bandwidth, the memory budget the model must fit in, CPU
cores (for thread and preprocessing-worker counts), the preferred ONNX Runtime execution
providers, the default precision, and a per-dispatch overhead added to every node's time.

Built-ins:

* ``xbox-series-s`` — RDNA 2, 20 CUs @ 1.565 GHz: 20 x 64 lanes x 2 FLOP x 1.565 GHz = 4.0 TFLOPS
  FP32 (Microsoft, Xbox Series S reveal, Sept 2020); packed FP16 doubles it (~8 TFLOPS) and the
  RDNA 2 dot4 INT8 instructions double it again (~16 TOPS) — both derived, not published. Memory
  10 GB GDDR6: 8 GB @ 224 GB/s + 2 GB @ 56 GB/s, about 8 GB available to a game (Microsoft, Hot
  Chips 2020 / Xbox Series S spec sheet). CPU 8 x Zen 2 @ 3.6 GHz (3.4 with SMT).
* ``xbox-series-x`` — RDNA 2, 52 CUs @ 1.825 GHz: 12.15 TFLOPS FP32, 24 FP16, 49 TOPS INT8, 97 INT4
  (Microsoft, Hot Chips 32, 2020). 10 GB @ 560 GB/s + 6 GB @ 336 GB/s, 13.5 GB for a game.
  CPU 8 x Zen 2 @ 3.8 GHz (3.66 with SMT).
* ``cpu`` — this host, detected: usable cores, AVX2 / AVX-512 / VNNI flags from ``/proc/cpuinfo``,
  clock, and RAM; peak = cores x clock x FLOP/cycle (32 FP32 FLOP/cycle with two 256-bit FMA
  pipes or AVX-512; INT8 x4 with VNNI). ``/proc/cpuinfo`` reports the base clock and boost
  clocks beat it: on our EPYC hosts ORT's fused convolutions reached 110-134 % of this figure,
  so read "% of peak" above 100 as boost. Bandwidth is an estimate (20 GB/s per socket-slice).
* ``cuda`` — a generic NVIDIA GPU; when ``nvidia-smi`` answers, the name and memory come from the
  device and known data-center parts use their datasheet figures (H100 SXM: 67 TFLOPS FP32,
  989 dense FP16 tensor, 1979 INT8, 3.35 TB/s — NVIDIA H100 datasheet).

``wave_size`` (32 on the Series consoles: RDNA 2 runs compute in wave32) makes the projection
charge the lanes a wave leaves idle (:mod:`onnxfit.analysis.lanes`).

Custom targets come from a TOML file with the same field names (see :func:`load_target_file`).
"""

from __future__ import annotations

import functools
import os
import platform
import re
import shutil
import subprocess
import tomllib
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from onnxfit.errors import InputError

Precision = Literal["fp32", "fp16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")
GB = 1e9
GIB = 1024**3
TERA = 1e12


@dataclass(frozen=True)
class Target:
    """A hardware profile. Throughputs in FLOP/s (or OP/s), bandwidth in bytes/s, sizes in bytes."""

    name: str
    device_kind: Literal["gpu", "cpu"]
    providers: tuple[str, ...]
    peak_fp32: float
    peak_fp16: float
    peak_int8: float
    memory_bandwidth: float
    memory_budget: int
    cpu_cores: int
    default_precision: Precision
    dispatch_overhead_s: float
    reserved_cores: int = 2
    description: str = ""
    features: tuple[str, ...] = field(default_factory=tuple)
    #: lanes per GPU wave whose idle lanes the projection charges (0: not charged)
    wave_size: int = 0
    #: ``[calibration]`` table written by ``onnxfit calibrate`` (None: an uncalibrated prior)
    calibration: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    @property
    def calibrated(self) -> bool:
        return bool(self.calibration)

    @property
    def projection_label(self) -> str:
        """How far to trust a projected latency on this target, for every table."""
        if self.calibrated:
            return "projected, calibrated on the device"
        return "projected, uncalibrated: a floor"

    def peak(self, precision: str) -> float:
        """Peak throughput for ``precision`` (fp32, fp16 or int8), FLOP/s."""
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
        return float(getattr(self, f"peak_{precision}"))

    @property
    def worker_cores(self) -> int:
        """Cores left for inference threads / preprocessing after the reserved ones (>= 1)."""
        return max(1, self.cpu_cores - self.reserved_cores)

    @property
    def is_gpu(self) -> bool:
        return self.device_kind == "gpu"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["providers"] = list(self.providers)
        d["features"] = list(self.features)
        d["projection"] = self.projection_label
        return d


XBOX_SERIES_S = Target(
    name="xbox-series-s",
    device_kind="gpu",
    providers=("DmlExecutionProvider", "CPUExecutionProvider"),
    peak_fp32=4.0 * TERA,
    peak_fp16=8.0 * TERA,
    peak_int8=16.0 * TERA,
    memory_bandwidth=224 * GB,
    memory_budget=8 * 10**9,
    cpu_cores=8,
    default_precision="fp16",
    # D3D12 dispatch + barrier per DirectML operator: a few microseconds; 10 us is a conservative
    # planning figure (DirectML issues one or more dispatches per ONNX node).
    dispatch_overhead_s=10e-6,
    description="Xbox Series S: RDNA 2, 20 CUs @ 1.565 GHz, 8 GB @ 224 GB/s for a game, DirectML",
    wave_size=32,  # RDNA 2 runs compute natively in wave32 (AMD "RDNA 2" ISA guide)
)

XBOX_SERIES_X = Target(
    name="xbox-series-x",
    device_kind="gpu",
    providers=("DmlExecutionProvider", "CPUExecutionProvider"),
    peak_fp32=12.15 * TERA,
    peak_fp16=24.0 * TERA,
    peak_int8=49.0 * TERA,
    memory_bandwidth=560 * GB,
    memory_budget=int(13.5 * 10**9),
    cpu_cores=8,
    default_precision="fp16",
    dispatch_overhead_s=10e-6,
    description="Xbox Series X: RDNA 2, 52 CUs @ 1.825 GHz, 13.5 GB for a game, DirectML",
    wave_size=32,
)

# Datasheet figures for GPUs that nvidia-smi may report (dense, no sparsity).
_CUDA_PARTS: dict[str, tuple[float, float, float, float]] = {
    # name fragment: (fp32 TFLOPS, fp16 TFLOPS, int8 TOPS, GB/s)
    "H200": (67.0, 989.0, 1979.0, 4800.0),
    "H100": (67.0, 989.0, 1979.0, 3350.0),
    "A100": (19.5, 312.0, 624.0, 2039.0),
    "L4": (30.3, 121.0, 242.0, 300.0),
    "T4": (8.1, 65.0, 130.0, 320.0),
}


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _total_ram() -> int:
    try:
        text = Path("/proc/meminfo").read_text()
        m = re.search(r"MemTotal:\s+(\d+) kB", text)
        if m:
            return int(m.group(1)) * 1024
    except OSError:
        pass
    return 8 * GIB


def cpu_features(cpuinfo: str | None = None) -> tuple[str, ...]:
    """SIMD features relevant to inference found in ``/proc/cpuinfo`` (or the text given)."""
    text = _read_cpuinfo() if cpuinfo is None else cpuinfo
    m = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    flags = set(m.group(1).split()) if m else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return tuple(f for f in wanted if f in flags)


def has_vnni(features: tuple[str, ...]) -> bool:
    return "avx512_vnni" in features or "avx_vnni" in features or "amx_int8" in features


@functools.cache
def detect_cpu() -> Target:
    """The ``cpu`` target for this host (detected once per process)."""
    info = _read_cpuinfo()
    feats = cpu_features(info)
    cores = _usable_cores()
    m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", info, re.MULTILINE)
    ghz = float(m.group(1)) / 1000 if m else 2.5
    flop_per_cycle = 32.0 if ("avx512f" in feats or ("avx2" in feats and "fma" in feats)) else 16.0
    peak32 = cores * ghz * 1e9 * flop_per_cycle
    model = re.search(r"^model name\s*:\s*(.*)$", info, re.MULTILINE)
    name = model.group(1).strip() if model else platform.processor() or "CPU"
    return Target(
        name="cpu",
        device_kind="cpu",
        providers=("CPUExecutionProvider",),
        peak_fp32=peak32,
        peak_fp16=peak32,  # ORT's CPU provider computes fp16 models in fp32
        peak_int8=peak32 * (4.0 if has_vnni(feats) else 2.0),
        memory_bandwidth=20 * GB,
        memory_budget=_total_ram(),
        cpu_cores=cores,
        default_precision="int8" if has_vnni(feats) else "fp32",
        dispatch_overhead_s=2e-6,
        reserved_cores=0,
        description=f"this host: {name}, {cores} cores @ {ghz:.2f} GHz",
        features=feats,
    )


def _query_nvidia_smi() -> tuple[str, int] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, mem = (s.strip() for s in out.splitlines()[0].split(",", 1))
    return name, int(float(mem)) * 1024 * 1024


def cuda_target_for(device: str, *, memory: int | None = None) -> Target:
    """The ``cuda`` target for the NVIDIA GPU named in ``device`` (nvidia-smi's name, or any
    text holding it, e.g. a calibration run's host line): datasheet peaks for a known part
    (``_CUDA_PARTS``), generic mid-range figures otherwise. A calibration fitted on one machine
    is thus read against the peaks of the GPU it was measured on, wherever it is refit."""
    fp32, fp16, int8, bw = 30.0, 120.0, 240.0, 500.0  # a mid-range generic part
    known = False
    for frag, figs in _CUDA_PARTS.items():
        if frag in device:
            fp32, fp16, int8, bw = figs
            known = True
            break
    return Target(
        name="cuda",
        device_kind="gpu",
        providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
        peak_fp32=fp32 * TERA,
        peak_fp16=fp16 * TERA,
        peak_int8=int8 * TERA,
        memory_bandwidth=bw * GB,
        memory_budget=memory if memory is not None else 16 * GIB,
        cpu_cores=_usable_cores(),
        default_precision="fp16",
        dispatch_overhead_s=5e-6,  # CUDA kernel launch, ~5 us without CUDA graphs
        description=device if known or "generic" in device else f"{device}, generic figures",
    )


@functools.cache
def detect_cuda() -> Target:
    """The ``cuda`` target: this machine's NVIDIA GPU if nvidia-smi answers, else a generic one
    (:func:`cuda_target_for`)."""
    found = _query_nvidia_smi()
    if found is None:
        return cuda_target_for("generic NVIDIA GPU (CUDA) — nvidia-smi not found, generic figures")
    name, memory = found
    return cuda_target_for(f"{name} (CUDA)", memory=memory)


BUILTIN = ("xbox-series-s", "xbox-series-x", "cpu", "cuda")


def builtin_targets() -> list[Target]:
    """Every built-in target, in a stable order."""
    return [get_target(n) for n in BUILTIN]


_NUMERIC_FIELDS = {
    "peak_fp32",
    "peak_fp16",
    "peak_int8",
    "memory_bandwidth",
    "dispatch_overhead_s",
}


def load_target_file(path: str | os.PathLike[str]) -> Target:
    """A custom target from a TOML file whose keys are :class:`Target`'s field names.

    ``base = "xbox-series-s"`` starts from a built-in and overrides the keys given. Units as in
    the dataclass (FLOP/s, bytes/s, bytes, seconds); ``*_tflops``, ``memory_bandwidth_gbs`` and
    ``memory_budget_gb`` are accepted as conveniences. A ``[calibration]`` table (written by
    ``onnxfit calibrate``) is kept as is and read by :mod:`onnxfit.analysis.calibrated`.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise InputError(f"{p}: cannot read target file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML ({exc})") from None
    data = dict(data.get("target", data))
    calibration = data.pop("calibration", None)
    if calibration is not None and not isinstance(calibration, dict):
        raise InputError(f"{p}: [calibration] must be a table")
    for prec in PRECISIONS:
        if f"peak_{prec}_tflops" in data:
            data[f"peak_{prec}"] = float(data.pop(f"peak_{prec}_tflops")) * TERA
    if "memory_bandwidth_gbs" in data:
        data["memory_bandwidth"] = float(data.pop("memory_bandwidth_gbs")) * GB
    if "memory_budget_gb" in data:
        data["memory_budget"] = int(float(data.pop("memory_budget_gb")) * 10**9)
    base_name = data.pop("base", None)
    names = {f.name for f in fields(Target)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(
            f"{p}: unknown target field(s) {', '.join(unknown)}",
            hint=f"known fields: {', '.join(sorted(names))}",
        )
    for key in ("providers", "features"):
        if key in data:
            data[key] = tuple(data[key])
    for key in _NUMERIC_FIELDS & set(data):
        data[key] = float(data[key])
    data.setdefault("name", p.stem)
    try:
        if base_name is not None:
            target = replace(get_target(str(base_name)), **data)
        else:
            target = _from_fields(p, data)
    except TypeError as exc:
        raise InputError(f"{p}: bad target definition ({exc})") from None
    if target.default_precision not in PRECISIONS:
        raise InputError(f"{p}: default_precision must be one of {', '.join(PRECISIONS)}")
    if calibration is not None:
        target = replace(target, calibration=calibration)
    return target


def _from_fields(p: Path, data: dict[str, Any]) -> Target:
    missing = sorted(
        f.name
        for f in fields(Target)
        if f.name not in data and f.default is MISSING and f.default_factory is MISSING
    )
    if missing:
        raise InputError(
            f"{p}: missing target field(s) {', '.join(missing)}",
            hint='give them, or start from a built-in with base = "xbox-series-s"',
        )
    return Target(**data)


def get_target(name: str | Target) -> Target:
    """A built-in target by name, or a custom one from a ``.toml`` path.

    An unknown name raises :class:`InputError` listing the known ones.
    """
    if isinstance(name, Target):
        return name
    key = name.strip().lower()
    if key == "xbox-series-s":
        return XBOX_SERIES_S
    if key == "xbox-series-x":
        return XBOX_SERIES_X
    if key == "cpu":
        return detect_cpu()
    if key == "cuda":
        return detect_cuda()
    if name.endswith(".toml"):
        return load_target_file(name)
    raise InputError(
        f"unknown target {name!r}",
        hint=f"known targets: {', '.join(BUILTIN)}, or a path to a .toml target file",
    )
