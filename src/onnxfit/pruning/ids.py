"""Channel ids for structured pruning: the union-find, the records of what to slice, and the
id bookkeeping the coupling walk (:mod:`onnxfit.pruning.groups`) is built on.

Every tracked tensor maps to an id array, one id per channel on axis 1 (features of a 2-D
tensor); ids united in :class:`UnionFind` must be removed together, and a *locked* set is never
removed. :class:`ConstSlice` and :class:`Edit` record where removed ids must be cut out of a
constant or an attribute when the plan is applied (:mod:`onnxfit.pruning.channels`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

logger = logging.getLogger(__name__)

Kind = Literal["group", "split", "slice", "reshape"]


class UnionFind:
    """Union-find over channel ids with a per-set ``locked`` flag."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.locked: list[bool] = []

    def new(self, n: int, *, locked: bool = False) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.locked.extend([locked] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = min(ra, rb), max(ra, rb)
            self.parent[hi] = lo
            self.locked[lo] = self.locked[lo] or self.locked[hi]

    def lock(self, ids: np.ndarray) -> None:
        for i in ids:
            self.locked[self.find(int(i))] = True

    def roots(self) -> np.ndarray:
        return np.fromiter(
            (self.find(i) for i in range(len(self.parent))), np.int64, count=len(self.parent)
        )


@dataclass
class Source:
    """A conv whose output channels may be removed: its node and its output ids."""

    node: ir.Node
    ids: np.ndarray


@dataclass
class ConstSlice:
    """Constant input ``index`` of ``node`` loses the entries of removed ids along ``axis``.

    ``mixes``: the weight of a layer that sums over these channels (Conv input channels,
    Gemm / MatMul input features): where mean compensation adds what they contributed."""

    node: ir.Node
    index: int
    axis: int
    ids: np.ndarray
    mixes: bool = False


@dataclass
class Edit:
    """An attribute or shape constant of ``node`` to rewrite from its input's ids.

    ``parts`` (split/slice) are the id arrays of each output part or of the sliced range
    ``[start, stop)``; ``repeat`` is the elements per channel of a flattening reshape."""

    node: ir.Node
    kind: Kind
    ids: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)
    span: tuple[int, int] = (0, 0)
    pos: int = 0  # Slice: index of axis 1 in starts / ends
    repeat: int = 1


@dataclass
class ChannelGraph:
    """Everything :func:`analyze` learnt; :mod:`onnxfit.pruning.channels` applies it."""

    uf: UnionFind
    sources: list[Source]
    slices: list[ConstSlice]
    edits: list[Edit]
    values: dict[ir.Value, np.ndarray]
    locked_sources: dict[str, str]  # conv name -> why none of its channels can go


def const_array(value: ir.Value | None) -> np.ndarray | None:
    if value is None:
        return None
    tensor = ir.convenience.get_const_tensor(value)
    return None if tensor is None else np.asarray(tensor.numpy())


def attr_value(node: ir.Node, name: str, default: object) -> object:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _dims(value: ir.Value | None) -> list[int] | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape.dims)
    return [d if isinstance(d, int) else -1 for d in dims]


def axes_of(node: ir.Node, input_index: int) -> list[int] | None:
    """Axes from the ``axes`` attribute or a constant input (None: absent; [] if empty)."""
    if "axes" in node.attributes:
        return [int(a) for a in node.attributes["axes"].value]
    if len(node.inputs) > input_index and node.inputs[input_index] is not None:
        arr = const_array(node.inputs[input_index])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return []


class IdTracker:
    """The walk's state: ids per value, the union-find and the records; helpers."""

    def __init__(self, model: ir.Model, shapes: dict[str, list[int]], exclude: set[str]) -> None:
        self.model = model
        self.shapes = shapes
        self.exclude = exclude
        self.uf = UnionFind()
        self.g = ChannelGraph(self.uf, [], [], [], {}, {})
        self.opset = model.opset_imports.get("", 13)

    # -- helpers
    def dims(self, value: ir.Value | None) -> list[int] | None:
        if value is None:
            return None
        return self.shapes.get(str(value.name)) or _dims(value)

    def ids(self, value: ir.Value | None) -> np.ndarray | None:
        return self.g.values.get(value) if value is not None else None  # type: ignore[arg-type]

    def fresh(self, value: ir.Value, *, locked: bool = True) -> np.ndarray | None:
        d = self.dims(value)
        if d is None or len(d) < 2 or d[1] < 1:
            return None
        ids = self.uf.new(d[1], locked=locked)
        self.g.values[value] = ids
        return ids

    def lock_node(self, node: ir.Node, why: str) -> None:
        for v in node.inputs:
            ids = self.ids(v)
            if ids is not None:
                self.uf.lock(ids)
        for out in node.outputs:
            self.fresh(out)
        logger.debug("prune-channels: %s %s locks its channels (%s)", node.op_type, node.name, why)

    # -- the walk

    def passthrough(self, node: ir.Node, ids: np.ndarray | None = None) -> None:
        ids = self.ids(node.inputs[0]) if ids is None else ids
        if ids is None:
            for out in node.outputs:
                self.fresh(out)
            return
        self.g.values[node.outputs[0]] = ids
        for out in node.outputs[1:]:  # MaxPool indices, Dropout mask
            self.fresh(out)


@dataclass
class CouplingGroup:
    """Convs whose output channels are united, and the channel sets they share."""

    label: str
    convs: list[str]
    sets: np.ndarray  # prunable root ids, best score last
    scores: np.ndarray  # one per set, same order
    locked_sets: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "convs": list(self.convs),
            "sets": int(self.sets.size),
            "locked_sets": self.locked_sets,
        }


@dataclass
class ChannelPlan:
    """Which channel sets go: ``removed`` holds root ids; per conv, the output channels lost."""

    graph: ChannelGraph
    groups: list[CouplingGroup]
    removed: set[int] = field(default_factory=set)
    #: activation (mean, variance) per consumed tensor, when the plan was made with data
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)

    def removed_mask(self, ids: np.ndarray) -> np.ndarray:
        roots = np.array([self.graph.uf.find(int(i)) for i in ids], np.int64)
        return np.isin(roots, np.fromiter(self.removed, np.int64, len(self.removed)))

    def removed_channels(self) -> dict[str, list[int]]:
        """Conv name -> indices of its removed output channels (sources only)."""
        out: dict[str, list[int]] = {}
        for s in self.graph.sources:
            gone = np.nonzero(self.removed_mask(s.ids))[0]
            if gone.size:
                out[str(s.node.name)] = [int(i) for i in gone]
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "groups": [g.to_dict() for g in self.groups],
            "removed_channels": self.removed_channels(),
        }
