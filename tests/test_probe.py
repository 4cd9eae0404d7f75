"""The crash probe: a model that kills onnxruntime is refused in one line, not a dead process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnxfit import io
from onnxfit.errors import VerificationError
from onnxfit.optimizer import optimize, sidecar_paths
from onnxfit.runtime import probe
from test_optimize import FAST, tiny_classifier


def test_probe_passes_a_sound_model_and_names_the_signal_of_a_crash(tmp_path, monkeypatch):
    src = tiny_classifier(tmp_path / "m.onnx")
    feed = {"input": np.zeros((1, 3, 32, 32), np.float32)}
    model = io.to_bytes(io.load(src))
    name = io.load(src).graph.inputs[0].name
    assert probe.crash_probe(model, {name: feed["input"]}) is None
    monkeypatch.setattr(probe, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    assert probe.crash_probe(model, {name: feed["input"]}) == "signal 11 (SIGSEGV)"
    monkeypatch.setattr(probe, "_CHILD", "raise SystemExit(1)")  # an error, not a crash
    assert probe.crash_probe(model, {name: feed["input"]}) is None


def test_optimize_refuses_a_result_that_crashes_onnxruntime(tmp_path, monkeypatch):
    src = tiny_classifier(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    monkeypatch.setattr(probe, "_CHILD", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(VerificationError, match=r"onnxruntime itself crashed \(signal 11"):
        optimize(src, out, target="cpu", precision="fp16", **FAST)
    assert not any(p.exists() for p in (out, *sidecar_paths(out)))
    assert Path(src).exists()
