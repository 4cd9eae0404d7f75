"""What the fuzzer found (tests/fuzz), each failing case kept as a test: it now succeeds or is
refused with one ``error:`` line (exit 2), never a traceback, through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from fuzz.cases import Case, image_models
from fuzz.inprocess import run_case
from fuzz.runner import PASS, CaseResult
from fuzz.seeds import conv_net, function_net, qdq_net, seed_images


def _case(tmp_path: Path, *commands: list[str | bytes], chain: bool = True) -> CaseResult:
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    case = Case("t", "model", "found", "", tmp_path, [list(c) for c in commands], chain=chain)
    result = run_case(case)
    for r in result.results:
        assert r.verdict in PASS, f"{r.argv[0]}: {r.verdict}: {r.why}\n{r.stderr_tail}"
    return result


def _model(tmp_path: Path, model: onnx.ModelProto) -> str:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    return str(path)


def _optimize(tmp_path: Path, model: str) -> list[str]:
    out = str(tmp_path / "out" / "o.onnx")
    return ["optimize", model, "-o", out, "--precision", "fp16", "--measure-runs", "0"]


@pytest.mark.parametrize("link", ["parent", "deep_parent", "self", "loop"])
def test_run_on_folder_with_link_loops(tmp_path: Path, link: str) -> None:
    """data/files: a folder link back up the tree (or a file link loop) aborted the whole run
    with ``OSError: Too many levels of symbolic links``."""
    images = tmp_path / "in"
    (images / "a" / "b").mkdir(parents=True)
    (images / "ok.png").write_bytes(seed_images()["png"])
    target = {
        "parent": ("a/up", ".."),
        "deep_parent": ("a/b/top", "../.."),
        "self": ("here", "."),
        "loop": ("x.jpg", "y.jpg"),
    }[link]
    os.symlink(target[1], images / target[0])
    if link == "loop":
        os.symlink("x.jpg", images / "y.jpg")
    net = image_models(tmp_path / "models")["classify"]
    result = _case(tmp_path, ["run", str(net), str(images), "--target", "cpu", "--json"])
    assert result.results[0].verdict == "succeeded"


def test_run_with_file_name_not_utf8(tmp_path: Path) -> None:
    """apps/results: a file name that is not UTF-8 made ``run -o`` fail writing its JSON line
    (``UnicodeEncodeError: surrogates not allowed``)."""
    images = tmp_path / "in"
    images.mkdir()
    with open(os.fsencode(images) + b"/\xff\xfe.png", "wb") as fh:
        fh.write(seed_images()["png"])
    net = image_models(tmp_path / "models")["classify"]
    out = tmp_path / "out" / "r.jsonl"
    _case(tmp_path, ["run", str(net), str(images), "--target", "cpu", "-o", str(out)])
    line = json.loads(out.read_text(encoding="utf-8"))
    assert line["path"].endswith("\\xff\\xfe.png") and "top_k" in line


def test_eval_labels_not_utf8(tmp_path: Path) -> None:
    """data/tasks: a labels.tsv that is not UTF-8 gave ``UnicodeDecodeError``."""
    data = tmp_path / "in"
    data.mkdir()
    (data / "a.png").write_bytes(seed_images()["png"])
    (data / "labels.tsv").write_bytes(b"file\tclass_index\na.png\t0\n\xff\xfe.png\t1\n")
    net = image_models(tmp_path / "models")["classify"]
    result = _case(tmp_path, ["eval", str(net), str(data), "--target", "cpu"])
    assert result.results[0].verdict == "refused"
    assert "labels.tsv: not UTF-8 text" in result.results[0].why


def test_duplicate_graph_output_optimizes(tmp_path: Path) -> None:
    """passes/fp16: an output listed twice (ORT runs such models) was renamed ``y_fp16`` by the
    output casts, and verification failed with ``KeyError: 'y'``."""
    proto = qdq_net()
    proto.graph.output.add().CopyFrom(proto.graph.output[0])
    model = _model(tmp_path, proto)
    _case(tmp_path, ["inspect", model], _optimize(tmp_path, model))
    out = onnx.load(tmp_path / "out" / "o.onnx")
    assert [o.name for o in out.graph.output] == ["y", "y"]


def test_output_of_undefined_dtype(tmp_path: Path) -> None:
    """optimizer/data: an output declared with data type 0 gave ``TypeError: Numpy does not
    support ONNX data type: UNDEFINED`` (ORT then refuses the model: one line)."""
    proto = qdq_net()
    proto.graph.output[0].type.tensor_type.elem_type = 0
    model = _model(tmp_path, proto)
    _case(tmp_path, ["inspect", model], _optimize(tmp_path, model))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("kernel", "with a negative dimension, so the model cannot run"),
        ("input_dim", "EiB, more memory than any machine has"),
    ],
)
def test_impossible_shapes_refused(tmp_path: Path, edit: str, message: str) -> None:
    """analysis/lifetimes: a kernel larger than its input (negative inferred dims) or a
    2**63 input dimension gave ``OverflowError`` in the memory plan."""
    proto = qdq_net() if edit == "kernel" else function_net()
    if edit == "kernel":
        conv = next(n for n in proto.graph.node if n.op_type == "Conv")
        conv.attribute[0].ints[:] = [2**40, 2**40]
    else:
        proto.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 2**63 - 1
    result = _case(tmp_path, ["inspect", _model(tmp_path, proto)])
    assert result.results[0].verdict == "refused"
    assert message in result.results[0].why


def test_seeds_are_valid_models() -> None:
    """The seeds the fuzzer starts from are valid models (ORT runs them)."""
    import onnxruntime as ort

    for proto in (conv_net(), qdq_net()):
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        x = sess.get_inputs()[0]
        assert sess.run(None, {x.name: np.ones(x.shape, np.float32)})[0].size > 0


def test_function_call_with_too_many_inputs(tmp_path: Path) -> None:
    """io/nodes: a call passing more inputs than the local function declares reached onnx_ir's
    inliner (``ValueError: Input mismatch when inlining function``)."""
    proto = function_net()
    call = next(n for n in proto.graph.node if n.op_type == "Act")
    call.input.append(call.input[0])
    result = _case(tmp_path, ["inspect", _model(tmp_path, proto)])
    assert "calls function local::Act with 2 inputs; it has 1" in result.results[0].why


def test_big_tensors_verify_on_fewer_synthetic_samples(tmp_path: Path) -> None:
    """optimizer/data: verification kept 16 samples of every output and intermediate; a model
    with a 64 MiB tensor peaked at 1.3 GiB RSS in ``optimize`` (now 2 samples, about 0.5 GiB)."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper as nh

    from onnxfit import io
    from onnxfit.optimizer.data import synthetic_count

    x = oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = oh.make_tensor_value_info("y", TensorProto.FLOAT, None)
    shape = nh.from_array(np.array([2**16, 4, 8, 8], np.int64), "s")
    graph = oh.make_graph([oh.make_node("Expand", ["x", "s"], ["y"])], "g", [x], [y], [shape])
    model = io.from_proto(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]))
    assert synthetic_count(model, 16) == 2  # 64 MiB x 2 = the 128 MiB allowance
    assert synthetic_count(io.from_proto(qdq_net()), 16) == 16
