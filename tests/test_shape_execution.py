"""Shape resolution by execution: what static inference leaves open, one ORT run resolves."""

from __future__ import annotations

import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from onnxfit.analysis.inspect import inspect
from onnxfit.analysis.shapes import infer_shapes, shape_engine
from onnxfit.errors import InputError


def _computed_shape_model(x_shape: list[int | str]) -> ir.Model:
    """z = Relu(ConstantOfShape(ceil(shape(x) / 2))): neither ONNX nor ORT's symbolic
    inference follows Shape -> Cast -> Div -> Ceil -> Cast, so z's shape stays open."""
    nodes = [
        h.make_node("Shape", ["x"], ["s"]),
        h.make_node("Cast", ["s"], ["sf"], to=T.FLOAT),
        h.make_node("Div", ["sf", "two"], ["d"]),
        h.make_node("Ceil", ["d"], ["c"]),
        h.make_node("Cast", ["c"], ["ci"], to=T.INT64),
        h.make_node("ConstantOfShape", ["ci"], ["y"]),
        h.make_node("Relu", ["y"], ["z"]),
    ]
    graph = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
        [h.make_tensor_value_info("z", T.FLOAT, None)],
        [h.make_tensor("two", T.FLOAT, [], [2.0])],
    )
    return ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))


def test_static_inputs_resolve_by_execution() -> None:
    out = infer_shapes(_computed_shape_model([1, 4, 7]))
    assert shape_engine(out) == "execution"
    assert list(out.graph.outputs[0].shape.dims) == [1, 2, 4]
    assert out.graph.outputs[0].dtype == ir.DataType.FLOAT


def test_input_shape_makes_a_symbolic_model_executable() -> None:
    model = _computed_shape_model([1, 4, "w"])
    with pytest.raises(InputError, match="unresolved"):
        infer_shapes(model)  # a symbolic input: nothing to run with
    out = infer_shapes(model, input_shapes={"x": [1, 6, 10]})
    assert shape_engine(out) == "execution"
    assert list(out.graph.outputs[0].shape.dims) == [1, 3, 5]


def test_plain_models_say_onnx_and_inspect_reports_the_engine() -> None:
    graph = h.make_graph(
        [h.make_node("Relu", ["x"], ["y"])],
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 3])],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
    )
    plain = ir.serde.deserialize_model(h.make_model(graph, opset_imports=[h.make_opsetid("", 17)]))
    assert shape_engine(infer_shapes(plain)) == "onnx"
    result = inspect(_computed_shape_model([1, 4, 8]), target="cpu")
    assert result.shape_engine == "execution"
    assert result.to_dict(nodes=False)["shape_engine"] == "execution"
