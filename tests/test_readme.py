"""The README's Python API example runs as written (against ../shared/data)."""

from __future__ import annotations

import os
import re
import runpy
from pathlib import Path

import pytest

from conftest import shufflenet_qdq_top1

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.needs_data
@pytest.mark.slow
def test_readme_api_example_runs(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    text = README.read_text()
    block = re.search(r"```python\n(import numpy as np.*?)```", text, re.S)
    assert block, "README has no Python API example"
    code = block.group(1).replace('DATA = "../shared/data"', f"DATA = {str(shared_data)!r}")
    script = tmp_path / "example.py"
    script.write_text(code)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
    out = capsys.readouterr().out
    assert "11689512 True" in out  # parameters and the fit verdict
    assert "fp16 0.499" in out  # FP16 chosen for the console; half the file
    # ShuffleNetV2 on the 500-image ImageNet sample: 0.778 on a VNNI CPU (README), 0.714 on an
    # AVX2-only one (conftest.shufflenet_qdq_top1)
    assert f"'top1': {shufflenet_qdq_top1() / 100:.3f}" in out
    assert (tmp_path / "resnet18-xbox.deploy.json").is_file()
    assert os.path.getsize(tmp_path / "resnet18-xbox.onnx") > 0


def test_public_names_are_not_shadowed_by_submodules() -> None:
    """Importing every CLI module must not turn an exported function into a module object."""
    import importlib
    import types

    import onnxfit
    from onnxfit.cli import _COMMANDS

    for spec in _COMMANDS.values():
        importlib.import_module(spec.split(":")[0])
    shadowed = [n for n in onnxfit.__all__ if isinstance(getattr(onnxfit, n), types.ModuleType)]
    assert shadowed == []
