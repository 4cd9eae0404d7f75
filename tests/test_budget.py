"""Memory budget: sizes, the providers' allocator models, the fit verdict and its exit code."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

from onnxfit import io
from onnxfit.analysis.allocators import (
    bfc_arena_bytes,
    bucket_pool_bytes,
    bucket_size,
    ep_lifetimes,
    no_reuse_bytes,
)
from onnxfit.analysis.budget import EXIT_DOES_NOT_FIT, decide_fit, parse_size
from onnxfit.analysis.offsets import TensorLife
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.cli import main
from onnxfit.errors import InputError
from onnxfit.runtime.arenastat import measure_cpu_arena, parse_arena_log

MIB = 2**20


def _conv_model(channels: int = 16, size: int = 64) -> ir.Model:
    w1 = onnx.numpy_helper.from_array(np.full((channels, 3, 3, 3), 0.1, np.float32), "W1")
    w2 = onnx.numpy_helper.from_array(np.full((channels, channels, 3, 3), 0.1, np.float32), "W2")
    nodes = [
        h.make_node("Conv", ["x", "W1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        h.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        h.make_node("Conv", ["r1", "W2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        h.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        h.make_node("MaxPool", ["a"], ["y"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
    ]
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, ["N", 3, size, size])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        [w1, w2],
    )
    return ir.from_proto(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))


@pytest.mark.parametrize(
    ("text", "expected"),
    [("256MB", 256 * 10**6), ("1.5GiB", int(1.5 * 2**30)), ("300", 300), ("64 kib", 65536)],
)
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["", "12 parsecs", "-5MB", "0"])
def test_parse_size_refuses(bad: str) -> None:
    with pytest.raises(InputError):
        parse_size(bad)


def test_bucket_pool_rounds_and_reuses_per_bucket() -> None:
    assert bucket_size(1) == 65536 and bucket_size(65537) == 131072
    together = [TensorLife("a", 100_000, 0, 1), TensorLife("b", 100_000, 1, 2)]
    apart = [TensorLife("a", 100_000, 0, 0), TensorLife("b", 100_000, 1, 1)]
    assert bucket_pool_bytes(together) == 2 * 131072  # both live at step 1
    assert bucket_pool_bytes(apart) == 131072  # the freed buffer is reused
    # a smaller tensor cannot reuse a larger bucket's buffer
    mixed = [TensorLife("a", 200_000, 0, 0), TensorLife("b", 100_000, 1, 1)]
    assert bucket_pool_bytes(mixed) == 262144 + 131072


def test_bfc_arena_matches_ort_region_growth() -> None:
    # ORT's log for ResNet-18's first run: 3,211,264 B -> a 4 MiB region, taken whole (not
    # split: 4 MiB < 2 x request); then 802,816 B -> another 4 MiB region. Total 8 MiB.
    lives = [TensorLife("conv1", 3_211_264, 0, 1), TensorLife("pool", 802_816, 1, 2)]
    assert bfc_arena_bytes(lives) == 8 * MIB
    # a freed region is reused, and a small request splits a big free chunk
    seq = [TensorLife("a", 3 * MIB, 0, 0), TensorLife("b", 1 * MIB, 1, 2)]
    seq.append(TensorLife("c", 1 * MIB, 2, 3))
    assert bfc_arena_bytes(seq) == 4 * MIB
    assert no_reuse_bytes(seq) == 5 * MIB


def test_verdict_load_and_first_run() -> None:
    m = infer_shapes(_conv_model(), batch=1)
    v = decide_fit(m, target="xbox-series-s")
    assert v.fits and v.provider == "DmlExecutionProvider"
    assert v.load_bytes == 2 * 65536  # two small weights, each in its own 64 KiB page
    assert v.activations_floor_bytes <= v.activations_bytes <= v.activations_naive_bytes + MIB
    assert v.first_run_bytes == v.load_bytes + v.io_bytes + v.activations_bytes
    tight = decide_fit(m, target="xbox-series-s", budget=v.load_bytes + 1)
    assert tight.fits_load and not tight.fits_first_run and tight.fails_at == "first run"
    assert tight.exit_code() == EXIT_DOES_NOT_FIT and tight.exit_code(allow_over_budget=True) == 0
    none = decide_fit(m, target="xbox-series-s", budget=1000)
    assert none.fails_at == "load"
    cpu = decide_fit(m, target="cpu", budget="1GB")
    assert cpu.load_bytes == cpu.weights_bytes and "BFC" in cpu.allocator


def test_cpu_estimate_matches_the_measured_arena(tmp_path: Path) -> None:
    """The BFC simulation against ORT's own log, on a tiny graph (one child process)."""
    path = tmp_path / "conv.onnx"
    io.save(_conv_model(channels=32, size=96), path)
    shaped = infer_shapes(io.load(path), batch=1)
    est = bfc_arena_bytes(ep_lifetimes(shaped, provider="CPUExecutionProvider", qdq=False))
    got = measure_cpu_arena(path, level="basic")
    assert got.first_run_bytes > 0 and got.first_run_bytes == est, got.to_dict()


def test_parse_arena_log() -> None:
    log = "\n".join(
        [
            "[I] Reserving memory in BFCArena for Cpu size: 1000",
            "[I] Session successfully initialized.",
            "[I] Extended allocation by 4194304 bytes.",
            "[I] Total allocated bytes: 4195304",
            "@@onnxfit-run",
        ]
    )
    assert parse_arena_log(log) == (1000, [4195304])


def _inspect(path: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["inspect", str(path), *args])
    return res.exit_code, res.output


def test_inspect_budget_changes_verdict_and_exit_code(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    io.save(_conv_model(), path)
    code, out = _inspect(path, "--json")
    assert code == 0
    verdict = json.loads(out)["fit"]["verdict"]
    assert verdict["fits"] and verdict["budget_source"] == "target xbox-series-s"
    code, out = _inspect(path, "--budget", "200KB", "--top", "0")
    assert code == EXIT_DOES_NOT_FIT and "DOES NOT FIT (at first run)" in out
    code, out = _inspect(path, "--budget", "200KB", "--allow-over-budget", "--json")
    assert code == 0 and json.loads(out)["fit"]["verdict"]["fits_first_run"] is False
    code, out = _inspect(path, "--budget", "lots")
    assert code == 2 and "bad size" in out


def test_optimize_budget_exit_code_and_manifest(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    io.save(_conv_model(), src)
    out = tmp_path / "o.onnx"
    args = ["optimize", str(src), "-o", str(out), "--measure-runs", "0", "--budget", "200KB"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == EXIT_DOES_NOT_FIT, res.output
    assert "DOES NOT FIT" in res.output
    assert not out.exists()  # over budget: the figures are shown, nothing is written
    res = CliRunner().invoke(main, [*args, "--force", "--allow-over-budget"])
    assert res.exit_code == 0, res.output
    deploy = json.loads(out.with_suffix(".deploy.json").read_text())
    assert deploy["memory"]["fits"] is False and deploy["memory"]["budget_bytes"] == 200_000
    assert deploy["directml"]["all_on_dml"] and deploy["directml"]["graph_capture"]
