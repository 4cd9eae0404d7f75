"""INT8 quantization through ``onnxruntime.quantization``: static QDQ and dynamic.

Static INT8 is three steps, each usable alone (DESIGN habit 3)::

    prepare_for_quantization(model)              -> prepared fp32 model (opset >= 13, BN folded,
                                                    shapes inferred, every node named)
    ranges.collect_ranges(prepared, data)        -> Ranges (activation ranges by tensor name)
    quantize_with_ranges(prepared, ranges, ...)  -> QDQ int8 model

:class:`Int8StaticPass` runs all three. Its rewrites: weights of Conv/Gemm/MatMul/... become
int8 initializers behind ``DequantizeLinear`` (per output channel by default), and activations
get ``QuantizeLinear -> DequantizeLinear`` pairs (uint8 by default); nodes named in
``nodes_to_exclude`` stay float (the back-off list). :class:`Int8DynamicPass` wraps
``quantize_dynamic`` (weights int8, activations quantized at run time) for MatMul-heavy models.

Choices and the facts behind them (``../shared/FINDINGS.md``, measured with ORT 1.32 on the
project's AVX-512 VNNI CPU):

* ``activation_type="uint8"`` by default: with int8 activations (S8S8) ORT ran 11 of ResNet-18's
  20 convolutions as DequantizeLinear -> fp32 Conv -> QuantizeLinear (about 1.0x fp32); U8S8 makes
  every conv an int8 kernel (3.2-4.6 ms vs 8.2 ms).
* The model is converted to opset >= 13 first: ``quantize_static(per_channel=True)`` on opset < 13
  writes a DequantizeLinear with an ``axis`` attribute that ORT refuses to load.
* ``quant_pre_process`` runs with ``auto_merge=True`` (YOLOv3-tiny fails symbolic shape inference
  without it) and, on failure, again without symbolic shape inference. ORT's symbolic shape
  inference writes ``sym_shape_infer_temp.onnx`` (+ a ~35 MB ``.data``) into the *current
  directory* when it fails, so ``quant_pre_process`` runs with the working directory set to a
  private temporary folder (guarded by a lock), which is removed afterwards, success or failure.
  Every other ORT tool call gets explicit paths in a temporary folder, removed the same way.

Models go to ORT's tools as files in that temporary folder (written with :func:`onnxfit.io.save`)
and come back through :func:`onnxfit.io.load_proto` / :func:`onnxfit.io.from_proto`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import onnx
import onnx.inliner
import onnx_ir as ir
from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

from onnxfit import atomic, io
from onnxfit.data.calibration import CalibrationData, synthetic_inputs
from onnxfit.errors import InputError
from onnxfit.passes.base import OnnxfitPass, count_ops
from onnxfit.passes.quantizer_guard import quantize_keeping_failures_float
from onnxfit.passes.ranges import METHODS, Method, Ranges, collect_ranges, default_op_types
from onnxfit.runtime.ort_errors import quiet_ort

logger = logging.getLogger(__name__)

QType = Literal["uint8", "int8"]
_QTYPES = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
#: quantize_static(per_channel=True) needs DequantizeLinear's ``axis`` (opset 13).
MIN_OPSET = 13
_Q_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
_CWD_LOCK = threading.Lock()


@contextlib.contextmanager
def scratch_dir(*, chdir: bool = False, kind: str = "int8") -> Iterator[Path]:
    """A temporary folder, removed on exit (success or failure).

    ``chdir=True`` also makes it the working directory while inside: ORT's symbolic shape
    inference writes ``sym_shape_infer_temp.onnx`` (+ ``.data``) into the working directory when
    it fails (onnxruntime/tools/symbolic_shape_infer.py, ``infer_shapes``). ``chdir`` is
    process-wide, so that use holds a lock, and only :func:`prepare_for_quantization` asks for it.
    """
    with contextlib.ExitStack() as stack:
        if chdir:
            stack.enter_context(_CWD_LOCK)
        tmp = Path(stack.enter_context(atomic.temp_dir(kind)))
        if chdir:
            stack.enter_context(contextlib.chdir(tmp))
        yield tmp


def _opset(proto: onnx.ModelProto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _read_back(path: Path) -> ir.Model:
    return io.from_proto(io.load_proto(path))


def _name_nodes(proto: onnx.ModelProto) -> int:
    """Give every unnamed node a unique name (back-off lists refer to nodes by name)."""
    used = {n.name for n in proto.graph.node if n.name}
    named = 0
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
            named += 1
    return named


def prepare_for_quantization(
    model: ir.Model, *, min_opset: int = MIN_OPSET, auto_merge: bool = True, optimize: bool = True
) -> ir.Model:
    """A copy of ``model`` ready for quantization: local functions inlined, opset >=
    ``min_opset``, nodes named, and ``quant_pre_process`` applied (symbolic shape inference,
    ORT BASIC graph optimization: BatchNormalization folded into Conv, constants folded).
    ``model`` is not changed.
    """
    proto = io.to_proto(model)
    if len(proto.functions):  # onnx's version converter and ORT's quantizer drop functions
        proto = onnx.inliner.inline_local_functions(proto)
    opset = _opset(proto)
    if opset < min_opset:
        logger.info("converting opset %d -> %d before quantization", opset, min_opset)
        try:
            proto = onnx.version_converter.convert_version(proto, min_opset)
        except Exception as exc:  # the converter raises bare RuntimeErrors/ValueErrors
            raise InputError(
                f"cannot convert the model from opset {opset} to {min_opset} for INT8 ({exc})",
                hint="re-export the model at opset 13 or newer",
            ) from None
    _name_nodes(proto)
    quiet_ort()  # ORT's tools make their own sessions, on the default logger
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with scratch_dir(chdir=True) as tmp:
        src, dst = tmp / "input.onnx", tmp / "prepared.onnx"
        io.save(proto, src, force=True)
        try:
            quant_pre_process(
                str(src), str(dst), auto_merge=auto_merge, skip_optimization=not optimize
            )
        except Exception as exc:  # ORT raises bare Exception("Incomplete symbolic shape ...")
            logger.warning(
                "quant_pre_process with symbolic shape inference failed (%s); "
                "retrying with ONNX shape inference only",
                exc,
            )
            dst.unlink(missing_ok=True)
            quant_pre_process(
                str(src), str(dst), skip_symbolic_shape=True, skip_optimization=not optimize
            )
        prepared = _read_back(dst)
    return prepared


def quantize_with_ranges(
    prepared: ir.Model,
    ranges: Ranges,
    *,
    per_channel: bool = True,
    activation_type: QType = "uint8",
    weight_type: QType = "int8",
    nodes_to_exclude: Sequence[str] = (),
    op_types: Sequence[str] | None = None,
    reduce_range: bool = False,
) -> ir.Model:
    """QDQ-quantize ``prepared`` (from :func:`prepare_for_quantization`) with ``ranges``.

    The ranges reach ``quantize_static`` through ORT's calibration cache file, so no calibration
    runs here. ``nodes_to_exclude`` names nodes of ``prepared`` that stay float.
    """
    _check_types(activation_type, weight_type)
    quiet_ort()
    proto = io.to_proto(prepared)
    if per_channel and _opset(proto) < MIN_OPSET:
        raise InputError(
            f"per-channel INT8 needs opset >= {MIN_OPSET}, the model has {_opset(proto)}",
            hint="run prepare_for_quantization(model) first",
        )
    unknown = sorted(set(nodes_to_exclude) - {n.name for n in proto.graph.node})
    if unknown:
        logger.warning("nodes_to_exclude names nodes not in the model: %s", unknown[:5])
    with scratch_dir() as tmp:
        src, dst, cache = tmp / "prepared.onnx", tmp / "int8.onnx", tmp / "ranges.json"
        io.save(proto, src, force=True)
        ranges.write_cache(cache)

        def quantize(excluded: list[str]) -> None:
            dst.unlink(missing_ok=True)
            quantize_static(
                str(src),
                str(dst),
                calibration_data_reader=None,
                calibration_cache_path=str(cache),
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=(
                    list(op_types) if op_types is not None else default_op_types()
                ),
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=_QTYPES[activation_type],
                weight_type=_QTYPES[weight_type],
                nodes_to_exclude=excluded,
                calibrate_method=METHODS[ranges.method],
            )

        quantize_keeping_failures_float(quantize, nodes_to_exclude)
        return _read_back(dst)


def _check_types(activation_type: str, weight_type: str) -> None:
    for what, value in (("activation_type", activation_type), ("weight_type", weight_type)):
        if value not in _QTYPES:
            raise InputError(f"{what} must be uint8 or int8, not {value!r}")


def _replace_contents(model: ir.Model, new: ir.Model) -> None:
    """Make ``model`` hold ``new``'s graph (in-place pass contract); keep its metadata."""
    model.graph = new.graph
    model.ir_version = new.ir_version
    model.metadata_props.update(new.metadata_props)


