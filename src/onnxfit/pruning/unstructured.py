"""``prune``: unstructured magnitude pruning of Conv / Gemm / MatMul weights (one-shot).

Scores -> mask -> pass (DESIGN habit 3): :func:`find_weights` lists the prunable tensors,
:mod:`onnxfit.pruning.scores` scores them (``|w|``), :func:`make_masks` turns scores into exact
keep-masks, and :class:`PrunePass` writes the zeros.

What is pruned: the constant float weight of every Conv (input 1), Gemm (input 1) and MatMul
(its constant input), once per tensor even when shared. Not pruned by default: the *first*
weighted layers (those reached from a graph input without passing another Conv/Gemm/MatMul)
and the *last* ones (those from which a graph output is reached without passing another —
the classifier, or the YOLO / YOLOX heads), and names in ``exclude`` (weight or node names).

How much:

* ``sparsity`` with ``scope="global"`` (default): exactly ``round(sparsity x N)`` of the N
  eligible weights become zero — the globally smallest ``|w|`` — but no tensor loses more than
  ``max_sparsity`` of its weights (water-filling: a tensor that would pass the cap stops there
  and the others give up more);
* ``scope="layer"``: exactly ``round(sparsity x n)`` in each tensor;
* ``threshold``: every ``|w| < threshold`` (still capped);
* ``ratios``: one sparsity per tensor (weight or node name; the budget mode's output); only
  the named tensors are pruned.

Ties are broken by position, so counts are exact. Zeros are written as +0.0. Per tensor the
pruned share is logged at DEBUG, the overall ratio at INFO. The zeros stay dense: storing them
compactly is its own pass, :class:`~onnxfit.pruning.sparse.SparseStoragePass`
(``sparse-storage``), run last (the optimize planner lists it as its own step). Pruning is
one-shot: there is no fine-tuning, so accuracy is what magnitude pruning alone leaves (see
:mod:`onnxfit.pruning.budget` for the accuracy budget).

Portable: the output is the same ops with zeros in the weights. Stats: ``tensors_pruned``,
``weights_pruned``, ``weights_eligible``, ``sparsity`` (over the pruned tensors), ``excluded``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx_ir as ir

from onnxfit.errors import InputError
from onnxfit.passes.base import OnnxfitPass
from onnxfit.pruning import scores as sc

logger = logging.getLogger(__name__)

Scope = Literal["global", "layer"]
FLOAT_TYPES = frozenset(
    {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16, ir.DataType.DOUBLE}
)
WEIGHTED_OPS = frozenset({"Conv", "Gemm", "MatMul"})


@dataclass
class WeightRef:
    """One prunable tensor: its initializer value and the nodes that read it as a weight."""

    value: ir.Value
    nodes: list[ir.Node] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.value.name)

    @property
    def size(self) -> int:
        assert self.value.const_value is not None
        return int(self.value.const_value.size)

    def array(self) -> np.ndarray:
        assert self.value.const_value is not None
        return np.asarray(self.value.const_value.numpy())


@dataclass(frozen=True)
class TensorSparsity:
    """What pruning did to one tensor."""

    name: str
    size: int
    pruned: int

    @property
    def sparsity(self) -> float:
        return self.pruned / self.size if self.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "size": self.size,
            "pruned": self.pruned,
            "sparsity": self.sparsity,
        }


def weight_input(node: ir.Node) -> int | None:
    """Index of the constant weight input of a Conv / Gemm / MatMul node, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in WEIGHTED_OPS:
        return None
    candidates = [1] if node.op_type in ("Conv", "Gemm") else [1, 0]
    for i in candidates:
        v = node.inputs[i] if i < len(node.inputs) else None
        if (
            v is not None
            and v.is_initializer()
            and v.const_value is not None
            and v.dtype in FLOAT_TYPES
            and not v.is_graph_input()
        ):
            return i
    return None


