"""Planning for ``onnxfit optimize``: precision per target, pipeline, --passes, options."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.optimizer import OptimizeOptions, plan
from onnxfit.optimizer.plan import choose_precision, model_precision
from onnxfit.targets import XBOX_SERIES_S, XBOX_SERIES_X, Target, detect_cpu


def _cpu(features: tuple[str, ...]) -> Target:
    return replace(
        detect_cpu(),
        features=features,
        default_precision="int8" if "avx512_vnni" in features else "fp32",
    )


def _float_model(dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    np_dtype = np.float16 if dtype == TensorProto.FLOAT16 else np.float32
    w = numpy_helper.from_array(np.ones((4, 4), np_dtype), "W")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", dtype, ["batch", 4])],
        [helper.make_tensor_value_info("y", dtype, ["batch", 4])],
        [w],
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _qdq_model() -> onnx.ModelProto:
    """x -> Q -> DQ -> MatMul(DQ(int8 W)) -> y: a minimal QDQ INT8 model."""
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "zp"),
        numpy_helper.from_array(np.arange(16, dtype=np.int8).reshape(4, 4), "Wq"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ws"),
        numpy_helper.from_array(np.array(0, np.int8), "wzp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wzp"], ["W"], name="wdq"),
        helper.make_node("MatMul", ["xd", "W"], ["y"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "qdq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("target", [XBOX_SERIES_S, XBOX_SERIES_X])
def test_auto_picks_fp16_for_directml(target: Target) -> None:
    precision, reason = choose_precision(target)
    assert precision == "fp16"
    assert "DirectML" in reason and "INT8" in reason


def test_auto_picks_fp16_for_cuda() -> None:
    cuda = replace(XBOX_SERIES_S, name="cuda", providers=("CUDAExecutionProvider",))
    precision, reason = choose_precision(cuda)
    assert precision == "fp16" and "tensor cores" in reason


def test_auto_picks_int8_on_vnni_cpu_and_fp32_without() -> None:
    assert choose_precision(_cpu(("avx2", "avx512_vnni")))[0] == "int8"
    precision, reason = choose_precision(_cpu(("avx2", "fma")))
    assert precision == "fp32" and "no VNNI" in reason


def test_forced_precision_says_so() -> None:
    precision, reason = choose_precision(XBOX_SERIES_S, "int8")
    assert precision == "int8" and "forced" in reason and "DirectML" in reason
    assert choose_precision(_cpu(()), "fp16")[0] == "fp16"


def test_default_pipeline_per_target() -> None:
    model = io.from_proto(_float_model())
    xbox = plan(model, "xbox-series-s")
    assert xbox.pass_names == ["cleanup", "fold-batchnorm", "fuse", "fp16"]
    assert xbox.steps[2].options == {"emit": "none"}  # portable for DirectML
    assert xbox.lossy_index == 3
    cpu = plan(model, _cpu(("avx512_vnni",)))
    assert cpu.pass_names[-1] == "int8" and cpu.precision == "int8"
    assert cpu.steps[-1].options["activation_type"] == "uint8"
    fp32 = plan(model, "xbox-series-s", precision="fp32")
    assert fp32.pass_names == ["cleanup", "fold-batchnorm", "fuse"]
    assert fp32.lossy_index is None


def test_int8_input_is_dequantized_for_fp16_and_kept_for_int8() -> None:
    model = io.from_proto(_qdq_model())
    assert model_precision(model) == "int8"
    xbox = plan(model, "xbox-series-s")
    assert xbox.pass_names == ["cleanup", "dequantize", "fold-batchnorm", "fuse", "fp16"]
    assert xbox.dequantizes
    same = plan(model, _cpu(("avx512_vnni",)))
    assert "dequantize" not in same.pass_names and same.lossy_index is None
    assert any("already INT8" in n for n in same.notes)


def test_fp16_input_cannot_go_to_int8() -> None:
    model = io.from_proto(_float_model(TensorProto.FLOAT16))
    assert model_precision(model) == "fp16"
    assert plan(model, "xbox-series-s").lossy_index is None
    with pytest.raises(InputError, match="already FP16"):
        plan(model, "xbox-series-s", precision="int8")


def test_passes_override_and_unknown_pass() -> None:
    model = io.from_proto(_float_model())
    p = plan(model, "xbox-series-s", passes="cleanup, fp16")
    assert p.pass_names == ["cleanup", "fp16"] and p.precision == "fp16"
    assert plan(model, "xbox-series-s", passes=["cleanup"]).precision == "fp32"
    with pytest.raises(InputError, match="unknown pass 'nope'") as exc:
        plan(model, "xbox-series-s", passes="cleanup,nope")
    assert exc.value.hint is not None and "fold-batchnorm" in exc.value.hint
    with pytest.raises(InputError, match="--precision int8"):
        plan(model, "xbox-series-s", passes="cleanup,fp16", precision="int8")


def test_fusedconv_refused_for_directml() -> None:
    model = io.from_proto(_float_model())
    with pytest.raises(InputError, match="DirectML"):
        plan(model, "xbox-series-s", precision="fp32", fuse="fusedconv")
    p = plan(model, _cpu(()), precision="fp32", fuse="fusedconv")
    assert p.steps[2].options == {"emit": "fusedconv", "provider": "cpu"}


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"max_accuracy_drop": -1.0}, "max-accuracy-drop"),
        ({"max_accuracy_drop": float("nan")}, "max-accuracy-drop"),
        ({"calib_count": 0}, "calib-count"),
        ({"max_rounds": -1}, "max-rounds"),
        ({"precision": "int4"}, "precision"),
        ({"passes": " , "}, "--passes is empty"),
        ({"bogus": 1}, "unknown optimize option"),
    ],
)
def test_bad_options(values: dict[str, object], match: str) -> None:
    with pytest.raises(InputError, match=match):
        OptimizeOptions.build(**values)


def test_cosine_floor_follows_budget() -> None:
    assert OptimizeOptions.build(max_accuracy_drop=1.0).cosine_floor == pytest.approx(0.99)
    assert OptimizeOptions.build(max_accuracy_drop=0.0).cosine_floor == 1.0
    assert OptimizeOptions.build(min_cosine=0.5).cosine_floor == 0.5


def test_plan_to_dict() -> None:
    d = plan(io.from_proto(_float_model()), "xbox-series-s").to_dict()
    assert d["precision"] == "fp16" and d["model_precision"] == "fp32"
    assert [s["name"] for s in d["steps"]] == ["cleanup", "fold-batchnorm", "fuse", "fp16"]
    assert all(s["why"] for s in d["steps"])
