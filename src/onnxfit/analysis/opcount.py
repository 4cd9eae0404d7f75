"""FLOP and MAC formulas per ONNX op, used by :mod:`onnxfit.analysis.cost`.

:func:`kind_of` sorts a node into ``free`` (Shape, Size, Constant: resolved before the run),
``view`` (aliases its input: Reshape, Flatten, ...), ``move`` (copies data, 0 FLOPs),
``compute`` (has a formula here) or ``unknown``. :func:`count` returns ``(flops, macs)`` for a
compute node, or None when a shape it needs is missing.

Per-element counts are conventions, chosen to be small and stable: one FLOP for an add,
multiply, compare or select; four for a transcendental (exp, log, tanh, erf, sigmoid =
exp + add + reciprocal); BatchNormalization in inference is a folded scale and shift (2);
instance/layer/group normalization: mean 1, variance 3, normalize 2, affine 1 (7);
Softmax: max, subtract, exp, sum, divide (5, the exp counted as one here as in fvcore).
"""

from __future__ import annotations

import math

import onnx_ir as ir

from onnxfit.analysis.shapes import static_dims

_MS = "com.microsoft"
FREE_OPS = frozenset({"Shape", "Size", "Constant"})
VIEW_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
MOVE_OPS = frozenset(
    {
        "Transpose",
        "Concat",
        "Split",
        "Slice",
        "Gather",
        "GatherElements",
        "GatherND",
        "Tile",
        "Expand",
        "Pad",
        "DepthToSpace",
        "SpaceToDepth",
        "ScatterND",
        "ScatterElements",
        "Scatter",
        "ConstantOfShape",
        "NonZero",
        "ReverseSequence",
        "Trilu",
        "EyeLike",
        "Range",
        "OneHot",
        "QLinearConcat",
        "Col2Im",
        "CenterCropPad",
    }
)
#: Ops whose arithmetic is int8 by definition.
INT8_OPS = frozenset(
    {
        "QLinearConv",
        "ConvInteger",
        "MatMulInteger",
        "QLinearMatMul",
        "QLinearAdd",
        "QLinearMul",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConcat",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QGemm",
        "DynamicQuantizeMatMul",
    }
)

