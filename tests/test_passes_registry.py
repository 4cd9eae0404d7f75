"""The pass framework: registry, make_pass errors, run_passes reports."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
from onnx import helper as oh

from onnxfit.errors import InputError
from onnxfit.optimizer.registry import PASSES, make_pass, pass_options
from onnxfit.passes.base import OnnxfitPass, PassReport, count_ops, run_passes
from passes_util import model, ops, tensor, vinfo


def _tiny() -> ir.Model:
    return model(
        [oh.make_node("Identity", ["x"], ["i"]), oh.make_node("Add", ["i", "c"], ["y"])],
        [vinfo("x", [2])],
        [vinfo("y", [2])],
        [tensor("c", np.ones(2, np.float32))],
    )


def test_registry_names_and_classes() -> None:
    for name in ("cleanup", "fold-batchnorm", "fuse", "dequantize", "fp16"):
        assert name in PASSES
        assert issubclass(PASSES[name], OnnxfitPass)
        assert PASSES[name].name == name
        assert isinstance(PASSES[name](), ir.passes.InPlacePass)


def test_make_pass_unknown_name_lists_known() -> None:
    with pytest.raises(InputError) as err:
        make_pass("no-such-pass")
    assert err.value.hint is not None
    assert "cleanup" in err.value.hint and "fp16" in err.value.hint


def test_make_pass_unknown_option_lists_options() -> None:
    with pytest.raises(InputError) as err:
        make_pass("fp16", keep_io=True)
    assert "keep_io" in str(err.value)
    assert err.value.hint is not None and "keep_io_types" in err.value.hint


def test_make_pass_bad_option_value() -> None:
    with pytest.raises(InputError):
        make_pass("fuse", emit="everything")
    with pytest.raises(InputError):
        make_pass("dequantize", clip="sometimes")


def test_make_pass_options() -> None:
    p = make_pass("fp16", keep_io_types=False, block_list={"a"})
    assert p.keep_io_types is False  # type: ignore[attr-defined]
    assert pass_options("fuse") == {"emit": "none", "provider": "cpu"}
    assert "block_list" in repr(p)


def test_run_passes_reports_and_modified() -> None:
    m = _tiny()
    result, reports = run_passes(m, [make_pass("cleanup"), make_pass("fuse")])
    assert result.model is m and result.modified
    assert [r.name for r in reports] == ["cleanup", "fuse"]
    assert all(isinstance(r, PassReport) for r in reports)
    assert reports[0].stats["identities_removed"] == 1
    assert reports[0].to_dict()["modified"] is True
    assert ops(m) == ["Add"]
    assert count_ops(m) == {"Add": 1}


def test_run_passes_empty() -> None:
    m = _tiny()
    result, reports = run_passes(m, [])
    assert result.model is m and not result.modified and reports == []