def _weighted(node: ir.Node) -> bool:
    return node.domain in ("", "ai.onnx") and node.op_type in WEIGHTED_OPS


def boundary_nodes(graph: ir.Graph) -> tuple[set[ir.Node], set[ir.Node]]:
    """(first, last): weighted nodes reached from a graph input / reaching a graph output
    without passing through another Conv / Gemm / MatMul."""
    first: set[ir.Node] = set()
    stack = [v for v in graph.inputs if not v.is_initializer()]
    seen: set[ir.Value] = set()
    while stack:
        value = stack.pop()
        if value in seen:
            continue
        seen.add(value)
        for user, _ in value.uses():
            if _weighted(user):
                first.add(user)
            else:
                stack.extend(user.outputs)
    last: set[ir.Node] = set()
    back = list(graph.outputs)
    seen = set()
    while back:
        value = back.pop()
        if value in seen:
            continue
        seen.add(value)
        node = value.producer()
        if node is None:
            continue
        if _weighted(node):
            last.add(node)
        else:
            back.extend(v for v in node.inputs if v is not None)
    return first, last


def find_weights(
    model: ir.Model,
    *,
    exclude_first: bool = True,
    exclude_last: bool = True,
    exclude: Sequence[str] = (),
) -> tuple[list[WeightRef], list[str]]:
    """The prunable weight tensors (graph order) and the names of the excluded ones."""
    graph = model.graph
    first, last = boundary_nodes(graph)
    refs: dict[ir.Value, WeightRef] = {}
    banned: dict[ir.Value, str] = {}
    names = set(exclude)
    for node in graph:
        i = weight_input(node)
        if i is None:
            continue
        value = node.inputs[i]
        assert value is not None
        why = None
        if exclude_first and node in first:
            why = "first layer"
        elif exclude_last and node in last:
            why = "last layer"
        elif node.name in names or value.name in names:
            why = "excluded by name"
        elif any(weight_input(u) != j for u, j in value.uses()):
            why = "also read as a non-weight"
        if why:
            banned[value] = why
            logger.debug("prune: %s not pruned (%s)", value.name, why)
        refs.setdefault(value, WeightRef(value)).nodes.append(node)
    kept = [r for v, r in refs.items() if v not in banned]
    return kept, [str(v.name) for v in banned]


def _caps(sizes: Sequence[int], max_sparsity: float) -> list[int]:
    return [max(0, min(int(max_sparsity * n), n - 1)) for n in sizes]


def _ratio_for(ref: WeightRef, ratios: Mapping[str, float]) -> float | None:
    for key in (ref.name, *(str(n.name) for n in ref.nodes)):
        if key in ratios:
            return float(ratios[key])
    return None


def _check_fraction(name: str, value: float, *, upper: float = 1.0) -> None:
    if not 0.0 <= value <= upper:
        raise InputError(f"{name} must be in [0, {upper}], got {value}", hint=f"{name}=0.5")


def make_masks(
    refs: Sequence[WeightRef],
    *,
    sparsity: float | None = None,
    threshold: float | None = None,
    scope: Scope = "global",
    max_sparsity: float = 0.95,
    ratios: Mapping[str, float] | None = None,
) -> dict[str, np.ndarray]:
    """Tensor name -> flat indices to zero (exact counts; see the module docstring)."""
    _check_fraction("max_sparsity", max_sparsity)
    if scope not in ("global", "layer"):
        raise InputError(f"unknown prune scope {scope!r}", hint="use 'global' or 'layer'")
    scores = [sc.magnitude(r.array()) for r in refs]
    sizes = [r.size for r in refs]
    caps = _caps(sizes, max_sparsity)
    counts: list[int]
    if ratios is not None:
        counts = []
        for r, n, cap in zip(refs, sizes, caps, strict=True):
            ratio = _ratio_for(r, ratios)
            _check_fraction(f"ratio of {r.name}", ratio or 0.0, upper=max_sparsity)
            counts.append(min(sc.exact_count(ratio or 0.0, n), cap))
    elif threshold is not None:
        counts = [
            min(int(np.count_nonzero(s < threshold)), cap)
            for s, cap in zip(scores, caps, strict=True)
        ]
    elif sparsity is not None:
        _check_fraction("sparsity", sparsity)
        if scope == "layer":
            if sparsity > max_sparsity:
                raise InputError(
                    f"sparsity {sparsity} is above the per-layer cap {max_sparsity}",
                    hint="lower the sparsity or raise max_sparsity",
                )
            counts = [
                min(sc.exact_count(sparsity, n), cap) for n, cap in zip(sizes, caps, strict=True)
            ]
        else:
            counts = sc.prune_counts(scores, sc.exact_count(sparsity, sum(sizes)), caps)
    else:
        raise InputError(
            "prune needs a sparsity, a threshold or per-layer ratios", hint="e.g. sparsity=0.5"
        )
    return {r.name: sc.smallest(s, k) for r, s, k in zip(refs, scores, counts, strict=True)}


