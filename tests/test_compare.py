"""Tests for onnxfit.profiling.compare / accuracy and the ``onnxfit compare`` command."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.cli import main
from onnxfit.errors import InputError
from onnxfit.profiling import compare as compare_mod
from onnxfit.profiling.compare import CompareResult, compare, interleave_schedule


def _classifier(seed: int, classes: int = 10) -> onnx.ModelProto:
    """GlobalAveragePool + Flatten + Gemm(3 -> classes): input [N, 3, 32, 32]."""
    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((classes, 3)).astype(np.float32), "fc.weight")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "fc.weight"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cls",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def two_models(tmp_path: Path) -> list[Path]:
    paths = []
    for seed in (0, 1):
        p = tmp_path / f"m{seed}.onnx"
        io.save(_classifier(seed), p)
        paths.append(p)
    return paths


def test_interleave_schedule() -> None:
    assert interleave_schedule(2, 3) == [0, 1, 0, 1, 0, 1]
    assert interleave_schedule(3, 2) == [0, 1, 2, 0, 1, 2]
    assert interleave_schedule(1, 2) == [0, 0]
    with pytest.raises(InputError):
        interleave_schedule(0, 1)


class _FakeWorker:
    """Records every call in a shared log; answers like a worker."""

    isolated = True

    def __init__(self, log: list[tuple[int, str, Any]], wid: int) -> None:
        self.log, self.wid, self.pid = log, wid, 1000 + wid

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        self.log.append((self.wid, cmd, args.get("iterations")))
        if cmd == "load":
            return {
                "provider": "CPUExecutionProvider",
                "threads": 1,
                "session_s": 0.1,
                "first_s": 0.01,
                "pid": self.pid,
                "rss_baseline": 100,
            }
        if cmd == "run":
            return {"times": [0.001 * (self.wid + 1)] * args["iterations"], "gpu_times": None}
        if cmd == "memory":
            return {"peak_rss": 1000 * (self.wid + 1), "cpu_s": 0.0, "device_bytes": None}
        raise AssertionError(cmd)

    def __enter__(self) -> _FakeWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.log.append((self.wid, "closed", None))


def test_compare_runs_models_interleaved(
    monkeypatch: pytest.MonkeyPatch, two_models: list[Path]
) -> None:
    log: list[tuple[int, str, Any]] = []
    counter = iter(range(10))
    monkeypatch.setattr(compare_mod, "open_worker", lambda **kw: _FakeWorker(log, next(counter)))
    res = compare(two_models, rounds=3, per_round=4, warmup=2, noise=False)
    runs = [(w, n) for w, cmd, n in log if cmd == "run"]
    # warm-up of each model first, then A x4, B x4, A x4, B x4, A x4, B x4
    assert runs == [(0, 2), (1, 2)] + [(0, 4), (1, 4)] * 3
    loads = [i for i, (_, cmd, _) in enumerate(log) if cmd == "load"]
    first_run = next(i for i, (_, cmd, _) in enumerate(log) if cmd == "run")
    assert max(loads) < first_run  # every model loaded before any timing
    assert list(res.schedule) == [0, 1, 0, 1, 0, 1]
    a, b = res.models
    assert a.latency.count == b.latency.count == 12
    assert b.latency.median == pytest.approx(0.002)
    r = res.ratios()[1]
    assert r["latency"] == pytest.approx(0.5) and r["throughput"] == pytest.approx(0.5)
    assert r["peak_rss"] == pytest.approx(0.5) and res.ratios()[0]["latency"] == 1.0


@pytest.mark.slow
def test_compare_real_children(two_models: list[Path]) -> None:
    res = compare(
        two_models,
        target="cpu",
        rounds=2,
        per_round=3,
        warmup=1,
        runtime=["ort", "onnxfit"],
        names=["base", "ours"],
    )
    pids = {m.pid for m in res.models}
    assert len(pids) == 2 and os.getpid() not in pids
    assert [m.runtime for m in res.models] == ["ort", "onnxfit"]
    assert res.models[0].latency.count == 6
    assert res.models[0].file_bytes == io.file_size(two_models[0]).bytes
    assert res.models[0].parameters == 30
    again = CompareResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.models[1].latency == res.models[1].latency
    assert again.ratios() == res.ratios()


def _classification_folder(root: Path, n: int = 6) -> None:
    from PIL import Image

    (root / "images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = ["file\twnid\tclass_index\tclass_name"]
    for i in range(n):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(
            root / "images" / name
        )
        lines.append(f"images/{name}\tn{i}\t{i % 10}\tc{i}")
    (root / "labels.tsv").write_text("\n".join(lines) + "\n")


def test_compare_with_eval_classification(tmp_path: Path, two_models: list[Path]) -> None:
    data = tmp_path / "eval"
    _classification_folder(data)
    res = compare(
        two_models, rounds=1, per_round=2, warmup=0, isolated=False, noise=False, eval_data=data
    )
    accs = [m.accuracy for m in res.models]
    assert all(a is not None and a.task == "classify" and a.samples == 6 for a in accs)
    # recompute model 0's top-1 by hand with onnxruntime on the same preprocessed images
    import onnxruntime as ort

    from onnxfit.data.images import get_preset
    from onnxfit.verify import load_eval_set

    x, y = load_eval_set(data, get_preset("imagenet").with_size(32, 32))  # type: ignore[arg-type]
    sess = ort.InferenceSession(str(two_models[0]), providers=["CPUExecutionProvider"])
    top1 = float((sess.run(None, {"input": x})[0].argmax(1) == y).mean())
    assert accs[0] is not None and accs[0].metrics["top1"] == pytest.approx(top1)
    assert res.ratios()[1]["accuracy_pts"] == pytest.approx(
        100 * (accs[1].metrics["top1"] - accs[0].metrics["top1"])  # type: ignore[union-attr]
    )


def test_compare_layer_errors(tmp_path: Path, two_models: list[Path]) -> None:
    res = compare(
        two_models, rounds=1, per_round=1, warmup=0, isolated=False, noise=False, layers=3
    )
    [(name, rows)] = res.layer_errors.items()
    assert name == "m1.onnx" and rows and rows[0]["node"] in {"gap", "flat", "fc"}
    assert rows[0]["node"] == "fc"  # only the Gemm's weights differ between the two models
    assert CompareResult.from_dict(res.to_dict()).layer_errors == res.layer_errors
    from onnxfit.report.bench import compare_markdown

    assert "layer errors of m1.onnx vs m0.onnx" in compare_markdown(res)


def test_compare_rejects_bad_eval_folder(tmp_path: Path, two_models: list[Path]) -> None:
    with pytest.raises(InputError, match=r"neither labels\.tsv"):
        compare(two_models, eval_data=tmp_path, isolated=False, noise=False)


@pytest.mark.needs_data
@pytest.mark.slow
def test_compare_eval_on_shared_data(shared_data: Path) -> None:
    from onnxfit.verify.evaluator import evaluate_models as evaluate

    cls = evaluate(
        [shared_data / "models" / "shufflenet-v2-12-qdq.onnx"],
        shared_data / "imagenet-sample",
        limit=24,
    )[0]
    assert cls.task == "classify" and cls.samples == 24 and cls.metrics["top1"] > 0.5
    det = evaluate(
        [shared_data / "models" / "yolox_nano.onnx"], shared_data / "coco-sample", limit=6
    )[0]
    assert det.task == "detect" and det.samples == 6 and det.metrics["map50"] > 0.2


# ------------------------------------------------------------------------------- CLI


def _one_line_error(result: Any) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert lines[0].startswith("error: ")
    assert len(lines) <= 2 and all(ln.startswith(("error:", "hint:")) for ln in lines)
    return lines[0]


def test_cli_compare_bad_inputs(tmp_path: Path, two_models: list[Path]) -> None:
    runner = CliRunner()
    a, b = map(str, two_models)
    assert "no such file" in _one_line_error(
        runner.invoke(main, ["compare", a, str(tmp_path / "x.onnx")])
    )
    for bad in ("0", "x"):
        assert "bad batch size" in _one_line_error(
            runner.invoke(main, ["compare", a, b, "-b", bad])
        )
    assert "one batch size" in _one_line_error(runner.invoke(main, ["compare", a, b, "-b", "1,2"]))
    assert "--runtime" in _one_line_error(runner.invoke(main, ["compare", a, b, "--runtime", "x"]))
    assert "--names" in _one_line_error(runner.invoke(main, ["compare", a, b, "--names", "only"]))
    assert "--rounds" in _one_line_error(runner.invoke(main, ["compare", a, b, "--rounds", "0"]))


def test_cli_compare_markdown_and_html(tmp_path: Path, two_models: list[Path]) -> None:
    page = tmp_path / "c.html"
    out = CliRunner().invoke(
        main,
        [
            "compare",
            *map(str, two_models),
            "--target",
            "cpu",
            "--rounds",
            "2",
            "--per-round",
            "2",
            "--warmup",
            "0",
            "--in-process",
            "--markdown",
            "--html",
            str(page),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "| file size |" in out.stdout and "latency median" in out.stdout
    text = page.read_text()
    assert "m0.onnx" in text and 'src="data:image/png;base64,' in text
