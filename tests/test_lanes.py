"""Idle wave lanes per node, their charge in the projection, and layout changes."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from onnxfit.analysis.cost import node_cost
from onnxfit.analysis.inspect import inspect
from onnxfit.analysis.lanes import lane_report, lane_utilization, layout_changes, node_lanes
from onnxfit.analysis.shapes import infer_shapes
from onnxfit.targets import get_target


def _graph(nodes: list, inits: list, shape: list[int]) -> ir.Model:
    g = h.make_graph(
        nodes,
        "g",
        [h.make_tensor_value_info("x", T.FLOAT, shape)],
        [h.make_tensor_value_info("y", T.FLOAT, None)],
        inits,
    )
    m = ir.from_proto(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    return infer_shapes(m, batch=shape[0])


def _w(shape: tuple[int, ...], name: str = "W") -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.ones(shape, np.float32), name)


def test_channels_or_spatial_whichever_idles_less() -> None:
    # 48 output channels on a 4x4 map: channels 48/64 busy beat spatial 16/32
    m = _graph(
        [h.make_node("Conv", ["x", "W"], ["y"], name="c")], [_w((48, 8, 1, 1))], [1, 8, 4, 4]
    )
    lanes = node_lanes(m.graph.node(0))
    assert lanes is not None and lanes.mapped == "channels"
    assert (lanes.channels, lanes.spatial) == (48, 16)
    assert lanes.idle32 == 16 and lanes.util32 == pytest.approx(0.75)
    assert lanes.idle64 == 16 and lanes.util64 == pytest.approx(0.75)
    # depthwise: one channel per group, so only space can fill the lanes (5x5 = 25 of 32)
    dw = _graph(
        [h.make_node("Conv", ["x", "W"], ["y"], name="dw", group=8, pads=[1, 1, 1, 1])],
        [_w((8, 1, 3, 3))],
        [1, 8, 5, 5],
    )
    lanes = node_lanes(dw.graph.node(0))
    assert lanes is not None and lanes.mapped == "spatial" and lanes.idle32 == 7
    assert lane_utilization(dw.graph.node(0), 64) == pytest.approx(25 / 64)


def test_projection_charges_idle_lanes_on_wave_targets() -> None:
    # 56 channels (56/64 busy) beat 7x7 = 49 positions (49/64); compute-bound on a Series S
    m = _graph(
        [h.make_node("Conv", ["x", "W"], ["y"], name="c", pads=[1, 1, 1, 1])],
        [_w((56, 128, 3, 3))],
        [1, 128, 7, 7],
    )
    node = m.graph.node(0)
    series_s = get_target("xbox-series-s")
    assert series_s.wave_size == 32
    charged = node_cost(node, series_s)
    free = node_cost(node, dataclasses.replace(series_s, wave_size=0))
    assert charged.lane_util == pytest.approx(56 / 64) and free.lane_util == 1.0
    assert charged.bound == "compute" and free.bound == "compute"
    compute = charged.flops / series_s.peak("fp32")
    assert charged.time_s - free.time_s == pytest.approx(compute * 64 / 56 - compute, rel=1e-6)


def test_layout_changes() -> None:
    nodes = [
        h.make_node("Transpose", ["x"], ["t"], name="to_nhwc", perm=[0, 2, 3, 1]),
        h.make_node("Transpose", ["t"], ["u"], name="back", perm=[0, 3, 1, 2]),
        h.make_node("Reshape", ["u", "shape"], ["y"], name="flatten"),
    ]
    shape = onnx.numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    m = _graph(nodes, [shape], [1, 8, 4, 4])
    changes = layout_changes(m)
    assert [(c.name, c.op_type) for c in changes] == [
        ("to_nhwc", "Transpose"),
        ("back", "Transpose"),
        ("flatten", "Reshape"),
    ]
    assert changes[0].bytes == 8 * 4 * 4 * 4
    pooled = [h.make_node("Reshape", ["x", "shape"], ["y"], name="squeeze_hw")]
    assert layout_changes(_graph(pooled, [shape], [1, 8, 1, 1])) == []
    unit = [h.make_node("Transpose", ["x"], ["y"], name="unit", perm=[0, 2, 1, 3])]
    assert layout_changes(_graph(unit, [], [1, 1, 1, 4])) == []


def test_inspect_reports_lanes_per_node() -> None:
    m = _graph(
        [h.make_node("Conv", ["x", "W"], ["y"], name="c")], [_w((48, 8, 1, 1))], [1, 8, 4, 4]
    )
    d = inspect(m, target="xbox-series-s").to_dict()
    node = d["lanes"]["nodes"][0]
    assert node["name"] == "c" and node["idle32"] == 16 and node["mapped"] == "channels"
    assert d["lanes"]["idle_share_wave32"] == pytest.approx(0.25)
    assert "NCHWc" in d["lanes"]["preferred_layouts"]["CPUExecutionProvider"]
    assert lane_report(m).idle_share(64) == pytest.approx(0.0)  # no FLOP weights given