def apply_masks(refs: Sequence[WeightRef], masks: Mapping[str, np.ndarray]) -> list[TensorSparsity]:
    """Write +0.0 at the masked positions of each tensor; per tensor, its zeros afterwards
    (weights that were zero already rank first, so they are among the masked ones unless
    a tensor had more zeros than asked for)."""
    out = []
    for ref in refs:
        idx = masks.get(ref.name)
        if idx is None or idx.size == 0:
            continue
        arr = ref.array().copy()
        flat = arr.reshape(-1)
        flat[idx] = 0
        ref.value.const_value = ir.tensor(arr, name=ref.name)
        out.append(TensorSparsity(ref.name, ref.size, int(np.count_nonzero(flat == 0))))
    return out


class PrunePass(OnnxfitPass):
    """Unstructured magnitude pruning (see the module docstring); ``self.tensors`` lists the
    per-tensor result of the last run."""

    name = "prune"
    portable = True

    def __init__(
        self,
        *,
        sparsity: float | None = 0.5,
        threshold: float | None = None,
        scope: Scope = "global",
        max_sparsity: float = 0.95,
        ratios: Mapping[str, float] | None = None,
        exclude_first: bool = True,
        exclude_last: bool = True,
        exclude: Sequence[str] = (),
    ) -> None:
        super().__init__()
        self.sparsity = sparsity
        self.threshold = threshold
        self.scope = scope
        self.max_sparsity = max_sparsity
        self.ratios = dict(ratios) if ratios is not None else None
        self.exclude_first = exclude_first
        self.exclude_last = exclude_last
        self.exclude = tuple(exclude)
        self.tensors: list[TensorSparsity] = []

    def run(self, model: ir.Model) -> bool:
        refs, excluded = find_weights(
            model,
            exclude_first=self.exclude_first,
            exclude_last=self.exclude_last,
            exclude=self.exclude,
        )
        masks = make_masks(
            refs,
            sparsity=self.sparsity,
            threshold=self.threshold,
            scope=self.scope,
            max_sparsity=self.max_sparsity,
            ratios=self.ratios,
        )
        self.tensors = apply_masks(refs, masks)
        for t in self.tensors:
            logger.debug(
                "prune: %s %d/%d zero (%.1f %%)", t.name, t.pruned, t.size, 100 * t.sparsity
            )
        pruned = sum(t.pruned for t in self.tensors)
        size = sum(t.size for t in self.tensors)
        eligible = sum(r.size for r in refs)
        overall = pruned / size if size else 0.0
        logger.info(
            "prune: %d of %d eligible weights zero (%.2f %% of the %d pruned tensors)",
            pruned,
            eligible,
            100 * overall,
            len(self.tensors),
        )
        self.stats.update(
            tensors_pruned=len(self.tensors),
            weights_pruned=pruned,
            weights_eligible=eligible,
            sparsity=round(overall, 6),
            excluded=excluded,
        )
        return pruned > 0
