"""The write guard: no command writes over one of its inputs (even with --force), nor over an
existing file without --force; leftovers of killed runs are removed on the next run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from onnxfit import atomic
from onnxfit.cli import main
from onnxfit.errors import InputError
from pipeline_util import colour_classifier, colour_image

pytestmark = pytest.mark.timeout(120)


def invoke(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def case(tmp_path: Path) -> tuple[Path, Path, Path]:
    model = colour_classifier(tmp_path / "colour.onnx")
    imgs = tmp_path / "imgs"
    for i, c in enumerate(["red", "green", "blue"]):
        colour_image(imgs / f"{i}_{c}.png", c)
    return model, imgs, imgs / "0_red.png"


@pytest.mark.parametrize("force", [False, True])
def test_run_refuses_to_write_over_its_model_or_an_input_image(case, force) -> None:
    model, imgs, image = case
    flags = ["--force"] if force else []
    for target, given in ((model, imgs), (image, imgs), (image, image)):
        before = target.read_bytes()
        r = invoke("run", model, given, "-o", target, *flags)
        assert r.exit_code == 2, r.output
        assert "refusing to write over an input" in r.stderr
        assert "Traceback" not in r.output
        assert target.read_bytes() == before


def test_run_refuses_an_existing_file_unless_force(case, tmp_path) -> None:
    model, imgs, _ = case
    out = tmp_path / "notes.txt"
    out.write_text("keep me")
    r = invoke("run", model, imgs, "-o", out)
    assert r.exit_code == 2 and "file exists" in r.stderr
    assert out.read_text() == "keep me"
    r = invoke("run", model, imgs, "-o", out, "--force")
    assert r.exit_code == 0, r.output
    assert out.read_text().count("\n") == 3


def test_draw_never_overwrites_an_input_and_picks_free_names(case, tmp_path) -> None:
    model, imgs, _ = case
    originals = {p.name: p.read_bytes() for p in imgs.iterdir()}
    other = tmp_path / "drawn"
    other.mkdir()
    (other / "1_green.jpg").write_bytes(b"not mine")
    for flags in ([], ["--force"]):
        r = invoke("run", model, imgs, "--draw", imgs, *flags, "-o", tmp_path / f"r{len(flags)}")
        assert r.exit_code == 0, r.output
        assert {p.name: p.read_bytes() for p in imgs.glob("*.png")} == originals
    r = invoke("run", model, imgs, "--draw", other, "-o", tmp_path / "r3")
    assert r.exit_code == 0, r.output
    assert (other / "1_green.jpg").read_bytes() == b"not mine"  # no --force: a free name
    assert (other / "1_green-1.jpg").stat().st_size > 0


def test_optimize_force_never_overwrites_the_input(case, tmp_path) -> None:
    model, _, _ = case
    before = model.read_bytes()
    r = invoke("optimize", model, "-o", model, "--precision", "fp16", "--force")
    assert r.exit_code == 2 and "refusing to write over an input" in r.stderr
    assert model.read_bytes() == before
    out = tmp_path / "small.onnx"
    sidecar = tmp_path / "small.report.json"
    sidecar.write_text("somebody else's")
    r = invoke("optimize", model, "-o", out, "--precision", "fp16")
    assert r.exit_code == 2 and "file exists" in r.stderr
    assert sidecar.read_text() == "somebody else's" and not out.exists()


def test_reports_and_zoo_refuse_inputs_and_existing_files(case, tmp_path) -> None:
    model, _, _ = case
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"x")
    r = invoke("inspect", model, "--target", "cpu", "--plot-memory", taken)
    assert r.exit_code == 2 and "file exists" in r.stderr
    assert taken.read_bytes() == b"x"
    r = invoke("bench", model, "--html", model, "--in-process", "-n", "1")
    assert r.exit_code == 2 and "input" in r.stderr
    r = invoke("zoo", "resnet18", "-o", taken)
    assert r.exit_code == 2 and "file exists" in r.stderr


def test_sweep_beside_removes_only_dead_runs_leftovers(tmp_path) -> None:
    out = tmp_path / "results.jsonl"
    dead, live = dead_pid(), os.getpid()
    stale = [
        tmp_path / f".results.jsonl.onnxfit-{dead}-abc.tmp",
        tmp_path / f"results.jsonl.onnxfit-{dead}.partial",
    ]
    kept = [
        tmp_path / f".results.jsonl.onnxfit-{live}-abc.tmp",  # a live run's
        tmp_path / "results.jsonl.partial.bak",  # not ours
        tmp_path / f".other.jsonl.onnxfit-{dead}-abc.tmp",  # another output's
    ]
    for p in stale + kept:
        p.write_text("x")
    assert sorted(atomic.sweep_beside(out)) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_sweep_temp_removes_old_folders_of_dead_processes(tmp_path) -> None:
    dead = dead_pid()
    old = tmp_path / f"onnxfit-calib-{dead}-xyz"
    fresh = tmp_path / f"onnxfit-calib-{dead}-new"
    live = tmp_path / f"onnxfit-int8-{os.getpid()}-abc"
    other = tmp_path / "onnxfit-notes"
    for d in (old, fresh, live, other):
        (d / "sub").mkdir(parents=True)
    past = time.time() - 2 * atomic.STALE_AFTER_S
    os.utime(old, (past, past))
    os.utime(live, (past, past))
    assert atomic.sweep_temp(tmp_path) == [old]
    assert fresh.exists() and live.exists() and other.exists()


def test_guard_sees_the_same_file_through_a_link(tmp_path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(b"model")
    link = tmp_path / "alias.onnx"
    os.link(src, link)
    with pytest.raises(InputError, match="input"):
        atomic.guard_output(link, inputs=[src], force=True)


def test_kill_9_during_run_leaves_no_output_and_the_next_run_cleans(case, tmp_path) -> None:
    model, imgs, _ = case
    many = tmp_path / "many"
    many.mkdir()
    for i in range(400):
        os.link(imgs / "0_red.png", many / f"{i:04d}.png")
    out = tmp_path / "results.jsonl"
    cmd = [sys.executable, "-m", "onnxfit", "run", str(model), str(many), "-o", str(out)]
    cmd += ["--batch", "1", "--threads", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not list(tmp_path.glob("results.jsonl.*.partial")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()  # never a partial file under the final name
    leftovers = list(tmp_path.glob("results.jsonl.*.partial"))
    assert leftovers, "the run was killed before it started writing"
    r = invoke("run", model, imgs, "-o", out)
    assert r.exit_code == 0, r.output
    assert out.exists() and not list(tmp_path.glob("results.jsonl.*.partial"))