_FLOATS = (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE)
_BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


def float_nodes(model: ir.Model, op_types: Sequence[str] | None = None) -> list[str]:
    """Names of quantizable nodes (``op_types``) that still read a float tensor (activation or
    weight, bias aside) not produced by a DequantizeLinear: they run in float (excluded,
    unsupported by ORT's quantizer, or without a range)."""
    wanted = set(op_types if op_types is not None else default_op_types()) - set(_Q_OPS)
    out = []
    for node in model.graph:
        if node.op_type not in wanted:
            continue
        bias = _BIAS_INPUT.get(node.op_type)
        for i, value in enumerate(node.inputs):
            if value is None or i == bias or value.dtype not in _FLOATS:
                continue
            producer = value.producer()
            if producer is None or producer.op_type != "DequantizeLinear":
                out.append(node.name or f"({node.op_type})")
                break
    return out


def _refuse_quantized(model: ir.Model) -> None:
    """:class:`InputError` when ``model`` is already quantized (quantizing twice is wrong)."""
    found = sorted(
        op
        for op in count_ops(model)
        if op in _Q_OPS or op.startswith("QLinear") or op in ("MatMulInteger", "ConvInteger")
    )
    if found:
        raise InputError(
            f"the model is already quantized ({', '.join(found)})",
            hint="run the dequantize pass first to re-quantize it, or keep it as it is",
        )


