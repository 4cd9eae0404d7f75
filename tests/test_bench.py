"""Tests for onnxfit.profiling.bench / worker and the ``onnxfit bench`` command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.cli import main
from onnxfit.data.feeds import free_dims_for, make_feeds
from onnxfit.errors import InputError, ModelLoadError
from onnxfit.profiling.bench import BenchResult, bench, parse_batches, pin_cpus
from onnxfit.profiling.client import LocalWorker, SubprocessWorker


def _tiny(batch_dim: str | int = "batch") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu0"),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch_dim, 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch_dim, 4, 16, 16])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def tiny_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.onnx"
    io.save(_tiny(), path)
    return path


def test_parse_batches() -> None:
    assert parse_batches("1,8,32") == (1, 8, 32)
    assert parse_batches(" 4 , 4,2") == (4, 2)
    assert parse_batches([1, 2]) == (1, 2)
    for bad in ("0", "x", "1,,2", "-1", "", "1.5"):
        with pytest.raises(InputError, match=r"bad batch size|no batch"):
            parse_batches(bad)


def test_make_feeds_and_free_dims() -> None:
    spec = SimpleNamespace(name="x", shape=("N", 3, 8, 8), dtype=np.float32)
    feeds = make_feeds([spec], batch=5, seed=1)
    assert feeds["x"].shape == (5, 3, 8, 8) and feeds["x"].dtype == np.float32
    assert np.array_equal(feeds["x"], make_feeds([spec], batch=5, seed=1)["x"])  # seeded
    assert free_dims_for([spec], 5, None) == {"N": 5}
    fixed = SimpleNamespace(name="x", shape=(1, 3, 8, 8), dtype=np.float32)
    with pytest.raises(InputError, match="fixed batch of 1"):
        make_feeds([fixed], batch=8)
    odd = SimpleNamespace(name="ids", shape=("N", "seq"), dtype=np.int64)
    with pytest.raises(InputError, match="unknown dimension 1") as err:
        make_feeds([odd], batch=2)
    assert "--input-shape ids=" in str(err.value.hint)
    got = make_feeds([odd], batch=2, input_shapes={"ids": [2, 7]})
    assert got["ids"].shape == (2, 7) and got["ids"].dtype == np.int64
    assert free_dims_for([odd], 2, {"ids": [2, 7]}) == {"N": 2, "seq": 7}


def test_pin_cpus_never_exceeds_allowed() -> None:
    from onnxfit.profiling.system import allowed_cpus

    cpus = allowed_cpus()
    assert pin_cpus(None) is None and pin_cpus(len(cpus) + 3) is None
    if len(cpus) > 1:
        assert pin_cpus(1) == cpus[-1:]


def test_bench_in_process(tiny_path: Path) -> None:
    res = bench(
        tiny_path,
        target="cpu",
        batches=[1, 3],
        warmup=2,
        iterations=12,
        isolated=False,
        profile=True,
        profile_runs=5,
        noise=False,
    )
    assert [b.batch for b in res.batches] == [1, 3]
    for b in res.batches:
        assert b.pid == os.getpid() and not b.isolated
        assert b.latency.count == 12 and len(b.samples) == 12
        assert b.latency.min <= b.latency.median <= b.latency.p90 <= b.latency.max
        assert b.throughput == pytest.approx(b.batch / b.latency.mean)
        assert b.peak_rss > 0 and b.session_s > 0 and b.first_s > 0
        # static figures from the memory plan and the cost model
        assert b.static.arena_bytes and b.static.arena_bytes >= b.batch * 4 * 16 * 16 * 4
        assert b.static.projected_s and b.static.projected_s > 0
        assert b.profile is not None and b.profile.runs == 5 and b.profile.roofline_target == "cpu"
        assert b.profile.coverage is not None and 0 < b.profile.coverage <= 1.05
    assert res.parameters == 4 * 3 * 3 * 3
    d = json.loads(json.dumps(res.to_dict()))
    again = BenchResult.from_dict(d)
    assert again.batches[1].latency == res.batches[1].latency
    assert again.batches[1].profile is not None
    for key in ("session_s", "first_s", "latency", "throughput", "peak_rss", "static", "noise"):
        assert key in d["batches"][0]


def test_bench_duration_mode(tiny_path: Path) -> None:
    res = bench(tiny_path, duration=0.05, warmup=0, isolated=False, noise=False)
    assert res.batches[0].latency.count >= 10  # at least MIN_ITERATIONS


@pytest.mark.slow
def test_bench_subprocess_isolation(tiny_path: Path) -> None:
    res = bench(tiny_path, target="cpu", batches=[1, 2], warmup=1, iterations=5, noise=True)
    pids = {b.pid for b in res.batches}
    assert os.getpid() not in pids and len(pids) == 2  # a fresh child per batch size
    assert all(b.isolated for b in res.batches)
    b = res.batches[0]
    assert b.rss_baseline is not None and b.peak_rss >= b.rss_baseline
    assert b.noise is not None and b.noise.probe_before_s > 0


@pytest.mark.slow
def test_subprocess_worker_is_another_process_and_maps_errors(tmp_path: Path) -> None:
    with SubprocessWorker(timeout=120) as w:
        assert w.call("ping")["pid"] == w.pid != os.getpid()
        with pytest.raises(ModelLoadError, match="no such file"):
            w.call("load", model=str(tmp_path / "missing.onnx"))
        with pytest.raises(InputError, match="unknown worker command"):
            w.call("nope")
        assert w.call("ping")["pid"] == w.pid  # still alive after errors


def test_local_worker_run_counts(tiny_path: Path) -> None:
    with LocalWorker() as w:
        info = w.call("load", model=str(tiny_path), batch=2, runtime="ort")
        assert info["provider"] == "CPUExecutionProvider" and info["inputs"] == {
            "x": [2, 3, 16, 16]
        }
        assert len(w.call("run", iterations=7)["times"]) == 7
        with pytest.raises(InputError, match="unknown runtime"):
            w.call("load", model=str(tiny_path), runtime="tvm")


def test_bench_fixed_batch_model_rejects_other_batches(tmp_path: Path) -> None:
    path = tmp_path / "fixed.onnx"
    io.save(_tiny(batch_dim=1), path)
    with pytest.raises(InputError, match="fixed batch of 1"):
        bench(path, batches=[4], iterations=3, isolated=False, noise=False)


# ------------------------------------------------------------------------------- CLI


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ")
    assert len(lines) <= 2 and all(ln.startswith(("error:", "hint:")) for ln in lines)
    return lines[0]


@pytest.mark.parametrize("batch", ["0", "x", "1,0", "-3"])
def test_cli_bench_bad_batch(tiny_path: Path, batch: str) -> None:
    out = CliRunner().invoke(main, ["bench", str(tiny_path), "--batch", batch])
    assert "bad batch size" in _one_line_error(out)


def test_cli_bench_bad_inputs(tmp_path: Path, tiny_path: Path) -> None:
    runner = CliRunner()
    assert "no such file" in _one_line_error(
        runner.invoke(main, ["bench", str(tmp_path / "m.onnx")])
    )
    assert "--iterations" in _one_line_error(
        runner.invoke(main, ["bench", str(tiny_path), "-n", "0"])
    )
    both = runner.invoke(main, ["bench", str(tiny_path), "-n", "5", "--duration", "1"])
    assert "not both" in _one_line_error(both)
    plot = runner.invoke(main, ["bench", str(tiny_path), "--plot", str(tmp_path / "x.txt")])
    assert "cannot write a plot" in _one_line_error(plot)
    html = runner.invoke(main, ["bench", str(tiny_path), "--html", str(tmp_path / "no" / "x.html")])
    assert "does not exist" in _one_line_error(html)
    assert not (tmp_path / "x.txt").exists()


def test_cli_bench_json_and_files(tmp_path: Path, tiny_path: Path) -> None:
    plot, page = tmp_path / "b.png", tmp_path / "b.html"
    out = CliRunner().invoke(
        main,
        [
            "bench",
            str(tiny_path),
            "--target",
            "cpu",
            "-b",
            "1,2",
            "-n",
            "8",
            "--warmup",
            "1",
            "--in-process",
            "--profile",
            "--profile-runs",
            "3",
            "--json",
            "--plot",
            str(plot),
            "--html",
            str(page),
        ],
    )
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert [b["batch"] for b in data["batches"]] == [1, 2]
    assert data["batches"][0]["latency"]["count"] == 8
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "b-ops-b1.png").is_file() and (tmp_path / "b-memory.png").is_file()
    text = page.read_text()
    assert "<table>" in text and 'src="data:image/png;base64,' in text


def test_cli_bench_table(tiny_path: Path) -> None:
    out = CliRunner().invoke(
        main, ["bench", str(tiny_path), "--target", "cpu", "-n", "5", "--in-process"]
    )
    assert out.exit_code == 0, out.output
    assert "median" in out.stdout and "memory and projection" in out.stdout
