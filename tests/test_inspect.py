"""`inspect()` and `onnxfit inspect`: figures on the zoo, real and random models; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxfit
from onnxfit import io, zoo
from onnxfit.analysis.inspect import InspectResult, inspect
from onnxfit.cli import main
from onnxfit.errors import InputError
from onnxfit.report.inspect import render_inspect, to_markdown

F = TensorProto.FLOAT


@pytest.fixture(scope="module")
def resnet_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("zoo") / "resnet18.onnx"
    io.save(zoo.resnet18(), path)
    return path


def _run(*args: str | Path) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["inspect", *(str(a) for a in args)])
    return res.exit_code, res.output


def test_api_is_exported() -> None:
    assert onnxfit.inspect is inspect and onnxfit.InspectResult is InspectResult


def test_resnet18_figures(resnet_file: Path) -> None:
    r = inspect(resnet_file, target="xbox-series-s")
    assert r.params == 11_689_512
    assert r.flops == pytest.approx(3.6e9, rel=0.02)
    assert r.macs == pytest.approx(1.82e9, rel=0.02)
    assert r.file_size is not None and r.file_size.bytes == resnet_file.stat().st_size
    assert r.weight_bytes == pytest.approx(11_689_512 * 4, rel=0.002)  # + BN running stats
    assert r.op_histogram["Conv"] == 20 and r.num_nodes == 69
    assert r.memory.arena_bytes <= 1.02 * r.memory.lower_bound_bytes
    assert r.runtime_bytes == r.weight_bytes + r.memory.arena_bytes + r.io_bytes
    assert r.fits and r.headroom_bytes == r.budget_bytes - r.first_run_bytes
    assert r.verdict is not None and r.first_run_bytes >= r.runtime_bytes
    assert r.headroom_pct == pytest.approx(100 * r.headroom_bytes / r.budget_bytes)
    assert r.latency_s == pytest.approx(r.cost.time_s) and r.latency_s > 0
    # fp32 model on an fp16-default target: the fp16 what-if is faster
    assert r.default_precision_latency_s is not None
    assert r.default_precision_latency_s < r.latency_s
    d = json.loads(json.dumps(r.to_dict()))
    assert d["params"] == 11_689_512 and d["fit"]["fits"] is True
    assert d["inputs"][0]["shape"] == ["batch", 3, 224, 224]


def test_yolov3_tiny_figures_and_batch() -> None:
    yolo = zoo.yolov3_tiny()
    r = inspect(yolo, target="xbox-series-s")
    assert r.flops == pytest.approx(5.6e9, rel=0.03)
    assert r.params == pytest.approx(8.86e6, rel=0.01)
    assert r.file_size is None
    r2 = inspect(yolo, batch=2)
    assert r2.macs == 2 * r.macs and r2.memory.arena_bytes > r.memory.arena_bytes


def test_does_not_fit_on_a_small_target(resnet_file: Path, tmp_path: Path) -> None:
    small = tmp_path / "tiny.toml"
    small.write_text('base = "xbox-series-s"\nname = "tiny"\nmemory_budget = 10000000\n')
    r = inspect(resnet_file, target=str(small))
    assert not r.fits and r.headroom_bytes < 0
    code, out = _run(resnet_file, "--target", small)
    assert code == 3 and "DOES NOT FIT" in out and "would need" in out
    code, out = _run(resnet_file, "--target", small, "--allow-over-budget", "--json")
    assert code == 0
    fit = json.loads(out)["fit"]
    assert fit["fits"] is False and fit["precision"] == "fp32"
    # the projection: float weights and arena at 2 / 1 bytes per element, IO unchanged
    arena, io_b, w = fit["arena_bytes"], fit["io_bytes"], fit["weights_bytes"]
    assert fit["projected_bytes"]["int8"] < fit["projected_bytes"]["fp16"] < w + arena + io_b


def test_cli_table_json_markdown_plot(resnet_file: Path, tmp_path: Path) -> None:
    code, out = _run(resnet_file, "--top", "3")
    assert code == 0, out
    assert "11,689,512" in out and "FITS: uses" in out and "headroom" in out
    assert "Top 3 nodes" in out and "conv1" in out and "lower bound" in out
    code, out = _run(resnet_file, "--json", "--batch", "2")
    assert code == 0, out
    d = json.loads(out)
    assert d["batch"] == 2 and d["macs"] == pytest.approx(2 * 1.8141e9, rel=0.01)
    code, out = _run(resnet_file, "--markdown", "--top", "2")
    assert code == 0 and "| **verdict** | FITS" in out and "| 2 |" in out
    png = tmp_path / "plan.png"
    code, out = _run(resnet_file, "--plot-memory", png, "--top", "0")
    assert code == 0, out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _symbolic_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])],
        "g",
        [helper.make_tensor_value_info("x", F, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", F, None)],
        [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_input_shape_resolves_symbolic_dims(tmp_path: Path) -> None:
    model = _symbolic_model(tmp_path / "sym.onnx")
    code, out = _run(model, "--input-shape", "x=2x3x8x8", "--json")
    assert code == 0, out
    assert json.loads(out)["macs"] == 2 * 4 * 64 * 27


def _bad_cases(tmp: Path, model: Path) -> dict[str, list[str | Path]]:
    corrupt = tmp / "corrupt.onnx"
    corrupt.write_bytes(model.read_bytes()[:5000])
    text = tmp / "text.onnx"
    text.write_text("hello, not a model\n")
    sym = _symbolic_model(tmp / "sym.onnx")
    return {
        "unknown target": [model, "--target", "nes"],
        "missing file": [tmp / "missing.onnx"],
        "corrupt file": [corrupt],
        "not onnx": [text],
        "batch 0": [model, "--batch", "0"],
        "unresolved shapes": [sym],
        "bad --input-shape": [model, "--input-shape", "input=1xax3"],
        "unknown input": [model, "--input-shape", "image=1x3x224x224"],
        "bad plot type": [model, "--plot-memory", tmp / "plan.txt"],
        "negative top": [model, "--top", "-1"],
    }


@pytest.mark.parametrize(
    ("case", "needle"),
    [
        ("unknown target", "unknown target 'nes'"),
        ("missing file", "no such file"),
        ("corrupt file", "corrupt"),
        ("not onnx", "not an ONNX"),
        ("batch 0", "--batch must be a positive integer"),
        ("unresolved shapes", "'x' [1, 3, H, W]"),
        ("bad --input-shape", "bad --input-shape"),
        ("unknown input", "names no graph input: image"),
        ("bad plot type", "unsupported image type"),
        ("negative top", "--top must be >= 0"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(
    case: str, needle: str, resnet_file: Path, tmp_path: Path
) -> None:
    cases = _bad_cases(tmp_path, resnet_file)
    before = sorted(tmp_path.iterdir())
    plot = tmp_path / "should-not-exist.png"
    args = list(cases[case])
    if case != "bad plot type":
        args += ["--plot-memory", plot]
    code, out = _run(*args)
    assert code == 2, out
    lines = out.strip().splitlines()
    assert lines[0].startswith("error: ") and needle in lines[0], out
    assert len(lines) <= 2 and all(ln.startswith(("error: ", "hint: ")) for ln in lines)
    assert "Traceback" not in out
    assert sorted(tmp_path.iterdir()) == before and not plot.exists()


def test_unresolved_hint_names_the_input(tmp_path: Path) -> None:
    code, out = _run(_symbolic_model(tmp_path / "sym.onnx"))
    assert code == 2 and "hint: give every input a full shape: --input-shape x=1x3xHxW" in out


def test_unsafe_external_data_is_refused(tmp_path: Path) -> None:
    proto = helper.make_model(
        helper.make_graph(
            [helper.make_node("Add", ["x", "w"], ["y"])],
            "g",
            [helper.make_tensor_value_info("x", F, [4])],
            [helper.make_tensor_value_info("y", F, [4])],
            [numpy_helper.from_array(np.ones(4, np.float32), "w")],
        )
    )
    w = proto.graph.initializer[0]
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for k, v in {"location": "../evil.bin", "offset": "0", "length": "16"}.items():
        w.external_data.add(key=k, value=v)
    sub = tmp_path / "m"
    sub.mkdir()
    (tmp_path / "evil.bin").write_bytes(b"\0" * 16)
    path = sub / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    code, out = _run(path)
    assert code == 2 and out.startswith("error: ") and "'..'" in out


@pytest.mark.needs_data
def test_every_shared_model(shared_data: Path) -> None:
    models = sorted((shared_data / "models").glob("*.onnx"))
    assert models
    for path in models:
        code, out = _run(path, "--json")
        assert code == 0, f"{path.name}: {out}"
        d = json.loads(out)
        assert d["params"] > 100_000 and d["flops"] > 1e8 and d["fit"]["fits"]
        assert d["cost"]["unknown_ops"] == [] and d["latency_s"] > 0
        assert d["file_size"]["bytes"] == path.stat().st_size
        r = inspect(path)
        assert "FITS" in to_markdown(r)
        render_inspect(r, top=5)


# --- a random graph it has never seen --------------------------------------------------------


def _random_cnn(seed: int) -> tuple[ir.Model, int, list[int]]:
    """A random conv net with symbolic input dims; returns (model, expected MACs, input shape)."""
    rng = np.random.default_rng(seed)
    c, h = int(rng.integers(2, 6)), int(rng.integers(12, 24))
    in_shape = [1, c, h, h]
    nodes, inits = [], []
    x, macs = "x", 0
    for i in range(int(rng.integers(3, 7))):
        kind = rng.choice(["conv", "conv", "pool", "act", "residual", "concat", "transpose2"])
        out = f"t{i}"
        if kind == "conv":
            groups = int(rng.choice([g for g in (1, 2, c) if c % g == 0]))
            m = groups * int(rng.integers(1, 4))
            k, s, p, d = (int(v) for v in (rng.choice([1, 3]), rng.integers(1, 3), 1, 1))
            d = int(rng.integers(1, 3)) if k == 3 else 1
            w = rng.standard_normal((m, c // groups, k, k)).astype(np.float32)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, f"w{i}"],
                    [out],
                    group=groups,
                    strides=[s, s],
                    pads=[p] * 4,
                    dilations=[d, d],
                )
            )
            h = (h + 2 * p - d * (k - 1) - 1) // s + 1
            macs += m * h * h * (c // groups) * k * k
            c = m
        elif kind == "pool" and h >= 4:
            nodes.append(
                helper.make_node("MaxPool", [x], [out], kernel_shape=[2, 2], strides=[2, 2])
            )
            h //= 2
        elif kind == "residual":
            nodes.append(helper.make_node("Add", [x, x], [out]))
        elif kind == "concat":
            nodes.append(helper.make_node("Concat", [x, x], [out], axis=1))
            c *= 2
        elif kind == "transpose2":
            nodes.append(helper.make_node("Transpose", [x], [out + "a"], perm=[0, 1, 3, 2]))
            nodes.append(helper.make_node("Transpose", [out + "a"], [out], perm=[0, 1, 3, 2]))
        else:
            nodes.append(helper.make_node(str(rng.choice(["Relu", "Sigmoid", "Tanh"])), [x], [out]))
        x = out
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["g"]))
    nodes.append(helper.make_node("Flatten", ["g"], ["f"]))
    inits.append(numpy_helper.from_array(np.ones((c, 7), np.float32), "fc"))
    nodes.append(helper.make_node("Gemm", ["f", "fc"], ["y"]))
    macs += c * 7
    graph = helper.make_graph(
        nodes,
        f"random{seed}",
        [helper.make_tensor_value_info("x", F, ["batch", "C", "H", "W"])],
        [helper.make_tensor_value_info("y", F, None)],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return io.from_proto(proto), macs, in_shape


@pytest.mark.parametrize("seed", range(6))
def test_random_graph_never_seen(seed: int) -> None:
    model, expected_macs, in_shape = _random_cnn(seed)
    with pytest.raises(InputError, match="unresolved"):
        inspect(model)  # C, H, W are symbolic
    r = inspect(model, input_shapes={"x": in_shape}, target="cpu")
    assert r.macs == expected_macs and r.flops >= 2 * expected_macs
    assert r.cost.unknown_ops == () and all(n.known for n in r.cost.nodes)
    assert r.memory.arena_bytes >= r.memory.lower_bound_bytes
    assert math.isclose(r.latency_s, sum(n.time_s for n in r.cost.nodes))
    # onnxruntime agrees the graph is valid and on the output shape
    sess = ort.InferenceSession(io.to_bytes(model), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.zeros(in_shape, np.float32)})
    assert list(y.shape) == [1, 7] == list(r.outputs[0].shape or [1, 7])
    json.dumps(r.to_dict())


def test_api_errors(tmp_path: Path) -> None:
    model = io.load(_symbolic_model(tmp_path / "sym.onnx"))
    with pytest.raises(InputError, match="batch"):
        inspect(model, batch=0)
    with pytest.raises(InputError, match="unknown target"):
        inspect(model, target="nes")
