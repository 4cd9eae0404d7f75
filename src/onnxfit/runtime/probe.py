"""A crash probe: build an ONNX Runtime session for a model in a child process first.

onnxruntime can die on a model rather than raise (the real-model corpus: an FP16 PP-OCR
recogniser segfaults inside ORT's CPU graph optimizations at ``ORT_ENABLE_ALL``). A crash in
this process cannot be caught, so before onnxfit opens a session on a model it produced itself,
:func:`crash_probe` opens one (and runs one sample) in a fresh child: a child killed by a signal
means "this model crashes onnxruntime"; anything else — success, a Python exception, a timeout
— is left to the in-process code, which reports errors as one line.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxfit import atomic

#: The child: open the session as onnxfit's CPU sessions do (all graph optimizations), run once.
_CHILD = """
import sys
import numpy as np
import onnxruntime as ort
ort.set_default_logger_severity(3)
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
with np.load(sys.argv[2]) as feed:
    sess.run(None, {k: feed[k] for k in feed.files})
"""


def crash_probe(
    model: bytes, feed: Mapping[str, np.ndarray], *, timeout_s: float = 600.0
) -> str | None:
    """``"signal 11 (SIGSEGV)"`` when onnxruntime's CPU provider kills a child process that
    opens ``model`` (serialized) and runs ``feed`` once; None otherwise."""
    with atomic.temp_dir("probe") as tmp:
        model_path, feed_path = Path(tmp) / "model.onnx", Path(tmp) / "feed.npz"
        model_path.write_bytes(model)
        arrays: dict[str, Any] = {k: np.asarray(v) for k, v in feed.items()}
        np.savez(feed_path, **arrays)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHILD, str(model_path), str(feed_path)],
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return None
    if proc.returncode >= 0:
        return None
    try:
        name = signal.Signals(-proc.returncode).name
    except ValueError:
        name = "unknown"
    return f"signal {-proc.returncode} ({name})"
