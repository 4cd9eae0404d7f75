"""``onnxfit optimize`` on the command line: output, JSON, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxfit.cli import main
from onnxfit.optimizer import sidecar_paths
from test_optimize import outlier_model, overflow_model, tiny_classifier

FAST = ["--measure-runs", "0"]


def _run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["optimize", *args])
    return result.exit_code, result.stdout, result.stderr


def test_help_has_examples() -> None:
    code, out, _ = _run("--help")
    assert code == 0
    assert "Examples:" in out and "--max-accuracy-drop" in out and "--calibrate" in out


def test_optimize_prints_plan_and_table(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "m-xbox.onnx"
    code, stdout, stderr = _run(str(src), "-o", str(out), "--target", "xbox-series-s", *FAST)
    assert code == 0, stderr
    assert "precision: fp16" in stderr and "fp16" in stderr  # the plan, before it runs
    for row in ("file size", "activation arena", "projected latency", "back-off"):
        assert row in stdout
    assert all(p.exists() for p in (out, *sidecar_paths(out)))


def test_json_output(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    code, stdout, _ = _run(
        str(src), "-o", str(out), "--precision", "fp32", "--target", "cpu", "--json", *FAST
    )
    assert code == 0
    data = json.loads(stdout)
    assert data["precision"] == "fp32" and data["gate"]["passed"] is True
    assert data["plan"]["steps"][0]["name"] == "cleanup"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--passes", "cleanup,bogus"], "unknown pass 'bogus'"),
        (["--max-accuracy-drop", "-2"], "--max-accuracy-drop"),
        (["--target", "ps5"], "unknown target"),
        (["--calib-count", "0"], "--calib-count"),
    ],
)
def test_bad_arguments_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    code, _, stderr = _run(str(src), "-o", str(out), *extra, *FAST)
    assert code == 2
    assert stderr.startswith("error:") and message in stderr
    assert not out.exists()


def test_empty_calibration_folder(tmp_path: Path) -> None:
    src = outlier_model(tmp_path / "m.onnx")
    empty = tmp_path / "calib"
    empty.mkdir()
    out = tmp_path / "o.onnx"
    code, _, stderr = _run(
        str(src), "-o", str(out), "--target", "cpu", "--precision", "int8",
        "--calibrate", str(empty), *FAST,
    )  # fmt: skip
    assert code == 2 and "no image files" in stderr and "hint:" in stderr
    assert not any(p.exists() for p in (out, *sidecar_paths(out)))


def test_eval_labels_must_match_classes(tmp_path: Path) -> None:
    """An eval folder whose labels exceed the model's class count is refused."""
    import numpy as np
    from PIL import Image

    src = tiny_classifier(tmp_path / "m.onnx")  # [N, 3, 32, 32] -> [N, 10]
    ev = tmp_path / "eval"
    ev.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(ev / "a.png")
    (ev / "labels.tsv").write_text("file\tclass_index\na.png\t999\n")
    out = tmp_path / "o.onnx"
    code, _, stderr = _run(
        str(src), "-o", str(out), "--eval", str(ev), "--preset", "imagenet", *FAST
    )
    assert code == 2 and "10 classes" in stderr
    assert not out.exists()


