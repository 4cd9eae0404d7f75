"""ONNX Runtime failures become one-line onnxfit errors with a hint; ORT's log stays quiet;
a read-only folder or a full disk is one clean error, with nothing left behind."""

from __future__ import annotations

import errno
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

from onnxfit import atomic, io
from onnxfit.errors import ExecutionError, ModelLoadError, OnnxfitError, OutputError
from onnxfit.runtime.ort_errors import MAX_MESSAGE, ort_failure, ort_log_severity, quiet_ort
from onnxfit.runtime.session import Session

REPO = Path(__file__).resolve().parents[1]
F = TensorProto.FLOAT


def _huge_constant_of_shape(n_warned_inits: int = 0) -> onnx.ModelProto:
    """y = x + ConstantOfShape([2**20, 2**20, 2**10]): loads, then cannot allocate at run time.

    ``n_warned_inits`` extra initializers are also listed as graph inputs (ORT warns per one).
    """
    shape = nh.from_array(np.array([2**20, 2**20, 2**10], np.int64), "shape")
    inits = [shape] + [
        nh.from_array(np.full(1, i, np.float32), f"extra{i}") for i in range(n_warned_inits)
    ]
    nodes = [
        oh.make_node("ConstantOfShape", ["shape"], ["big"], name="huge_cos"),
        oh.make_node("Add", ["x", "big"], ["y"], name="add"),
    ]
    inputs = [oh.make_tensor_value_info("x", F, [1])]
    inputs += [oh.make_tensor_value_info(f"extra{i}", F, [1]) for i in range(n_warned_inits)]
    outputs = [oh.make_tensor_value_info("y", F, None)]
    outputs += [oh.make_tensor_value_info(f"extra{i}", F, [1]) for i in range(n_warned_inits)]
    graph = oh.make_graph(nodes, "g", inputs, outputs, inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _conv_group_mismatch() -> onnx.ModelProto:
    """Conv with group=2 on 3 input channels: valid protobuf, ORT refuses it at run time."""
    w = nh.from_array(np.ones((4, 1, 3, 3), np.float32), "w")
    node = oh.make_node("Conv", ["x", "w"], ["y"], name="conv", group=2, kernel_shape=[3, 3])
    graph = oh.make_graph(
        [node],
        "g",
        [oh.make_tensor_value_info("x", F, [1, 3, 8, 8])],
        [oh.make_tensor_value_info("y", F, None)],
        [w],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def _one_line(err: OnnxfitError) -> None:
    assert "\n" not in err.message
    assert len(err.message) <= MAX_MESSAGE
    assert err.hint


def test_run_failure_is_one_line_with_hint(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_huge_constant_of_shape().SerializeToString())
    with Session(path) as sess, pytest.raises(ExecutionError) as info:
        sess.run({"x": np.ones(1, np.float32)})
    _one_line(info.value)
    assert "ConstantOfShape node 'huge_cos'" in info.value.message
    assert "onnxruntime_src" not in info.value.message  # ORT's source location is dropped
    assert "too large to allocate" in (info.value.hint or "")


def test_conv_group_mismatch(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(_conv_group_mismatch().SerializeToString())
    with pytest.raises((ModelLoadError, ExecutionError)) as info, Session(path) as sess:
        sess.run({"x": np.ones((1, 3, 8, 8), np.float32)})
    _one_line(info.value)
    assert "Conv" in info.value.message
    assert "group" in (info.value.hint or "")


def test_long_messages_are_capped_and_logged_in_full(caplog: pytest.LogCaptureFixture) -> None:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    text = "[ONNXRuntimeError] : 1 : FAIL : " + "type mismatch " * 8000 + "\n" * 900
    with caplog.at_level(logging.DEBUG, logger="onnxfit.runtime.ort_errors"):
        err = ort_failure(state.Fail(text), doing="running the model")
    _one_line(err)
    assert err.message.endswith("…")
    assert any(len(r.getMessage()) > 100_000 for r in caplog.records)


def test_log_severity_follows_verbosity() -> None:
    log = logging.getLogger("onnxfit")
    old = log.level
    try:
        for level, expected in ((logging.WARNING, 4), (logging.INFO, 2), (logging.DEBUG, 1)):
            log.setLevel(level)
            assert ort_log_severity() == expected
    finally:
        log.setLevel(old)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "onnxfit", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
    )


def test_cli_refusal_is_quiet_and_one_line(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(_huge_constant_of_shape(n_warned_inits=40).SerializeToString())
    out = tmp_path / "out.onnx"
    proc = _cli("optimize", str(model), "-o", str(out), "--target", "cpu", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "onnxruntime:" not in proc.stderr  # no ORT warnings ("appears in graph inputs")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(errors[0]) <= 520
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_full_disk_is_one_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "report.json"
    target.write_text("old")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OutputError, match=r"cannot write .*report.json: No space left") as info:
        atomic.write_text(target, json.dumps({"a": 1}))
    assert "disk space" in (info.value.hint or "")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]  # no temp file left


def test_read_only_folder_is_one_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    def read_only(*args: object, **kwargs: object) -> tuple[int, str]:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    model = io.from_proto(_conv_group_mismatch())
    with pytest.raises(OutputError, match=r"Read-only file system") as info:
        io.save(model, tmp_path / "out.onnx")
    assert "folder you can write" in (info.value.hint or "")
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OutputError, match=r"Permission denied"):
            atomic.write_text(folder / "x.json", "{}")
    finally:
        folder.chmod(0o755)


def test_quiet_ort_silences_its_python_tools_unless_verbose() -> None:
    """ORT's quantization tools log a whole traceback at ERROR before raising (scrfd_functions
    printed one around a clean refusal); without -v that stays out of stderr."""
    ours, theirs = logging.getLogger("onnxfit"), logging.getLogger("onnxruntime")
    saved = ours.level, theirs.level
    try:
        ours.setLevel(logging.WARNING)
        quiet_ort()
        assert not logging.getLogger("onnxruntime.quantization.shape_inference").isEnabledFor(
            logging.ERROR
        )
        ours.setLevel(logging.INFO)
        quiet_ort()
        assert theirs.level == logging.NOTSET
    finally:
        ours.setLevel(saved[0])
        theirs.setLevel(saved[1])
