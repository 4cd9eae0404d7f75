"""Shape-inference engines behind :func:`onnxfit.analysis.shapes.infer_shapes`.

* :func:`lifted_proto` serializes a model with its large initializers turned into typed graph
  inputs (their values are not needed to infer shapes), so that models above protobuf's 2 GiB
  limit can be inferred too; the model is left exactly as it was.
* :func:`onnx_infer`: ``onnx.shape_inference.infer_shapes`` (data propagation on).
* :func:`ort_symbolic_infer`: onnxruntime's symbolic shape inference (``auto_merge=True``), which
  knows the ``com.microsoft`` contrib ops (Gelu, FusedConv, QLinear*...) that ONNX does not.
* :func:`execution_infer`: the last resort when both leave shapes open and every graph input is
  static: the model runs once in onnxruntime (CPU) on made-up inputs with the unresolved values
  exposed as graph outputs, and their shapes are read off the results.
* :func:`merge` copies the inferred types back into the IR values, by name.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io

logger = logging.getLogger(__name__)

#: Initializers above this size are lifted out before serializing for shape inference.
BIG_TENSOR = 1024


def lifted_proto(model: ir.Model) -> onnx.ModelProto:
    """``model`` as a ModelProto whose big initializers are inputs (model left unchanged)."""
    graph = model.graph
    n_inputs = len(graph.inputs)
    lifted: list[tuple[ir.Value, ir.TensorProtocol]] = []
    try:
        for value in list(graph.initializers.values()):
            tensor = value.const_value
            if tensor is None or tensor.nbytes <= BIG_TENSOR:
                continue
            if value.shape is None:
                value.shape = ir.Shape(tensor.shape.numpy())
            if value.dtype is None:
                value.dtype = tensor.dtype
            lifted.append((value, tensor))
            graph.initializers.pop(str(value.name))
            value.const_value = None
            if value not in graph.inputs:
                graph.inputs.append(value)
        return io.to_proto(model)
    finally:
        kept = list(graph.inputs[:n_inputs])
        graph.inputs.clear()
        graph.inputs.extend(kept)
        for value, tensor in lifted:
            value.const_value = tensor
            graph.register_initializer(value)


def onnx_infer(proto: onnx.ModelProto, *, strict: bool) -> onnx.ModelProto:
    """ONNX shape inference (raises InferenceError / RuntimeError when it fails)."""
    return onnx.shape_inference.infer_shapes(
        proto, check_type=True, strict_mode=strict, data_prop=True
    )


def ort_symbolic_infer(proto: onnx.ModelProto) -> onnx.ModelProto | None:
    """onnxruntime's symbolic shape inference (partial results kept), or None when it fails.

    The steps of ``SymbolicShapeInference.infer_shapes`` are run one by one because that
    function writes ``sym_shape_infer_temp.onnx`` into the working directory (up to the model's
    size) whenever inference is incomplete — onnxfit writes nothing it was not asked to.
    """
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return None
    try:
        engine = SymbolicShapeInference(2**31 - 1, True, False, 0)
        engine._preprocess(proto)
        while engine.run_:
            engine._infer_impl()
        engine._update_output_from_vi()
        result = engine.out_mp_
    except Exception as exc:  # a third-party tool (and private steps): failure = no help
        logger.info("onnxruntime symbolic shape inference failed: %s", exc)
        return None
    return result if isinstance(result, onnx.ModelProto) else None


#: Name under which the engine that resolved the last shapes is kept in ``model.meta``.
ENGINE_KEY = "onnxfit.shape_engine"


def execution_infer(
    model: ir.Model, values: list[ir.Value]
) -> dict[str, tuple[ir.DataType, list[int]]] | None:
    """Run ``model`` once in onnxruntime (CPU) and return ``name -> (dtype, shape)`` of ``values``.

    Every graph input must be static (``None`` is returned otherwise, and whenever onnxruntime
    cannot build or run the model). Inputs are made up: floats 1.0, integers 0, booleans False;
    the shapes of values that do not depend on input *data* come out the same for any values.
    Only ``values`` (and the graph's own outputs) are exposed, so onnxruntime keeps just those
    alive beyond their last use; the model itself is left unchanged.
    """
    inputs = [v for v in model.graph.inputs if not v.is_initializer()]
    feeds: dict[str, np.ndarray] = {}
    for value in inputs:
        if value.dtype is None or value.shape is None or not value.shape.is_static():
            return None
        dims = [d if isinstance(d, int) else 0 for d in value.shape.dims]  # static: all ints
        try:
            dtype = value.dtype.numpy()
        except TypeError:
            return None
        fill = 1 if dtype.kind in "fc" else 0
        feeds[str(value.name)] = np.full(dims, fill, dtype=dtype)
    wanted = [str(v.name) for v in values if v.name]
    if not wanted:
        return {}
    try:
        import onnxruntime as ort

        proto = io.to_proto(model)
        have = {o.name for o in proto.graph.output}
        for name in wanted:
            if name not in have:
                proto.graph.output.append(onnx.ValueInfoProto(name=name))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(
            proto.SerializeToString(), opts, providers=["CPUExecutionProvider"]
        )
        results = session.run(wanted, feeds)
    except Exception as exc:  # onnxruntime's own errors (any class): no help from this engine
        logger.info("shape resolution by execution failed: %s", str(exc).splitlines()[0][:300])
        return None
    out: dict[str, tuple[ir.DataType, list[int]]] = {}
    for name, array in zip(wanted, results, strict=True):
        if isinstance(array, np.ndarray):
            out[name] = (ir.DataType.from_numpy(array.dtype), list(array.shape))
    return out


def apply_executed(values: list[ir.Value], shapes: dict[str, tuple[ir.DataType, list[int]]]) -> int:
    """Set the dtype and shape of each of ``values`` found in ``shapes``; returns how many."""
    n = 0
    for value in values:
        found = shapes.get(str(value.name))
        if found is None:
            continue
        dtype, dims = found
        if value.dtype in (None, ir.DataType.UNDEFINED):
            value.dtype = dtype
        value.shape = ir.Shape(dims)
        n += 1
    return n


def merge(model: ir.Model, inferred: onnx.ModelProto, *, only_missing: bool = False) -> None:
    """Copy inferred shapes/dtypes (main graph) into ``model``'s values, by name.

    ``only_missing`` leaves values that already have a static shape untouched.
    """
    types: dict[str, onnx.TypeProto] = {}
    for info in (*inferred.graph.value_info, *inferred.graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type
    values = [v for node in model.graph for v in node.outputs] + list(model.graph.outputs)
    for value in values:
        if only_missing and value.shape is not None and value.shape.is_static():
            continue
        _apply_type(value, types.get(str(value.name)))


def _apply_type(value: ir.Value, type_proto: onnx.TypeProto | None) -> None:
    if type_proto is None:
        return
    tensor_type = type_proto.tensor_type
    if tensor_type.elem_type and value.dtype in (None, ir.DataType.UNDEFINED):
        value.dtype = ir.DataType(tensor_type.elem_type)
    if tensor_type.HasField("shape"):
        dims: list[int | str | None] = []
        for d in tensor_type.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        value.shape = ir.Shape(dims)