def test_verification_failure_exit_2_nothing_written(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    code, _, stderr = _run(
        str(src), "-o", str(out), "--max-accuracy-drop", "0", "--max-rounds", "0", *FAST
    )
    assert code == 2 and "nothing written" in stderr
    assert not any(p.exists() for p in (out, *sidecar_paths(out)))


def test_existing_output_needs_force(tmp_path: Path) -> None:
    src = overflow_model(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    out.write_bytes(b"old")
    code, _, stderr = _run(str(src), "-o", str(out), *FAST)
    assert code == 2 and "--force" in stderr and out.read_bytes() == b"old"
    code, _, _ = _run(str(src), "-o", str(out), "--force", *FAST)
    assert code == 0 and out.read_bytes() != b"old"


def test_does_not_fit_exits_3_and_writes_nothing(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "m.onnx")
    small = tmp_path / "small.toml"
    small.write_text('base = "xbox-series-s"\nname = "small"\nmemory_budget = 20000\n')
    out = tmp_path / "o.onnx"
    code, stdout, stderr = _run(str(src), "-o", str(out), "--target", str(small), "--json", *FAST)
    assert code == 3, stderr
    assert "DOES NOT FIT small" in stderr and "nothing written" in stderr
    assert "allow-over-budget" in stderr
    d = json.loads(stdout)  # the figures are still printed
    assert d["after"]["fits"] is False and d["written"] is False
    assert d["after"]["verdict"]["budget_bytes"] == 20000
    assert not any(p.exists() for p in (out, *sidecar_paths(out)))
    code, stdout, _ = _run(
        str(src), "-o", str(out), "--target", str(small), "--allow-over-budget", "--json", *FAST
    )
    assert code == 0 and json.loads(stdout)["written"] is True and out.exists()


def test_candidate_search_plot(tmp_path: Path) -> None:
    """--target cpu without --precision searches INT8 and FP32; --plot draws them."""
    src = tiny_classifier(tmp_path / "m.onnx")
    out, plot = tmp_path / "o.onnx", tmp_path / "cands.png"
    code, stdout, stderr = _run(
        str(src), "-o", str(out), "--target", "cpu", "--plot", str(plot), "--json", *FAST
    )
    assert code == 0, stderr
    report = json.loads(stdout)
    assert len(report["candidates"]) == 2
    assert sum(c["chosen"] for c in report["candidates"]) == 1
    assert plot.read_bytes().startswith(b"\x89PNG")
    taken = _run(str(src), "-o", str(tmp_path / "p.onnx"), "--plot", str(plot), *FAST)
    assert taken[0] == 2 and "file exists" in taken[2]


def test_pareto_front_keeps_only_undominated_points() -> None:
    from onnxfit.report.pareto import pareto_front

    pts = [(1.0, 5.0), (2.0, 1.0), (1.5, 6.0), (3.0, 0.5), (2.5, 1.0)]
    assert pareto_front(pts) == [0, 1, 3]
    assert pareto_front([]) == []


def test_candidate_search_tries_the_channel_levels_asked_for(tmp_path: Path) -> None:
    src = tiny_classifier(tmp_path / "m.onnx")
    out = tmp_path / "o.onnx"
    args = [str(src), "-o", str(out), "--target", "cpu", "--json", *FAST]
    code, stdout, stderr = _run(*args, "--search-channels", "0.25", "--max-accuracy-drop", "100")
    assert code == 0, stderr
    cands = json.loads(stdout)["candidates"]
    assert [c["label"].split(" (")[0] for c in cands][:2] == ["int8", "fp32"]
    pruned = cands[2]
    assert pruned["label"].endswith("+ 25% channels"), pruned
    # 8 channels per layer, kept counts rounded to 8: nothing can go, and it says so
    assert pruned["status"] == "refused" and "only 0.0% could be removed" in pruned["gate"]
    code, _, stderr = _run(*args, "--search-channels", "1.5")
    assert code == 2 and "--search-channels" in stderr


def test_channel_multiple_wave_is_the_targets_wave_size(tmp_path: Path) -> None:
    from onnxfit.cli.optimize_cmd import _channel_multiple

    assert _channel_multiple("wave", "xbox-series-s") == 32
    assert _channel_multiple("16", "cpu") == 16
    src = tiny_classifier(tmp_path / "m.onnx")
    code, _, stderr = _run(str(src), "-o", str(tmp_path / "o.onnx"), "--target", "cpu",
                           "--prune-channels", "0.25", "--channel-multiple", "wave")  # fmt: skip
    assert code == 2 and "names no GPU wave size" in stderr
    assert not (tmp_path / "o.onnx").exists()
