"""onnxfit.zoo (ResNet-18, Tiny-YOLOv3 built as ONNX) and the ``onnxfit zoo`` command."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxfit import io, zoo
from onnxfit.cli import main
from onnxfit.errors import InputError

SIZES = {"resnet18": 224, "yolov3-tiny": 416}


def _weights(model: ir.Model) -> dict[str, np.ndarray]:
    out = {}
    for name, value in model.graph.initializers.items():
        assert value.const_value is not None
        out[name] = value.const_value.numpy()
    return out


def _session(model: ir.Model | Path) -> ort.InferenceSession:
    data = model.read_bytes() if isinstance(model, Path) else io.to_bytes(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def paths(zoo_resnet18: Path, zoo_yolov3_tiny: Path) -> dict[str, Path]:
    return {"resnet18": zoo_resnet18, "yolov3-tiny": zoo_yolov3_tiny}


def test_resnet18_exact_parameter_count(zoo_resnet18: Path) -> None:
    counts = zoo.count_parameters(io.load(zoo_resnet18))
    assert counts.parameters == 11_689_512 == zoo.ZOO_SPECS["resnet18"].parameters
    assert counts.bn_statistics == 9_600  # 20 BNs, 4800 channels, mean + var
    assert counts.other == 0
    assert counts.total == 11_699_112


def test_yolov3_tiny_exact_parameter_count(zoo_yolov3_tiny: Path) -> None:
    counts = zoo.count_parameters(io.load(zoo_yolov3_tiny))
    assert counts.parameters == 8_852_366 == zoo.ZOO_SPECS["yolov3-tiny"].parameters
    assert counts.bn_statistics == 6_368  # 11 BNs, 3184 channels, mean + var
    assert counts.other == 4  # the Resize scales
    assert counts.parameters + counts.bn_statistics == 8_858_734


def test_num_classes_changes_only_the_heads() -> None:
    r = zoo.count_parameters(zoo.resnet18(num_classes=10)).parameters
    assert r == 11_689_512 - 990 * 513
    y = zoo.count_parameters(zoo.yolov3_tiny(num_classes=1)).parameters
    assert y == 8_852_366 - (255 - 18) * (512 + 1) - (255 - 18) * (256 + 1)


def test_resnet18_layout_and_names(zoo_resnet18: Path) -> None:
    model = io.load(zoo_resnet18)
    ops = Counter(n.op_type for n in model.graph)
    assert ops == {"Conv": 20, "BatchNormalization": 20, "Relu": 17, "Add": 8, "MaxPool": 1,
                   "GlobalAveragePool": 1, "Flatten": 1, "Gemm": 1}  # fmt: skip
    names = [n.name for n in model.graph]
    assert len(set(names)) == len(names)
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"] and names[-1] == "fc"
    shapes = {k: v.shape for k, v in _weights(model).items()}
    assert shapes["conv1.weight"] == (64, 3, 7, 7)
    assert shapes["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert shapes["layer4.1.conv2.weight"] == (512, 512, 3, 3)
    assert shapes["bn1.running_mean"] == (64,) and shapes["layer3.0.downsample.1.bias"] == (256,)
    assert shapes["fc.weight"] == (1000, 512) and shapes["fc.bias"] == (1000,)
    assert "layer1.0.downsample.0.weight" not in shapes  # stride-1 64->64: identity shortcut
    strides = {
        n.name: list(n.attributes["strides"].value) for n in model.graph if n.op_type == "Conv"
    }
    assert strides["conv1"] == [2, 2] and strides["layer2.0.conv1"] == [2, 2]
    assert strides["layer2.0.conv2"] == [1, 1] and strides["layer4.0.downsample.0"] == [2, 2]


def test_yolov3_tiny_layout_and_names(zoo_yolov3_tiny: Path) -> None:
    model = io.load(zoo_yolov3_tiny)
    ops = Counter(n.op_type for n in model.graph)
    assert ops == {"Conv": 13, "BatchNormalization": 11, "LeakyRelu": 11, "MaxPool": 6,
                   "Resize": 1, "Concat": 1}  # fmt: skip
    nodes = {n.name: n for n in model.graph}
    pool = nodes["layers.11.maxpool"]  # darknet's stride-1 2x2 maxpool keeps 13x13
    assert list(pool.attributes["strides"].value) == [1, 1]
    assert list(pool.attributes["pads"].value) == [0, 0, 1, 1]
    cat = nodes["layers.20.route"]
    assert [v.name for v in cat.inputs if v is not None] == ["layers.19.upsample", "layers.8.act"]
    conv18_input = nodes["layers.18.conv"].inputs[0]
    assert conv18_input is not None and conv18_input.name == "layers.13.act"
    inits = _weights(model)
    assert inits["layers.15.conv.weight"].shape == (255, 512, 1, 1)
    assert inits["layers.21.conv.weight"].shape == (256, 384, 3, 3)
    assert "layers.22.conv.bias" in inits and "layers.22.bn.weight" not in inits
    assert all(n.attributes["alpha"].value == pytest.approx(0.1)
               for n in model.graph if n.op_type == "LeakyRelu")  # fmt: skip


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_checker_full_and_signature(paths: dict[str, Path], name: str) -> None:
    proto = io.load_proto(paths[name])
    onnx.checker.check_model(proto, full_check=True)
    assert proto.ir_version == 8
    assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert proto.graph.input[0].name == "input"
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, SIZES[name], SIZES[name]]
    spec = zoo.ZOO_SPECS[name]
    assert [o.name for o in proto.graph.output] == list(spec.outputs)


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_runs_in_onnxruntime_with_dynamic_batch(paths: dict[str, Path], name: str) -> None:
    sess = _session(paths[name])
    spec = zoo.ZOO_SPECS[name]
    assert [o.name for o in sess.get_outputs()] == list(spec.outputs)
    x = np.random.default_rng(1).standard_normal((2, 3, SIZES[name], SIZES[name]), np.float32)
    out1 = sess.run(None, {"input": x[:1]})
    out2 = sess.run(None, {"input": x})
    for (oname, shape), a, b in zip(spec.outputs.items(), out1, out2, strict=True):
        assert a.shape == (1, *shape[1:]) and b.shape == (2, *shape[1:]), oname
        assert np.isfinite(b).all()
        assert 1e-2 < float(b.std()) < 1e2, (oname, float(b.std()))
        np.testing.assert_allclose(b[:1], a, rtol=1e-4, atol=1e-4)  # samples independent
        assert not np.allclose(b[0], b[1])  # the output depends on the input


@pytest.mark.parametrize("name", zoo.ZOO_MODELS)
def test_batchnorm_statistics_are_calibrated(name: str) -> None:
    """On a fresh N(0,1) input every BN output has about unit per-channel std."""
    model = zoo.build(name)
    bn_outputs = [n.outputs[0] for n in model.graph if n.op_type == "BatchNormalization"]
    model.graph.outputs.extend(bn_outputs)
    sess = _session(model)
    size = SIZES[name]
    x = np.random.default_rng(7).standard_normal((1, 3, size, size), np.float32)
    outs = sess.run([v.name for v in bn_outputs], {"input": x})
    stds = np.array([o.std(axis=(0, 2, 3)).mean() for o in outs])
    assert np.all((stds > 0.7) & (stds < 1.5)), stds


def test_same_seed_same_bytes_different_seed_different_weights(zoo_resnet18: Path) -> None:
    assert io.to_bytes(zoo.resnet18(seed=0)) == zoo_resnet18.read_bytes()
    y0, y0b, y1 = (zoo.yolov3_tiny(seed=s) for s in (0, 0, 1))
    assert io.to_bytes(y0) == io.to_bytes(y0b)
    w0, w1 = (_weights(m)["layers.12.conv.weight"] for m in (y0, y1))
    assert w0.shape == w1.shape and not np.array_equal(w0, w1)


def test_build_names_and_errors() -> None:
    assert zoo.ZOO_MODELS == ("resnet18", "yolov3-tiny")
    assert zoo.build("yolov3_tiny", seed=3).graph.name == "yolov3-tiny"
    assert zoo.canonical_name("YOLOv3-Tiny") == "yolov3-tiny"
    with pytest.raises(InputError) as err:
        zoo.build("resnet50")
    assert "resnet50" in err.value.message
    assert err.value.hint is not None and "resnet18" in err.value.hint
    assert "yolov3-tiny" in err.value.hint
    with pytest.raises(InputError):
        zoo.resnet18(seed=-1)
    with pytest.raises(InputError):
        zoo.yolov3_tiny(num_classes=0)


def test_public_api_reexports() -> None:
    import onnxfit

    assert onnxfit.resnet18 is zoo.resnet18 and onnxfit.yolov3_tiny is zoo.yolov3_tiny


def test_cli_builds_then_refuses_to_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "r.onnx"
    runner = CliRunner()
    res = runner.invoke(main, ["zoo", "resnet18", "-o", str(out), "--seed", "2"])
    assert res.exit_code == 0, res.output
    assert "11,689,512" in res.output and f"{out.stat().st_size:,} bytes" in res.output
    first = out.read_bytes()
    assert zoo.count_parameters(io.load(out)).parameters == 11_689_512
    res = runner.invoke(main, ["zoo", "resnet18", "-o", str(out), "--seed", "3"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.stderr.splitlines()[0] == f"error: -o {out}: file exists"
    assert out.read_bytes() == first  # nothing written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.onnx"]  # no temporary left behind
    res = runner.invoke(main, ["zoo", "resnet18", "-o", str(out), "--seed", "3", "--force"])
    assert res.exit_code == 0, res.output
    assert out.read_bytes() != first


def test_cli_json_and_list(tmp_path: Path) -> None:
    out = tmp_path / "y.onnx"
    runner = CliRunner()
    res = runner.invoke(main, ["zoo", "yolov3_tiny", "-o", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["name"] == "yolov3-tiny" and data["parameters"] == 8_852_366
    assert data["bytes"] == out.stat().st_size and data["mib"] == pytest.approx(
        out.stat().st_size / 2**20, abs=1e-3
    )
    for args in (["zoo"], ["zoo", "--list"]):
        res = runner.invoke(main, args)
        assert res.exit_code == 0 and "resnet18" in res.output and "yolov3-tiny" in res.output
    listed = json.loads(runner.invoke(main, ["zoo", "--list", "--json"]).stdout)
    assert [m["name"] for m in listed] == list(zoo.ZOO_MODELS)


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    res = runner.invoke(main, ["zoo", "alexnet", "-o", str(tmp_path / "a.onnx")])
    assert res.exit_code == 2
    assert res.stderr.splitlines()[0] == "error: unknown zoo model 'alexnet'"
    res = runner.invoke(main, ["zoo", "resnet18"])
    assert res.exit_code == 2 and res.stderr.startswith("error: no output file given")
    assert list(tmp_path.iterdir()) == []