class Int8StaticPass(OnnxfitPass):
    """``int8``: static INT8 (QDQ): prepare, calibrate, quantize; the model is replaced in place.

    Options: ``calibration`` (data; ``None`` means seeded synthetic data, flagged in the stats
    as ``synthetic``), ``ranges`` (reuse :class:`Ranges` collected on the *prepared* model;
    skips calibration), ``method`` (minmax | entropy | percentile), ``activation_type``
    (uint8), ``weight_type`` (int8), ``per_channel`` (True), ``nodes_to_exclude`` (node names
    in the prepared model: the back-off list), ``op_types`` (default: all ORT can quantize),
    ``prepare`` (run :func:`prepare_for_quantization`; False when the input is prepared).
    After a call, ``self.ranges`` holds the ranges used, for a retry with more exclusions.

    Stats: ``method``, ``activation_type``, ``weight_type``, ``per_channel``, ``calibration``
    (source), ``calibration_samples``, ``calibration_skipped`` ("path: reason"), ``synthetic``
    (1 when calibrated on noise), ``excluded``, ``float_nodes`` (quantizable nodes left float),
    ``qdq_nodes``, ``ops`` (op histogram after).
    """

    name = "int8"
    portable = True  # plain ONNX QuantizeLinear/DequantizeLinear (DirectML runs them, slowly)

    def __init__(
        self,
        *,
        calibration: CalibrationData | None = None,
        ranges: Ranges | None = None,
        method: Method = "minmax",
        activation_type: QType = "uint8",
        weight_type: QType = "int8",
        per_channel: bool = True,
        nodes_to_exclude: Sequence[str] = (),
        op_types: Sequence[str] | None = None,
        percentile: float = 99.999,
        prepare: bool = True,
        reduce_range: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        _check_types(activation_type, weight_type)
        if method not in METHODS:
            raise InputError(
                f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}"
            )
        self.calibration = calibration
        self.ranges = ranges
        self.method: Method = method
        self.activation_type: QType = activation_type
        self.weight_type: QType = weight_type
        self.per_channel = per_channel
        self.nodes_to_exclude = tuple(nodes_to_exclude)
        self.op_types = tuple(op_types) if op_types is not None else None
        self.percentile = percentile
        self.prepare = prepare
        self.reduce_range = reduce_range
        self.seed = seed

    def run(self, model: ir.Model) -> bool:
        _refuse_quantized(model)
        prepared = prepare_for_quantization(model) if self.prepare else model
        ranges = self.ranges
        if ranges is None:
            data = self.calibration or synthetic_inputs(prepared, seed=self.seed)
            ranges = collect_ranges(
                prepared,
                data,
                method=self.method,
                op_types=self.op_types,
                percentile=self.percentile,
            )
            self.ranges = ranges
            self.stats["calibration"] = data.source
            self.stats["calibration_skipped"] = [f"{s.path}: {s.reason}" for s in data.skipped]
        quantized = quantize_with_ranges(
            prepared,
            ranges,
            per_channel=self.per_channel,
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            nodes_to_exclude=self.nodes_to_exclude,
            op_types=self.op_types,
            reduce_range=self.reduce_range,
        )
        _replace_contents(model, quantized)
        ops = count_ops(model)
        self.stats.update(
            method=ranges.method,
            activation_type=self.activation_type,
            weight_type=self.weight_type,
            per_channel=int(self.per_channel),
            calibration_samples=ranges.samples,
            synthetic=int(ranges.synthetic),
            excluded=list(self.nodes_to_exclude),
            float_nodes=float_nodes(model, self.op_types),
            qdq_nodes=sum(ops.get(op, 0) for op in _Q_OPS),
            ops=ops,
        )
        return True