#: FLOPs per output element for elementwise ops (variadic ones: per extra input).
ELEMENTWISE: dict[str, int] = {
    **dict.fromkeys(
        [
            "Add",
            "Sub",
            "Mul",
            "Div",
            "Max",
            "Min",
            "Sum",
            "Mean",
            "Mod",
            "Abs",
            "Neg",
            "Relu",
            "Floor",
            "Ceil",
            "Round",
            "Sign",
            "Not",
            "And",
            "Or",
            "Xor",
            "BitwiseAnd",
            "BitwiseOr",
            "BitwiseXor",
            "BitwiseNot",
            "BitShift",
            "Equal",
            "Greater",
            "GreaterOrEqual",
            "Less",
            "LessOrEqual",
            "Where",
            "Reciprocal",
            "Sqrt",
            "Cast",
            "CastLike",
            "IsNaN",
            "IsInf",
            "ThresholdedRelu",
            "CumSum",
            "QLinearAdd",
            "QLinearMul",
        ],
        1,
    ),
    **dict.fromkeys(["LeakyRelu", "PRelu", "Clip", "Shrink", "QLinearLeakyRelu"], 2),
    **dict.fromkeys(["HardSigmoid", "Softsign"], 3),
    **dict.fromkeys(
        [
            "Sigmoid",
            "Tanh",
            "Exp",
            "Log",
            "Erf",
            "Softplus",
            "Elu",
            "Selu",
            "Celu",
            "HardSwish",
            "Pow",
            "Sin",
            "Cos",
            "Tan",
            "Asin",
            "Acos",
            "Atan",
            "Sinh",
            "Cosh",
            "Asinh",
            "Acosh",
            "Atanh",
            "QLinearSigmoid",
            "QuickGelu",
        ],
        4,
    ),
    **dict.fromkeys(["Gelu", "FastGelu", "Mish", "BiasGelu"], 8),
    "DequantizeLinear": 2,
    "QuantizeLinear": 4,
    "DynamicQuantizeLinear": 6,
}
_VARIADIC = frozenset({"Sum", "Mean", "Max", "Min"})
#: FLOPs per element of the first output.
NORMALIZATION: dict[str, int] = {
    "BatchNormalization": 2,
    "InstanceNormalization": 7,
    "LayerNormalization": 7,
    "GroupNormalization": 7,
    "SimplifiedLayerNormalization": 5,
    "SkipLayerNormalization": 8,
    "SkipSimplifiedLayerNormalization": 6,
    "MeanVarianceNormalization": 6,
    "LpNormalization": 3,
    "Softmax": 5,
    "QLinearSoftmax": 5,
    "LogSoftmax": 6,
    "Hardmax": 1,
}
#: FLOPs per element of the first input.
REDUCE: dict[str, int] = {
    **dict.fromkeys(
        ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1"], 1
    ),
    **dict.fromkeys(["ReduceL2", "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"], 2),
    **dict.fromkeys(["ArgMax", "ArgMin", "TopK", "GlobalAveragePool", "GlobalMaxPool"], 1),
    "GlobalLpPool": 2,
    "QLinearGlobalAveragePool": 1,
    "QLinearReduceMean": 1,
}
_POOL = frozenset({"MaxPool", "AveragePool", "LpPool", "QLinearAveragePool"})
_CONV_WEIGHT = {"Conv": 1, "ConvInteger": 1, "QLinearConv": 3, "FusedConv": 1, "NhwcConv": 1}
_MATMUL_A = frozenset(
    {"MatMul", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeMatMul", "FusedMatMul"}
)
_RNN_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_SPECIAL = frozenset(
    {"ConvTranspose", "Gemm", "FusedGemm", "QGemm", "Einsum", "Resize", "Upsample", "LRN"}
    | set(_RNN_GATES)
)
_KNOWN_MS = frozenset(
    {*INT8_OPS, "FusedConv", "FusedGemm", "FusedMatMul", "NhwcConv", "Gelu", "FastGelu"}
    | {"BiasGelu", "QuickGelu", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization"}
    | {"SimplifiedLayerNormalization", "QuantizeLinear", "DequantizeLinear"}
)


def kind_of(node: ir.Node) -> str:
    """``free``, ``view``, ``move``, ``compute`` or ``unknown`` for ``node``."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx") and (node.domain != _MS or op not in _KNOWN_MS):
        return "unknown"
    if op in FREE_OPS:
        return "free"
    if op in VIEW_OPS:
        return "view"
    if op in MOVE_OPS:
        return "move"
    if (
        op in ELEMENTWISE
        or op in NORMALIZATION
        or op in REDUCE
        or op in _POOL
        or op in _CONV_WEIGHT
        or op in _MATMUL_A
        or op in _SPECIAL
    ):
        return "compute"
    return "unknown"


_dims = static_dims


def _numel(value: ir.Value | None) -> int | None:
    dims = _dims(value)
    return None if dims is None else math.prod(dims)


def _input(node: ir.Node, i: int) -> ir.Value | None:
    return node.inputs[i] if len(node.inputs) > i else None


def _matmul(node: ir.Node) -> tuple[int, int] | None:
    a, out = _dims(_input(node, 0)), _numel(node.outputs[0])
    if a is None or out is None or not a:
        return None
    k = a[-1]
    if node.op_type == "FusedMatMul" and node.attributes.get_int("transA") and len(a) >= 2:
        k = a[-2]
    return 2 * out * k, out * k


def _gemm(node: ir.Node) -> tuple[int, int] | None:
    a, out = _dims(_input(node, 0)), _numel(node.outputs[0])
    if a is None or out is None or len(a) != 2:
        return None
    k = a[0] if node.attributes.get_int("transA", 0) else a[1]
    return 2 * out * k, out * k


def _conv(node: ir.Node) -> tuple[int, int] | None:
    w, out = _dims(_input(node, _CONV_WEIGHT[node.op_type])), _numel(node.outputs[0])
    if w is None or out is None:
        return None
    # Conv weight [M, C/group, k...]; NhwcConv keeps the same weight layout.
    macs = out * math.prod(w[1:])
    return 2 * macs, macs


def _conv_transpose(node: ir.Node) -> tuple[int, int] | None:
    x, w = _numel(_input(node, 0)), _dims(_input(node, 1))
    if x is None or w is None:
        return None
    # Each input element is scattered through C_out/group x kernel weights.
    macs = x * math.prod(w[1:])
    return 2 * macs, macs


def _einsum(node: ir.Node) -> tuple[int, int] | None:
    equation = node.attributes.get_string("equation", "") or ""
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if "..." in lhs or len(terms) != len(node.inputs):
        return None
    sizes: dict[str, int] = {}
    for term, value in zip(terms, node.inputs, strict=True):
        dims = _dims(value)
        if dims is None or len(dims) != len(term):
            return None
        sizes.update(zip(term, dims, strict=True))
    macs = math.prod(sizes.values()) if len(terms) > 1 else 0
    flops = 2 * macs if macs else math.prod(sizes.values())
    return flops, macs


def _rnn(node: ir.Node) -> tuple[int, int] | None:
    x, w, r = _dims(_input(node, 0)), _dims(_input(node, 1)), _dims(_input(node, 2))
    if x is None or w is None or r is None or len(x) != 3:
        return None
    steps = x[0] * x[1]  # seq x batch (layout 0); the product is the same for layout 1
    macs = steps * (math.prod(w) + math.prod(r))
    gates = _RNN_GATES[node.op_type]
    hidden = r[1] // gates if gates else r[1]
    elementwise = steps * w[0] * hidden * (gates * 4 + 3)
    return 2 * macs + elementwise, macs


def _resize(node: ir.Node) -> tuple[int, int] | None:
    x, y = _dims(_input(node, 0)), _dims(node.outputs[0])
    if x is None or y is None:
        return None
    out = math.prod(y)
    mode = node.attributes.get_string("mode", "nearest") or "nearest"
    spatial = max(1, sum(a != b for a, b in zip(x, y, strict=False)))
    if mode == "nearest":
        return out, 0
    taps = (4 if mode == "cubic" else 2) ** spatial
    return out * 2 * taps, 0


def _pool(node: ir.Node) -> tuple[int, int] | None:
    out = _numel(node.outputs[0])
    kernel = node.attributes.get_ints("kernel_shape", None)
    if out is None or not kernel:
        return None
    per = math.prod(kernel) * (2 if node.op_type == "LpPool" else 1)
    return out * per, 0


def count(node: ir.Node) -> tuple[int, int] | None:
    """(FLOPs, MACs) of a compute node; None if a needed shape is missing or op unknown."""
    op = node.op_type
    if op in _CONV_WEIGHT:
        return _conv(node)
    if op in _MATMUL_A:
        return _matmul(node)
    if op in ("Gemm", "FusedGemm", "QGemm"):
        return _gemm(node)
    if op == "ConvTranspose":
        return _conv_transpose(node)
    if op == "Einsum":
        return _einsum(node)
    if op in _RNN_GATES:
        return _rnn(node)
    if op in ("Resize", "Upsample"):
        return _resize(node)
    if op in _POOL:
        return _pool(node)
    if op in ELEMENTWISE:
        out = _numel(node.outputs[0])
        if out is None:
            return None
        extra = max(1, len([v for v in node.inputs if v is not None]) - 1)
        return out * ELEMENTWISE[op] * (extra if op in _VARIADIC else 1), 0
    if op in NORMALIZATION:
        out = _numel(node.outputs[0])
        return None if out is None else (out * NORMALIZATION[op], 0)
    if op in REDUCE:
        x = _numel(_input(node, 0))
        return None if x is None else (x * REDUCE[op], 0)
    if op == "LRN":
        out = _numel(node.outputs[0])
        size = node.attributes.get_int("size", 1)
        return None if out is None else (out * (2 * size + 3), 0)
    return None
