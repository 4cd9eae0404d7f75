"""``optimize()``: back-off, verification failure writes nothing, report and deploy files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.errors import InputError, VerificationError
from onnxfit.optimizer import optimize, sidecar_paths
from onnxfit.optimizer.emulate import emulate_fp16
from onnxfit.optimizer.registry import make_pass
from onnxfit.optimizer.run import golden_path

FAST = {"measure_runs": 0, "synthetic_count": 8}


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def overflow_model(path: Path) -> Path:
    """x -> *1000 -> *1000 (beyond float16's 65504) -> *1e-4 -> MatMul -> y (all fine in fp32)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.array(1000, np.float32), "k1"),
        numpy_helper.from_array(np.array(1000, np.float32), "k2"),
        numpy_helper.from_array(np.array(1e-4, np.float32), "k3"),
        numpy_helper.from_array(rng.standard_normal((16, 10)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("Mul", ["x", "k1"], ["a"], name="scale_up1"),
        helper.make_node("Mul", ["a", "k2"], ["b"], name="scale_up2"),
        helper.make_node("Mul", ["b", "k3"], ["c"], name="scale_down"),
        helper.make_node("MatMul", ["c", "W"], ["y"], name="head"),
    ]
    g = helper.make_graph(
        nodes,
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def outlier_model(path: Path) -> Path:
    """Conv -> Mul (channel 0 x3000) -> Conv that ignores channel 0: per-tensor uint8
    activations crush channels 1-3 to zero, so INT8 fails until the convs stay float."""
    rng = np.random.default_rng(0)
    w2 = rng.standard_normal((8, 4, 1, 1)).astype(np.float32)
    w2[:, 0] = 0
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3, "w1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(np.array([3000, 1, 1, 1], np.float32).reshape(1, 4, 1, 1), "s"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["y1", "s"], ["y2"], name="outlier"),
        helper.make_node("Conv", ["y2", "w2", "b2"], ["y"], name="conv2"),
    ]
    g = helper.make_graph(
        nodes,
        "outlier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])],
        inits,
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def tiny_classifier(path: Path, *, size: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """An image classifier: x [N, 3, size, size] -> Conv 3x3 -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm -> logits [N, classes] (nodes conv, relu, pool, flat, fc)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "b"),
        numpy_helper.from_array(rng.standard_normal((classes, 8)).astype(np.float32), "fw"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc", transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path)


def _outputs(out: Path) -> list[Path]:
    return [out, *sidecar_paths(out)]


def test_sidecar_names() -> None:
    assert sidecar_paths("a/net.onnx") == (Path("a/net.report.json"), Path("a/net.deploy.json"))
    assert sidecar_paths("net.bin")[0] == Path("net.bin.report.json")


def test_emulation_shows_fp16_overflow_that_cpu_hides(tmp_path: Path) -> None:
    model = io.load(overflow_model(tmp_path / "m.onnx"))
    make_pass("fp16")(model)
    x = {"x": np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)}
    plain = ort.InferenceSession(io.to_bytes(model), providers=["CPUExecutionProvider"])
    assert np.isfinite(plain.run(None, x)[0]).all()  # ORT CPU computes this chain in fp32
    emu = emulate_fp16(model)
    onnx.checker.check_model(io.to_proto(emu))
    sess = ort.InferenceSession(io.to_bytes(emu), providers=["CPUExecutionProvider"])
    assert not np.isfinite(sess.run(None, x)[0]).all()
    assert [o.name for o in emu.graph.outputs] == ["y"]


def test_fp16_backoff_blocks_overflowing_nodes(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "m-fp16.onnx"
    result = optimize(src, out, target="xbox-series-s", **FAST)
    passed = [a.gate.passed for a in result.attempts]
    assert passed[0] is False and passed[-1] is True
    assert not result.attempts[0].gate.finite
    assert set(result.kept_higher) == {"scale_up2", "scale_down"}
    assert result.gate.metric == "cosine" and "emulated" in result.gate.reference
    written = io.load(out)
    onnx.checker.check_model(io.to_proto(written))
    kept = {n.name: n for n in written.graph}
    assert (
        kept["scale_up2"].outputs[0].dtype
        == io.from_proto(onnx.load(str(src))).graph.outputs[0].dtype
    )  # float32
    assert kept["head"].outputs[0].dtype.name == "FLOAT16"
    report = json.loads(sidecar_paths(out)[0].read_text())
    assert report["backoff"]["kept_higher_precision"] == result.kept_higher
    assert report["backoff"]["rounds"] == len(result.attempts) - 1
    assert report["data"]["synthetic"] is True
    assert any("SYNTHETIC" in n for n in report["notes"])


def test_int8_backoff_excludes_sensitive_nodes(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")
    out = tmp_path / "m-int8.onnx"
    result = optimize(src, out, target="cpu", precision="int8", max_kept_share=1.0, **FAST)
    assert not result.attempts[0].gate.passed and result.gate.passed
    assert len(result.attempts) >= 2 and result.kept_higher
    passing = [a for a in result.attempts if a.gate.passed]
    assert min(len(a.kept) for a in passing) == len(result.kept_higher)  # the smallest passing
    assert set(result.kept_higher) <= {"conv1", "conv2", "outlier"}
    int8 = next(p for p in result.passes if p.name == "int8")
    assert int8.stats["excluded"] == result.kept_higher
    assert out.exists()


def test_budget_that_cannot_be_met_writes_nothing(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "sub" / "m-fp16.onnx"
    with pytest.raises(VerificationError, match="nothing written") as exc:
        optimize(src, out, target="xbox-series-s", max_accuracy_drop=0.0, max_rounds=0, **FAST)
    assert exc.value.hint and "--max-accuracy-drop" in exc.value.hint
    assert not any(p.exists() for p in _outputs(out))
    assert not out.parent.exists() or not any(out.parent.iterdir())


def test_refuses_existing_output_and_input(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    before = src.read_bytes()
    for force in (False, True):  # --force never overwrites the input
        with pytest.raises(InputError, match="write over an input"):
            optimize(src, src, target="xbox-series-s", force=force, **FAST)
    assert src.read_bytes() == before
    out = tmp_path / "taken.onnx"
    out.write_bytes(b"keep")
    with pytest.raises(InputError, match="file exists"):
        optimize(src, out, target="xbox-series-s", **FAST)
    assert out.read_bytes() == b"keep"


def test_report_and_deploy_for_directml(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")
    out = tmp_path / "m-xbox.onnx"
    result = optimize(src, out, target="xbox-series-s", max_accuracy_drop=5.0, **FAST)
    report_path, deploy_path = sidecar_paths(out)
    report = json.loads(report_path.read_text())
    for key in ("plan", "passes", "before", "after", "verification", "gate", "data", "backoff"):
        assert key in report
    assert report["plan"]["precision"] == "fp16"
    assert [p["name"] for p in report["passes"]] == [s.name for s in result.plan.steps]
    assert report["after"]["file_bytes"] == out.stat().st_size
    assert report["before"]["precision"] == "fp32" and report["after"]["precision"] == "fp16"
    assert "emulated" in report["gate"]["reference"]  # judged on the float16 emulation
    assert report["gate"]["measure"] == "cosine" and report["gate"]["rule"]
    deploy = json.loads(deploy_path.read_text())
    session = deploy["session"]
    assert session["enable_mem_pattern"] is False
    assert session["execution_mode"] == "ORT_SEQUENTIAL"
    assert session["offline_graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert session["free_dimension_overrides"] == {"batch": 1}
    assert session["providers"][0] == "DmlExecutionProvider"
    assert session["intra_op_num_threads"] == 1  # the game owns the cores
    assert session["session_config_entries"]["session.intra_op.allow_spinning"] == "0"
    assert deploy["model"]["precision"] == "fp16" and deploy["model"]["file"] == out.name
    assert any("SessionOptionsAppendExecutionProvider_DML1" in line
               for line in deploy["directml"]["cpp"])  # fmt: skip


def test_already_in_precision_is_still_verified(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "m-fp32.onnx"
    result = optimize(src, out, target="cpu", precision="fp32", **FAST)
    assert result.plan.lossy_index is None
    assert any("already FP32" in n for n in result.notes)
    assert result.gate.passed and result.verification.max_abs_error == 0.0


def test_calibration_folder_errors(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no image files"):
        optimize(src, out, target="cpu", precision="int8", calibrate=empty, **FAST)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "b.png").write_bytes(b"")
    with pytest.raises(InputError, match="none of the 2 images"):
        optimize(src, out, target="cpu", precision="int8", calibrate=bad, preset="imagenet", **FAST)
    assert not any(p.exists() for p in _outputs(out))


def test_calibration_arrays_skip_bad_files(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")
    data = tmp_path / "arrays"
    data.mkdir()
    rng = np.random.default_rng(1)
    np.save(data / "a.npy", rng.standard_normal((6, 3, 8, 8)).astype(np.float32))
    (data / "broken.npy").write_bytes(b"junk")
    out = tmp_path / "o.onnx"
    result = optimize(
        src, out, target="xbox-series-s", calibrate=data, max_accuracy_drop=5.0, **FAST
    )
    assert result.data["synthetic"] is False and result.data["calibration_samples"] == 6
    assert len(result.data["skipped"]) == 1 and "broken.npy" in result.data["skipped"][0]


def test_eval_needs_an_image_model_the_evaluator_reads(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")  # output [N, 8, 8, 8]: neither task
    ev = tmp_path / "ev"
    ev.mkdir()
    with pytest.raises(InputError, match=r"neither labels\.tsv"):
        optimize(src, tmp_path / "o.onnx", target="xbox-series-s", eval=ev, **FAST)
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ev / "a.png")
    (ev / "labels.tsv").write_text("file\tclass_index\na.png\t0\n")
    with pytest.raises(InputError, match=r"cannot (tell the task|guess the preprocessing)"):
        optimize(src, tmp_path / "o.onnx", target="xbox-series-s", eval=ev, **FAST)


@pytest.mark.slow
def test_zoo_resnet18_sizes(zoo_resnet18: Path, tmp_path: Path) -> None:
    fp32 = io.file_size(zoo_resnet18).bytes
    fp16 = optimize(zoo_resnet18, tmp_path / "fp16.onnx", target="xbox-series-s", **FAST)
    assert fp16.after.file_bytes <= 0.501 * fp32
    assert fp16.after.arena_bytes < fp16.before.arena_bytes
    int8 = optimize(zoo_resnet18, tmp_path / "int8.onnx", target="cpu", precision="int8", **FAST)
    assert int8.after.file_bytes <= 0.26 * fp32
    assert int8.gate.passed


def test_layer_table_and_precision_share_speak_the_models_names(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "m.onnx")
    out = tmp_path / "m-int8.onnx"
    result = optimize(src, out, target="cpu", precision="int8", max_accuracy_drop=100, **FAST)
    names = {n.name for n in io.load(src).graph}
    assert result.layer_errors and {r["node"] for r in result.layer_errors} <= names
    added = [r["added"] for r in result.layer_errors]
    assert added == sorted(added, reverse=True)
    share = result.achieved["precision"]
    assert share["precision"] == "int8" and share["total"] == 2  # conv and fc
    assert share["nodes"] == 2 and share["node_share"] == 1.0 and share["flops_share"] == 1.0
    report = json.loads(sidecar_paths(out)[0].read_text())
    assert report["layer_errors"][0]["node"] in names
    assert report["requested_vs_achieved"]["precision"]["requested"] == 1.0


def test_candidate_search_keeps_the_fastest_that_passes(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "m.onnx")
    out = tmp_path / "m-cpu.onnx"
    opts = {**FAST, "measure_runs": 3}
    result = optimize(src, out, target="cpu", max_accuracy_drop=100, **opts)
    rows = result.candidates
    assert [r["precision"] for r in rows] == ["int8", "fp32"]
    assert all(r["status"] == "ok" for r in rows)
    [chosen] = [r for r in rows if r["chosen"]]
    assert chosen["speed_s"] == min(r["speed_s"] for r in rows)
    assert chosen["speed_from"] == "measured on this host"
    assert result.precision == chosen["precision"]
    report = json.loads(sidecar_paths(out)[0].read_text())
    assert [r["chosen"] for r in report["candidates"]] == [r["chosen"] for r in rows]


def test_candidate_search_skips_a_candidate_that_fails_the_budget(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")  # INT8 cannot pass with one conv of two float
    result = optimize(src, tmp_path / "o.onnx", target="cpu", max_kept_share=0.25, **FAST)
    int8, fp32 = result.candidates
    assert int8["status"] == "refused" and "max-kept-share" in int8["gate"]
    assert fp32["chosen"] and result.precision == "fp32"
    assert any("candidate search: fp32 chosen of 2" in n for n in result.notes)
    no_search = optimize(
        src, tmp_path / "p.onnx", target="cpu", search=False, **FAST
    )  # the target's preferred precision only (this host: fp32 without VNNI, int8 with)
    assert no_search.candidates == []


def test_deploy_bundle_is_usable_as_is(tmp_path: Path) -> None:
    import hashlib

    src = tiny_classifier(tmp_path / "m.onnx")
    out = tmp_path / "net.onnx"
    optimize(src, out, target="xbox-series-s", max_accuracy_drop=5.0, **FAST)
    deploy = json.loads(sidecar_paths(out)[1].read_text())
    assert deploy["schema_version"] == 1
    assert deploy["model"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert deploy["versions"]["onnxruntime"] == ort.__version__
    assert deploy["inputs"] == [{"name": "x", "shape": [1, 3, 32, 32], "dtype": "float32"}]
    assert deploy["outputs"] == [{"name": "logits", "shape": [1, 10], "dtype": "float32"}]
    pre = deploy["preprocessing"]
    assert pre["layout"] == "NCHW" and pre["size_hw"] == [32, 32] and pre["mean"]
    mem = deploy["memory"]
    assert mem["runtime_bytes"] == mem["weights_bytes"] + mem["arena_bytes"] + mem["io_bytes"]
    gold = np.load(golden_path(out))
    assert gold.files == sorted(deploy["golden"]["arrays"]) or set(gold.files) == set(
        deploy["golden"]["arrays"]
    )
    # the golden outputs are the written model's outputs on the golden inputs
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": gold["input:x"]})[0]
    assert np.abs(got - gold["output:logits"]).max() <= deploy["golden"]["tolerance_abs"]


def test_fixed_batch_of_two_runs_on_its_own_synthetic_inputs(tmp_path: Path) -> None:
    """The synthetic inputs onnxfit builds keep a batch fixed at 2 everywhere (the latency
    sample included): they are never refused as if they were the user's data."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    node = helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4, 2, 2])],
        [w],
    )
    src = _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "m.onnx"
    )
    for precision in ("fp16", "int8"):
        out = tmp_path / f"m-{precision}.onnx"
        result = optimize(src, out, target="cpu", precision=precision, measure_runs=2)
        assert out.exists() and result.after.measured_latency_s is not None
