"""Real models of the corpus (``benchmarks/corpus.json``), when a copy is at hand.

The models live outside the repository, in ``$ONNXFIT_CORPUS`` (rebuilt by
``benchmarks/corpus_build.py``); without that variable these tests are skipped. The full run
over every model is ``benchmarks/bench_corpus.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from onnxfit.analysis.inspect import inspect

ROOT = Path(__file__).resolve().parents[1]
CORPUS = os.environ.get("ONNXFIT_CORPUS")
pytestmark = pytest.mark.skipif(
    not CORPUS,
    reason="ONNXFIT_CORPUS is not set (the real-model corpus; build it with "
    "benchmarks/corpus_build.py)",
)
#: small models inspect refused before (QOperator contrib ops, an opset-9 export whose shapes
#: are computed at run time) and one with external data
SMALL = ("mnist12_int8_qoperator", "yunet_qop", "ulfd_rfb_320", "smp_pan_extdata")


def _entries() -> dict[str, dict[str, object]]:
    models = json.loads((ROOT / "benchmarks" / "corpus.json").read_text())["models"]
    return {str(e["name"]): e for e in models}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_small_corpus_models_inspect(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    entry = _entries()[name]
    folder = Path(str(CORPUS))
    path = folder / name / f"{name}.onnx" if (folder / name).is_dir() else folder / f"{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} missing from $ONNXFIT_CORPUS (run benchmarks/corpus_build.py)")
    if "derived_from" not in entry["source"]:  # type: ignore[operator]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    monkeypatch.chdir(Path(__file__).parent)  # external data is never read from the cwd
    result = inspect(path, target="cpu")
    assert result.shape_engine in ("onnx", "ort-symbolic", "execution")
    assert result.flops > 0 and not result.cost.unknown_ops
