"""DirectML pre-flight: fallbacks from ORT's DirectML operator table, copies, graph capture."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from click.testing import CliRunner
from onnx import TensorProto as T
from onnx import helper as h

from onnxfit import io, zoo
from onnxfit.analysis.directml import DmlPreflight, directml_preflight, dml_table
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.cli import main

REPO = Path(__file__).resolve().parents[1]


def _model(nodes: list, *, opset: int = 17, inits: list | None = None, dtype: int = T.FLOAT,
           shape: list | None = None) -> ir.Model:  # fmt: skip
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", dtype, shape or ["N", 3, 8, 8])],
        [h.make_tensor_value_info("y", dtype, None)],
        inits or [],
    )
    return ir.from_proto(h.make_model(g, opset_imports=[h.make_opsetid("", opset)]))


def _conv_w(dtype: type = np.float32) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), dtype), "W")


def _preflight(m: ir.Model) -> DmlPreflight:
    return directml_preflight(infer_shapes(m, batch=1), original=m)


def _hardswish_model() -> ir.Model:
    return _model(
        [
            h.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            h.make_node("HardSwish", ["c"], ["hs"], name="hswish"),
            h.make_node("Relu", ["hs"], ["y"], name="relu"),
        ],
        inits=[_conv_w()],
    )


def test_table_names_its_source_and_ranges() -> None:
    t = dml_table()
    assert t["source"]["commit"] == "7e729660b28137da5e28e3309923b1cbb2b07610"
    conv = sorted((r["since"], r["until"]) for r in t["by_op"][("", "Conv")])
    assert conv == [(1, 10), (11, 21)]  # ONNX Conv 22 is not registered by DirectML
    assert ("", "HardSwish") not in t["by_op"]


def test_unregistered_op_is_named_and_turns_graph_capture_off() -> None:
    p = _preflight(_hardswish_model())
    assert [n.name for n in p.fallback] == ["hswish"]
    assert "not registered by DirectML" in p.fallback[0].reason
    assert not p.all_on_dml and p.on_dml == 2
    assert len(p.copies) == 2 and "hs: HardSwish on CPU -> Relu on GPU" in p.copies
    assert not p.graph_capture and "Memcpy" in p.capture_blockers[0]
    assert [(d.symbol, d.pinned) for d in p.dynamic_dims] == [("N", 1)]


def test_opset_dtype_and_query_fallbacks() -> None:
    conv = [h.make_node("Conv", ["x", "W"], ["y"], name="conv22", pads=[1, 1, 1, 1])]
    p = _preflight(_model(conv, opset=22, inits=[_conv_w()]))
    assert [n.name for n in p.fallback] == ["conv22"]
    assert "1-10, 11-21" in p.fallback[0].reason and "opset 22" in p.fallback[0].reason
    relu = [h.make_node("Relu", ["x"], ["y"], name="relu64")]
    p = _preflight(_model(relu, dtype=T.DOUBLE))
    assert "double" in p.fallback[0].reason and "float16" in p.fallback[0].reason
    pool = [h.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2], storage_order=1)]
    p = _preflight(_model(pool))
    assert p.fallback[0].name == "mp" and "storage_order" in p.fallback[0].reason
    ok = [h.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2])]
    assert _preflight(_model(ok)).all_on_dml


def test_shape_subgraph_folds_and_data_dependent_shapes_block_capture() -> None:
    # Shape -> Reshape's shape input: constant-folded with static shapes, so no copy
    nodes = [
        h.make_node("Shape", ["x"], ["s"], name="shape"),
        h.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
        h.make_node("Relu", ["r"], ["y"], name="relu"),
    ]
    p = _preflight(_model(nodes))
    assert p.removed == 1 and p.graph_capture and not p.copies
    nz = [
        h.make_node("NonZero", ["x"], ["nz"], name="nz"),
        h.make_node("Cast", ["nz"], ["y"], name="cast", to=T.FLOAT),
    ]
    p = _preflight(_model(nz, shape=[1, 3, 8, 8]))
    assert p.all_on_dml and not p.graph_capture
    assert any("data-dependent" in b for b in p.capture_blockers)


@pytest.mark.parametrize("name", ["resnet18", "yolov3-tiny"])
def test_zoo_models_run_fully_on_directml(name: str) -> None:
    p = _preflight(zoo.build(name))
    assert p.all_on_dml and not p.fallback and not p.conditional
    assert p.graph_capture and not p.copies
    assert p.on_dml + p.removed == p.nodes


def test_inspect_cli_reports_the_preflight(tmp_path: Path) -> None:
    path = tmp_path / "hs.onnx"
    io.save(_hardswish_model(), path)
    res = CliRunner().invoke(main, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)["directml"]
    assert d["fallback"][0]["name"] == "hswish" and d["graph_capture"] is False
    assert d["pin"] == {"N": 1}
    res = CliRunner().invoke(main, ["inspect", str(path), "--top", "0"])
    assert "fall back to the CPU: hswish (HardSwish)" in res.stdout
    assert "graph capture OFF" in res.stdout
    cpu = CliRunner().invoke(main, ["inspect", str(path), "--json", "--target", "cpu"])
    assert json.loads(cpu.stdout)["directml"] is None


def test_generator_parses_the_registration_table() -> None:
    spec = importlib.util.spec_from_file_location("gen", REPO / "tools" / "gen_dml_ops.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    src = """
    enum class SupportedTensorDataTypes : uint64_t {
        Float32 = 1LLU<<1, Float16 = 1LLU<<12, Int8 = 1LLU<<5,
        Float16to32 = Float16|Float32,
    };
    constexpr static std::array<const char*, 1> typeNameListDefault = {"T"};
    constexpr static std::array<SupportedTensorDataTypes, 1> supportedTypeListF = {SupportedTensorDataTypes::Float16to32};
    constexpr static OperatorRegistrationInformation operatorRegistrationInformationTable[] =
    {
        {REG_INFO( 7, Relu, typeNameListDefault, supportedTypeListF, DmlGraphSupport::Supported)},
    #if DML_TARGET_VERSION >= 0x6400
        {REG_INFO_VER( 11, Resize, typeNameListDefault, supportedTypeListF, DmlGraphSupport::Supported, requiredConstantCpuInputs(1, 2, 3), std::nullopt, QueryResize)},
    #endif
    };
    """  # noqa: E501
    enum = gen.parse_enum(src)
    assert enum["Float16to32"] == {"FLOAT", "FLOAT16"}
    _, types = gen.parse_lists(src, enum)
    rows = gen.parse_table(src)
    assert [(r["op"], r["opset"], r["guard"]) for r in rows] == [
        ("Relu", 7, ""),
        ("Resize", 11, "DML_TARGET_VERSION >= 0x6400"),
    ]
    assert rows[1]["cpu_inputs"] == [1, 2, 3] and rows[1]["query"] == "QueryResize"
    assert types["supportedTypeListF"] == [{"FLOAT", "FLOAT16"}]
