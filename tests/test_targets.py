"""Target profiles: built-ins, host detection, TOML custom targets, unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxfit.errors import InputError
from onnxfit.targets import (
    BUILTIN,
    Target,
    builtin_targets,
    cpu_features,
    get_target,
    has_vnni,
    load_target_file,
)


def test_builtins_are_frozen_and_named() -> None:
    targets = builtin_targets()
    assert [t.name for t in targets] == list(BUILTIN)
    with pytest.raises(AttributeError):
        targets[0].name = "x"  # type: ignore[misc]


def test_series_s_figures() -> None:
    s = get_target("xbox-series-s")
    assert s.peak("fp32") == pytest.approx(4.0e12)
    assert s.peak("fp16") == pytest.approx(8.0e12)
    assert s.memory_bandwidth == pytest.approx(224e9)
    assert s.memory_budget == 8 * 10**9
    assert s.providers[0] == "DmlExecutionProvider"
    assert s.default_precision == "fp16"
    assert s.worker_cores == 6


def test_series_x_faster_than_s() -> None:
    s, x = get_target("xbox-series-s"), get_target("xbox-series-x")
    assert x.peak("fp32") > 3 * s.peak("fp32")
    assert x.memory_budget > s.memory_budget


def test_cpu_detected() -> None:
    cpu = get_target("cpu")
    assert cpu.cpu_cores >= 1 and cpu.peak_fp32 > 0 and cpu.memory_budget > 0
    assert cpu.default_precision == ("int8" if has_vnni(cpu.features) else "fp32")


def test_cpu_features_parsing() -> None:
    text = "processor : 0\nflags : fpu sse avx2 fma avx512f avx512_vnni\n"
    feats = cpu_features(text)
    assert feats == ("avx2", "fma", "avx512f", "avx512_vnni")
    assert has_vnni(feats)
    assert not has_vnni(cpu_features("flags : sse avx2\n"))


def test_unknown_target_lists_known() -> None:
    with pytest.raises(InputError) as err:
        get_target("playstation")
    assert err.value.hint is not None and "xbox-series-s" in err.value.hint


def test_bad_precision() -> None:
    with pytest.raises(InputError):
        get_target("xbox-series-s").peak("fp8")


def test_toml_full(tmp_path: Path) -> None:
    p = tmp_path / "handheld.toml"
    p.write_text(
        """
name = "handheld"
device_kind = "gpu"
providers = ["DmlExecutionProvider"]
peak_fp32_tflops = 1.6
peak_fp16_tflops = 3.2
peak_int8_tflops = 6.4
memory_bandwidth_gbs = 88
memory_budget_gb = 4
cpu_cores = 4
default_precision = "fp16"
dispatch_overhead_s = 1e-5
"""
    )
    t = get_target(str(p))
    assert isinstance(t, Target)
    assert t.name == "handheld" and t.peak("fp16") == pytest.approx(3.2e12)
    assert t.memory_budget == 4 * 10**9 and t.providers == ("DmlExecutionProvider",)


def test_toml_base_override(tmp_path: Path) -> None:
    p = tmp_path / "s-tight.toml"
    p.write_text('base = "xbox-series-s"\nname = "s-tight"\nmemory_budget_gb = 1\n')
    t = load_target_file(p)
    assert t.name == "s-tight" and t.memory_budget == 10**9
    assert t.peak_fp32 == get_target("xbox-series-s").peak_fp32


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("name = 'x'\nbogus = 1\n", "unknown target field"),
        ("name = 'x'\n", "missing target field"),
        ("name = \n", "not valid TOML"),
        ("base = 'xbox-series-s'\ndefault_precision = 'fp8'\n", "default_precision"),
    ],
)
def test_toml_errors(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        load_target_file(p)
