"""Cost model: exact counts on hand-built graphs, the roofline projection, the zoo figures."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io, zoo
from onnxfit.analysis.cost import CostReport, NodeCost, analyze_cost
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.errors import InputError
from onnxfit.targets import XBOX_SERIES_S, Target

F, H = TensorProto.FLOAT, TensorProto.FLOAT16
#: A made-up target with round numbers so that times can be checked by hand.
T = replace(
    XBOX_SERIES_S,
    name="round",
    peak_fp32=1e9,
    peak_fp16=2e9,
    peak_int8=4e9,
    memory_bandwidth=1e9,
    dispatch_overhead_s=1e-6,
)


def _cost(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[tuple[str, int, list[int]]],
    inits: Sequence[onnx.TensorProto] = (),
    *,
    outputs: Sequence[str] = ("y",),
    target: Target = T,
    precision: str | None = None,
    domains: Sequence[tuple[str, int]] = (),
) -> CostReport:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in inputs],
        [helper.make_tensor_value_info(o, 0, None) for o in outputs],
        list(inits),
    )
    opsets = [helper.make_opsetid("", 17), *(helper.make_opsetid(d, v) for d, v in domains)]
    model = io.from_proto(helper.make_model(graph, opset_imports=opsets))
    return analyze_cost(infer_shapes(model), target=target, precision=precision)


def _w(name: str, shape: Sequence[int], dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.ones(shape, dtype=dtype), name)


@pytest.fixture(scope="module")
def resnet() -> ir.Model:
    return zoo.resnet18()


def _one(report: CostReport) -> NodeCost:
    assert len(report.nodes) == 1
    return report.nodes[0]


def test_conv_groups_stride_pad() -> None:
    # x [1,4,8,8], w [6,2,3,3], group 2, stride 2, pad 1 -> y [1,6,4,4]
    n = _one(
        _cost(
            [
                helper.make_node(
                    "Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], pads=[1, 1, 1, 1]
                )
            ],
            [("x", F, [1, 4, 8, 8])],
            [_w("w", [6, 2, 3, 3])],
        )
    )
    macs = 6 * 4 * 4 * (2 * 3 * 3)
    assert (n.macs, n.flops) == (macs, 2 * macs)
    assert n.weight_bytes == 6 * 2 * 9 * 4
    assert n.bytes_read == (4 * 64 + 6 * 2 * 9) * 4
    assert n.bytes_written == 6 * 16 * 4
    assert n.known and n.precision == "fp32"


def test_conv_dilation_and_bias_and_depthwise() -> None:
    # dilation 2 on 7x7 with a 3x3 kernel -> 3x3 output; MACs = 9 outputs x 9 taps
    n = _one(
        _cost(
            [helper.make_node("Conv", ["x", "w", "b"], ["y"], dilations=[2, 2])],
            [("x", F, [1, 1, 7, 7])],
            [_w("w", [1, 1, 3, 3]), _w("b", [1])],
        )
    )
    assert n.macs == 81 and n.weight_bytes == 40
    # depthwise: group = channels = 8, 3x3, pad 1 on 5x5 -> 8*25 outputs x 9 taps
    n = _one(
        _cost(
            [helper.make_node("Conv", ["x", "w"], ["y"], group=8, pads=[1, 1, 1, 1])],
            [("x", F, [2, 8, 5, 5])],
            [_w("w", [8, 1, 3, 3])],
        )
    )
    assert n.macs == 2 * 8 * 25 * 9


def test_conv_transpose() -> None:
    n = _one(
        _cost(
            [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])],
            [("x", F, [1, 2, 3, 3])],
            [_w("w", [2, 3, 2, 2])],
        )
    )
    assert n.macs == 2 * 9 * 3 * 4  # each input element through C_out x k x k weights


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm(trans_a: int) -> None:
    a_shape = [5, 4] if trans_a else [4, 5]
    n = _one(
        _cost(
            [helper.make_node("Gemm", ["a", "b", "c"], ["y"], transA=trans_a, transB=1)],
            [("a", F, a_shape)],
            [_w("b", [3, 5]), _w("c", [3])],
        )
    )
    assert (n.macs, n.flops) == (4 * 3 * 5, 2 * 4 * 3 * 5)
    assert n.weight_bytes == (15 + 3) * 4


def test_batched_matmul() -> None:
    n = _one(
        _cost(
            [helper.make_node("MatMul", ["a", "b"], ["y"])],
            [("a", F, [2, 3, 4, 5]), ("b", F, [5, 6])],
        )
    )
    assert n.macs == 2 * 3 * 4 * 6 * 5 and n.weight_bytes == 0


def test_pooling() -> None:
    rep = _cost(
        [
            helper.make_node(
                "MaxPool", ["x"], ["p"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
            ),
            helper.make_node("GlobalAveragePool", ["x"], ["y"]),
        ],
        [("x", F, [1, 2, 8, 8])],
        outputs=("p", "y"),
    )
    pool, gap = rep.nodes
    assert pool.flops == 2 * 4 * 4 * 9 and pool.macs == 0
    assert gap.flops == 2 * 8 * 8


def test_elementwise_norm_softmax_resize() -> None:
    rep = _cost(
        [
            helper.make_node("Add", ["x", "b"], ["a"]),
            helper.make_node("Sigmoid", ["a"], ["s"]),
            helper.make_node("Sum", ["a", "s", "x"], ["t"]),
            helper.make_node("BatchNormalization", ["t", "g", "bb", "m", "v"], ["n"]),
            helper.make_node("Softmax", ["n"], ["sm"], axis=1),
            helper.make_node("Resize", ["sm", "", "sc"], ["y"], mode="linear"),
        ],
        [("x", F, [1, 2, 3, 4])],
        [_w(k, [2]) for k in ("g", "m", "v", "bb")]
        + [_w("b", [4])]
        + [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "sc")],
    )
    add, sig, sm3, bn, soft, resize = rep.nodes
    assert add.flops == 24 and sig.flops == 4 * 24 and sm3.flops == 2 * 24
    assert bn.flops == 2 * 24 and soft.flops == 5 * 24
    assert resize.flops == (1 * 2 * 6 * 8) * 2 * 4  # out elems x 2 x 2^2 taps


def test_data_movement_views_and_free_ops() -> None:
    rep = _cost(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
            helper.make_node("Reshape", ["t", "r"], ["y"]),
        ],
        [("x", F, [3, 4])],
        [numpy_helper.from_array(np.array([12], np.int64), "r")],
        outputs=("y", "s"),
    )
    shape, transpose, reshape = rep.nodes
    assert (shape.flops, shape.bytes, shape.time_s) == (0, 0, 0.0)
    assert transpose.flops == 0 and transpose.bytes == 2 * 12 * 4
    assert transpose.bound == "memory" and transpose.known
    assert (reshape.bytes, reshape.flops) == (0, 0)
    assert reshape.time_s == pytest.approx(T.dispatch_overhead_s)


def test_unknown_op_is_listed_and_counted_not_dropped() -> None:
    rep = _cost(
        [
            helper.make_node("Relu", ["x"], ["r"]),
            helper.make_node("Identity", ["r"], ["y"]),
        ],
        [("x", F, [2, 8])],
    )
    assert rep.unknown_ops == ()
    # an unknown op with known shapes on both sides (declared by value_info)
    graph = helper.make_graph(
        [helper.make_node("Frob", ["x"], ["f"], domain="my.ops", name="frob")],
        "g",
        [helper.make_tensor_value_info("x", F, [2, 8])],
        [helper.make_tensor_value_info("f", F, [2, 8])],
    )
    proto = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.ops", 1)]
    )
    rep = analyze_cost(io.from_proto(proto), target=T)
    (n,) = rep.nodes
    assert rep.unknown_ops == ("my.ops::Frob",)
    assert not n.known and n.bound == "memory" and n.flops == 0
    assert n.bytes == 2 * 16 * 4
    assert n.time_s == pytest.approx(128 / 1e9 + 1e-6)
    assert rep.unknown_nodes == 1


def test_roofline_time_and_bound() -> None:
    rep = _cost(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        [("a", F, [64, 64]), ("b", F, [64, 64])],
    )
    n = _one(rep)
    flops, nbytes = 2 * 64**3, 3 * 64 * 64 * 4
    assert n.time_s == pytest.approx(max(flops / 1e9, nbytes / 1e9) + 1e-6)
    assert n.bound == "compute"
    assert rep.time_s == pytest.approx(n.time_s)
    assert rep.by_bound()["compute"]["nodes"] == 1 and rep.by_bound()["memory"]["nodes"] == 0
    # the same node on a target with slow memory becomes memory-bound
    slow = replace(T, memory_bandwidth=1e6)
    assert _one(analyze_cost(infer_shapes(_mm_model()), target=slow)).bound == "memory"


def _mm_model() -> ir.Model:
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "g",
        [helper.make_tensor_value_info(n, F, [64, 64]) for n in "ab"],
        [helper.make_tensor_value_info("y", F, None)],
    )
    return io.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def test_precision_fp16_int8_and_override() -> None:
    half = _one(
        _cost([helper.make_node("Relu", ["x"], ["y"])], [("x", H, [10, 10])]),
    )
    assert half.precision == "fp16" and half.bytes == 2 * 100 * 2
    qdq = _cost(
        [
            helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wf"]),
            helper.make_node("MatMul", ["x", "wf"], ["y"]),
        ],
        [("x", F, [4, 8])],
        [
            numpy_helper.from_array(np.ones((8, 2), np.int8), "w"),
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ],
    )
    dq, mm = qdq.nodes
    assert dq.precision == "int8" and mm.precision == "int8"
    assert dq.flops == 2 * 16 and dq.weight_bytes == 16 + 4 + 1
    qconv = _one(
        _cost(
            [helper.make_node("ConvInteger", ["x", "w"], ["y"])],
            [("x", TensorProto.UINT8, [1, 2, 4, 4])],
            [_w("w", [3, 2, 1, 1], np.uint8)],
        )
    )
    assert qconv.precision == "int8" and qconv.macs == 3 * 16 * 2
    fp32 = _cost([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [10, 10])])
    as16 = _cost([helper.make_node("Relu", ["x"], ["y"])], [("x", F, [10, 10])], precision="fp16")
    assert _one(fp32).bytes == 800 and _one(as16).bytes == 400
    assert _one(as16).precision == "fp16"
    with pytest.raises(InputError, match="precision"):
        analyze_cost(infer_shapes(_mm_model()), target=T, precision="fp8")


def test_missing_shapes_are_inferred_and_model_not_changed() -> None:
    m = _mm_model()
    rep = analyze_cost(m, target="xbox-series-s")
    assert rep.flops == 2 * 64**3 and rep.target == "xbox-series-s"
    assert m.graph.outputs[0].shape is None


def test_top_and_to_dict(resnet: ir.Model) -> None:
    rep = analyze_cost(resnet, target="xbox-series-s")
    top = rep.top(3)
    assert len(top) == 3 and top[0].time_s >= top[1].time_s >= top[2].time_s
    assert top[0].time_s == max(n.time_s for n in rep.nodes)
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["flops"] == rep.flops and len(d["nodes"]) == len(rep.nodes)
    assert math.isclose(sum(v["time_s"] for v in d["by_bound"].values()), rep.time_s)
    assert sum(row["count"] for row in rep.by_op().values()) == len(rep.nodes)


def test_zoo_resnet18_flops(resnet: ir.Model) -> None:
    rep = analyze_cost(infer_shapes(resnet, batch=1), target="xbox-series-s")
    assert rep.macs == pytest.approx(1.82e9, rel=0.02)
    assert rep.flops == pytest.approx(3.6e9, rel=0.02)
    assert rep.unknown_ops == () and all(n.known for n in rep.nodes)
    # batch scales the activation work linearly
    rep4 = analyze_cost(infer_shapes(resnet, batch=4), target="xbox-series-s")
    assert rep4.macs == 4 * rep.macs


def test_zoo_yolov3_tiny_flops() -> None:
    rep = analyze_cost(infer_shapes(zoo.yolov3_tiny()), target="xbox-series-s")
    assert rep.flops == pytest.approx(5.6e9, rel=0.03)
    assert rep.unknown_ops == ()


def test_transformer_ops() -> None:
    rep = _cost(
        [
            helper.make_node("Gather", ["emb", "ids"], ["e"]),
            helper.make_node("LayerNormalization", ["e", "g", "b"], ["ln"], axis=-1),
            helper.make_node("MatMul", ["ln", "ln_t"], ["s"]),
            helper.make_node("Softmax", ["s"], ["p"], axis=-1),
            helper.make_node("Gelu", ["p"], ["y"], domain="com.microsoft"),
        ],
        [("ids", TensorProto.INT64, [2, 8]), ("ln_t", F, [2, 16, 8])],
        [_w("emb", [100, 16]), _w("g", [16]), _w("b", [16])],
        domains=[("com.microsoft", 1)],
    )
    gather, ln, mm, soft, gelu = rep.nodes
    assert gather.flops == 0 and gather.bytes_read == 100 * 16 * 4 + 16 * 8
    assert ln.flops == 7 * 2 * 8 * 16
    assert mm.macs == 2 * 8 * 8 * 16
    assert soft.flops == 5 * 2 * 8 * 8 and gelu.flops == 8 * 2 * 8 * 8
    assert rep.unknown_ops == () and all(n.known for n in rep.nodes)


def test_rnn_and_einsum() -> None:
    lstm = _one(
        _cost(
            [helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=4)],
            [("x", F, [5, 2, 8])],
            [_w("w", [1, 16, 8]), _w("r", [1, 16, 4])],
        )
    )
    assert lstm.macs == 5 * 2 * (16 * 8 + 16 * 4) and lstm.known
    ein = _one(
        _cost(
            [helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")],
            [("a", F, [2, 3, 4]), ("b", F, [2, 4, 5])],
        )
    )
    assert (ein.macs, ein.flops) == (2 * 3 * 4 * 5, 2 * 2 * 3 * 4 * 5)
