"""Wave occupancy and memory layout: the lanes a GPU wave leaves idle, and layout changes.

**Idle lanes.** A GPU runs a compute shader in waves of 32 (RDNA 2's native wave32, the Xbox
Series consoles) or 64 lanes (wave64, GCN and RDNA's other mode). A kernel maps one output
dimension onto a wave's lanes; when that dimension is not a multiple of the wave width, the
last wave of every row runs with lanes idle. For each node with FLOPs the dimension is either
the **channels** (output channels per group of a Conv, output features of a Gemm/MatMul) or
the **spatial** size (output positions per channel: N x H x W for a Conv, rows for a MatMul,
all elements for elementwise ops). :func:`node_lanes` reports both mappings and takes the one with
fewer idle lanes — the schedule a kernel author would pick — so that the charge is a floor:

    utilization = size / (ceil(size / wave) x wave)

A depthwise Conv (one channel per group) can only map space. :func:`lane_utilization` is what
:mod:`onnxfit.analysis.cost` divides a node's compute time by on a target whose
``wave_size`` is set (the Series S/X profiles: 32); DirectML's real tiling is not public, so
this is a model of the first-order effect, not of its kernels.

**Layouts.** :data:`PREFERRED_LAYOUTS` lists the layout each execution provider computes in:
DirectML and CUDA (cuDNN) take NCHW as given (DirectML picks internal layouts inside its
kernels; CUDA switches to NHWC only with ``prefer_nhwc``), ORT's CPU provider rewrites
convolutions to NCHWc (blocked channels: 8 floats with AVX2, 16 with AVX-512; the
``NchwcTransformer`` at ``ORT_ENABLE_ALL``), and the WebGPU provider prefers NHWC. A model
pays for layout changes written into the graph (:func:`layout_changes`): every ``Transpose``
that moves data is a full read and write of its tensor on any provider; a ``Reshape`` that
merges or splits the channel axis with spatial axes is free in NCHW (DirectML, CUDA) but forces
a reorder back from NCHWc / NHWC on the CPU and WebGPU providers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import onnx_ir as ir

from onnxfit.analysis import opcount
from onnxfit.analysis.shapes import static_dims

#: Execution provider -> layout it computes convolutions in (module docstring).
PREFERRED_LAYOUTS = {
    "DmlExecutionProvider": "NCHW (DirectML chooses internal layouts per kernel)",
    "CUDAExecutionProvider": "NCHW (NHWC with the prefer_nhwc provider option)",
    "CPUExecutionProvider": "NCHWc (channels blocked by 8 on AVX2, 16 on AVX-512)",
    "WebGpuExecutionProvider": "NHWC",
}
_CONVS = frozenset({"Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "FusedConv"})
_MATMULS = frozenset({"MatMul", "Gemm", "QLinearMatMul", "MatMulInteger", "FusedMatMul"})


def _util(size: int, wave: int) -> float:
    return size / (math.ceil(size / wave) * wave) if size > 0 and wave > 0 else 1.0


def _idle(size: int, wave: int) -> int:
    return math.ceil(size / wave) * wave - size if size > 0 else 0


@dataclass(frozen=True)
class NodeLanes:
    """Lane use of one node: its channel and spatial sizes and the idle lanes per wave width."""

    name: str
    op_type: str
    channels: int
    spatial: int
    mapped: str  # "channels" or "spatial": the mapping with fewer idle lanes at wave32
    idle32: int  # idle lanes per row (per spatial position or per channel) at wave32
    util32: float
    idle64: int
    util64: float
    flops: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _sizes(node: ir.Node) -> tuple[int, int] | None:
    """(channels, spatial) of a node's output, or None when its shape is unknown."""
    out = static_dims(node.outputs[0]) if node.outputs else None
    if out is None or not out:
        return None
    if node.op_type in _CONVS and len(out) >= 3:
        w = static_dims(node.inputs[1]) if len(node.inputs) > 1 else None
        groups = int(node.attributes["group"].value) if "group" in node.attributes else 1
        channels = out[1] // max(1, groups)
        if node.op_type == "ConvTranspose" and w is not None:
            channels = w[1]
        return channels, out[0] * math.prod(out[2:])
    if node.op_type in _MATMULS:
        return out[-1], math.prod(out[:-1])
    return 1, math.prod(out)


