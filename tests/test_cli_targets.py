"""`onnxfit targets` and the CLI's shared behaviour (one-line errors, exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from onnxfit.cli import main


def test_targets_table() -> None:
    res = CliRunner().invoke(main, ["targets"])
    assert res.exit_code == 0, res.output
    for name in ("xbox-series-s", "xbox-series-x", "cpu", "cuda"):
        assert name in res.output


def test_targets_json() -> None:
    res = CliRunner().invoke(main, ["targets", "xbox-series-s", "--json"])
    assert res.exit_code == 0
    data = json.loads(res.output)
    assert data[0]["name"] == "xbox-series-s" and data[0]["peak_fp16"] == 8e12


def test_unknown_target_is_one_line_exit_2() -> None:
    res = CliRunner().invoke(main, ["targets", "nes"])
    assert res.exit_code == 2
    assert "Traceback" not in res.output
    assert res.output.splitlines()[0] == "error: unknown target 'nes'"


def test_custom_toml(tmp_path: Path) -> None:
    p = tmp_path / "t.toml"
    p.write_text('base = "cpu"\nname = "mine"\ncpu_cores = 3\n')
    res = CliRunner().invoke(main, ["targets", str(p), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["cpu_cores"] == 3


def test_help_lists_commands() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert res.exit_code == 0
    assert "targets" in res.output and "Examples" in res.output
