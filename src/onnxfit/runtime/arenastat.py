"""What ONNX Runtime's CPU arena really allocates: read from ORT's own log, in a child process.

With the default logger at VERBOSE, ORT's ``BFCArena`` logs every region it adds
(``Extending BFCArena for Cpu ... Total allocated bytes: N``) and every reservation
(``Reserving memory in BFCArena for Cpu size: N``). :func:`measure_cpu_arena` runs a model in a
fresh Python process (the log is written by C++ to the process's stderr, and the default
logger's level is process-wide), feeds zeros of the inputs' shapes, and returns the arena total
after session creation and after each run. ``first_run_bytes`` (growth during the first run) is
what :func:`onnxfit.analysis.allocators.bfc_arena_bytes` predicts.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from onnxfit.errors import InputError

_LEVELS = ("disabled", "basic", "extended", "all")
_RUN = "@@onnxfit-run"


@dataclass(frozen=True)
class ArenaReading:
    """CPU arena totals (bytes) read from ORT's log: after session creation, after each run."""

    model: str
    level: str
    mem_pattern: bool
    init_bytes: int
    after_run_bytes: tuple[int, ...]

    @property
    def first_run_bytes(self) -> int:
        """Arena growth during the first run."""
        return self.after_run_bytes[0] - self.init_bytes if self.after_run_bytes else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["after_run_bytes"] = list(self.after_run_bytes)
        d["first_run_bytes"] = self.first_run_bytes
        return d


def parse_arena_log(text: str) -> tuple[int, list[int]]:
    """(total at 'Session successfully initialized', totals at each run marker) from a log."""
    total = 0
    init = 0
    runs: list[int] = []
    for line in text.splitlines():
        m = re.search(r"Total allocated bytes: (\d+)", line)
        if m:
            total = int(m.group(1))
        m = re.search(r"Reserving memory in BFCArena for Cpu size: (\d+)", line)
        if m:
            total += int(m.group(1))
        if "Session successfully initialized" in line:
            init = total
        if line.startswith(_RUN):
            runs.append(total)
    return init, runs


def measure_cpu_arena(
    model_path: str | os.PathLike[str],
    *,
    level: str = "basic",
    mem_pattern: bool = False,
    runs: int = 1,
    timeout_s: float = 300.0,
) -> ArenaReading:
    """Run ``model_path`` on ORT's CPU provider in a child process and read its arena log.

    ``level`` is the graph optimization level (basic keeps the graph closest to the ONNX one);
    symbolic input dims are fed as 1. Raises :class:`InputError` when the child fails.
    """
    if level not in _LEVELS:
        raise InputError(f"unknown level {level!r}", hint=f"use one of {', '.join(_LEVELS)}")
    path = Path(model_path)
    cmd = [sys.executable, "-m", "onnxfit.runtime.arenastat", str(path), level]
    cmd += ["1" if mem_pattern else "0", str(runs)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise InputError(f"{path}: the ORT child process failed: {tail[0]}")
    init, totals = parse_arena_log(proc.stderr)
    return ArenaReading(str(path), level, mem_pattern, init, tuple(totals))


def _child(argv: list[str]) -> None:
    import numpy as np
    import onnxruntime as ort

    path, level, pattern, runs = argv[0], argv[1], argv[2] == "1", int(argv[3])
    ort.set_default_logger_severity(0)
    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    so.enable_mem_pattern = pattern
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    dtypes: dict[str, Any] = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
    dtypes.update({"tensor(int64)": np.int64, "tensor(int32)": np.int32})
    dtypes.update({"tensor(uint8)": np.uint8, "tensor(int8)": np.int8, "tensor(bool)": np.bool_})
    feeds = {
        i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], dtypes[i.type])
        for i in sess.get_inputs()
    }
    for _ in range(runs):
        sess.run(None, feeds)
        sys.stderr.write(_RUN + "\n")
        sys.stderr.flush()


if __name__ == "__main__":
    _child(sys.argv[1:])