def node_lanes(node: ir.Node, *, flops: int = 0) -> NodeLanes | None:
    """The lane use of ``node`` (module docstring), or None for nodes without arithmetic."""
    if opcount.kind_of(node) != "compute":
        return None
    sizes = _sizes(node)
    if sizes is None:
        return None
    channels, spatial = sizes
    by_channels = channels > 1 and _util(channels, 32) > _util(spatial, 32)
    size = channels if by_channels else spatial
    return NodeLanes(
        name=str(node.name or ""),
        op_type=node.op_type,
        channels=channels,
        spatial=spatial,
        mapped="channels" if by_channels else "spatial",
        idle32=_idle(size, 32),
        util32=_util(size, 32),
        idle64=_idle(size, 64),
        util64=_util(size, 64),
        flops=int(flops),
    )


def lane_utilization(node: ir.Node, wave: int) -> float:
    """Share of lanes doing work for ``node`` at wave width ``wave`` (1.0 when not modelled)."""
    if wave <= 0:
        return 1.0
    lanes = node_lanes(node)
    if lanes is None:
        return 1.0
    return max(_util(lanes.channels, wave), _util(lanes.spatial, wave))


@dataclass(frozen=True)
class LayoutChange:
    """A node that moves data to change the layout: a Transpose, or a channel-mixing Reshape."""

    name: str
    op_type: str
    detail: str
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _reshape_mixes_channels(node: ir.Node) -> str | None:
    """``src -> dst`` when a Reshape of an N,C,spatial tensor moves the channel axis' data."""
    src = static_dims(node.inputs[0]) if node.inputs else None
    dst = static_dims(node.outputs[0])
    if src is None or dst is None or len(src) < 3 or math.prod(src[2:]) == 1:
        return None
    if dst[:2] == src[:2]:
        return None  # N and C kept: only the spatial axes are regrouped
    return f"{list(src)} -> {list(dst)}"


def layout_changes(model: ir.Model) -> list[LayoutChange]:
    """Transposes that move data and Reshapes that mix channels with other axes."""
    out = []
    for node in model.graph:
        dims = static_dims(node.outputs[0]) if node.outputs else None
        nbytes = 0
        if dims is not None and node.outputs[0].dtype is not None:
            nbytes = int(math.prod(dims) * node.outputs[0].dtype.itemsize)
        if node.op_type == "Transpose":
            perm = node.attributes.get("perm")
            order = list(perm.value) if perm is not None else None
            moved = [d for d in (dims or []) if d != 1]
            if order is not None and order == sorted(order):
                continue  # identity permutation
            if len(moved) <= 1:
                continue  # only unit axes move: a view
            out.append(LayoutChange(str(node.name or ""), "Transpose", f"perm={order}", nbytes))
        elif node.op_type == "Reshape":
            why = _reshape_mixes_channels(node)
            if why is not None:
                out.append(LayoutChange(str(node.name or ""), "Reshape", why, nbytes))
    return out


@dataclass(frozen=True)
class LaneReport:
    """Per-node lane use at wave32 / wave64 and the layout changes of one model."""

    nodes: tuple[NodeLanes, ...]
    layout_changes: tuple[LayoutChange, ...]
    preferred_layouts: dict[str, str]

    def idle_share(self, wave: int = 32) -> float:
        """FLOP-weighted share of lane slots left idle at ``wave`` (32 or 64)."""
        total = sum(n.flops for n in self.nodes)
        if not total:
            return 0.0
        util = sum(n.flops * (n.util32 if wave == 32 else n.util64) for n in self.nodes)
        return 1.0 - util / total

    def worst(self, k: int = 5, *, wave: int = 32) -> list[NodeLanes]:
        """The ``k`` nodes wasting the most FLOP-weighted lanes at ``wave``."""

        def waste(n: NodeLanes) -> float:
            return n.flops * (1 - (n.util32 if wave == 32 else n.util64))

        return sorted((n for n in self.nodes if waste(n) > 0), key=lambda n: -waste(n))[:k]

    def to_dict(self) -> dict[str, Any]:
        return {
            "idle_share_wave32": self.idle_share(32),
            "idle_share_wave64": self.idle_share(64),
            "nodes": [n.to_dict() for n in self.nodes],
            "layout_changes": [c.to_dict() for c in self.layout_changes],
            "preferred_layouts": dict(self.preferred_layouts),
        }


def lane_report(model: ir.Model, *, flops: dict[str, int] | None = None) -> LaneReport:
    """Lane use of every compute node of a shape-inferred ``model`` and its layout changes.

    ``flops`` (node name -> FLOPs, from the cost report) weights the shares.
    """
    fl = flops or {}
    nodes = []
    for node in model.graph:
        lanes = node_lanes(node, flops=fl.get(str(node.name or ""), 0))
        if lanes is not None:
            nodes.append(lanes)
    return LaneReport(tuple(nodes), tuple(layout_changes(model)), dict(PREFERRED_LAYOUTS))