class Int8DynamicPass(OnnxfitPass):
    """``int8-dynamic``: ``quantize_dynamic`` (int8 weights, activations quantized at run time).

    Meant for MatMul/Gemm-heavy models (transformers, MLPs); FINDINGS.md measured it 4-8x slower
    than fp32 on CNNs on this CPU, so the default ``op_types`` are MatMul and Gemm only. Not
    marked portable: DynamicQuantizeLinear / MatMulInteger on DirectML is unmeasured here.
    Stats: ``weight_type``, ``per_channel``, ``excluded``, ``qdq_nodes``, ``ops``.
    """

    name = "int8-dynamic"
    portable = False

    def __init__(
        self,
        *,
        weight_type: QType = "int8",
        per_channel: bool = False,
        op_types: Sequence[str] = ("MatMul", "Gemm"),
        nodes_to_exclude: Sequence[str] = (),
        prepare: bool = True,
    ) -> None:
        super().__init__()
        _check_types("uint8", weight_type)
        self.weight_type: QType = weight_type
        self.per_channel = per_channel
        self.op_types = tuple(op_types)
        self.nodes_to_exclude = tuple(nodes_to_exclude)
        self.prepare = prepare

    def run(self, model: ir.Model) -> bool:
        _refuse_quantized(model)
        prepared = prepare_for_quantization(model) if self.prepare else model
        with scratch_dir() as tmp:
            src, dst = tmp / "prepared.onnx", tmp / "int8.onnx"
            io.save(prepared, src, force=True)
            quantize_dynamic(
                str(src),
                str(dst),
                op_types_to_quantize=list(self.op_types),
                per_channel=self.per_channel,
                weight_type=_QTYPES[self.weight_type],
                nodes_to_exclude=list(self.nodes_to_exclude),
            )
            quantized = _read_back(dst)
        _replace_contents(model, quantized)
        ops = count_ops(model)
        self.stats.update(
            weight_type=self.weight_type,
            per_channel=int(self.per_channel),
            excluded=list(self.nodes_to_exclude),
            qdq_nodes=sum(ops.get(op, 0) for op in _Q_OPS),
            ops=ops,
        )
        return True
