"""``prune-channels``: remove whole output channels of Conv layers (structured, one-shot).

Scores -> selection -> rewrite (DESIGN habit 3):

1. :func:`onnxfit.pruning.groups.analyze` finds the channel sets that must go together
   (union-find over residual Adds, Concat offsets, depthwise convs...) and the locked ones
   (reaching a graph output, a channel shuffle, an unknown op...);
2. each source channel is scored by the L1 (or L2) norm of its filter, times
   ``|gamma| / sqrt(var + eps)`` when a BatchNormalization reads the conv directly, divided by
   the layer's mean score (:mod:`onnxfit.pruning.scores`); a set's score is the mean of its
   members';
3. :func:`plan_channels` picks the sets to remove: per coupling **group** (the convs whose
   channels are united, e.g. every conv writing one residual stream) ``round(ratio x sets)``
   of the lowest-scoring (``scope="layer"``, the default), or the lowest ``round(ratio x all)``
   over the model (``scope="global"``, no group above ``max_ratio``), or one ratio per group
   (``ratios``, the budget mode's output). ``multiple_of`` (8 by default; 1 for the exact ratio)
   rounds every group's kept count to the nearest multiple (kernels run channel blocks of 8 or
   16: onnxruntime's NCHWc CPU layout, GPU tensor cores; on the zoo ResNet-18 at ratio 0.3 the
   rounded model ran ~1.2x faster than the exact one on this CPU); a group always keeps
   ``min_channels`` and at least ``1 - max_ratio`` of its channels;
4. :func:`apply_plan` (:mod:`onnxfit.pruning.rewrite`) rewrites the model: producer
   filters and biases, consumer input channels (next conv, BatchNormalization parameters,
   per-channel constants, Gemm / MatMul rows after flatten or pooling), depthwise ``group``,
   Split sizes, Slice bounds, Reshape constants and the shapes of every touched value.

What the pruned model computes, exactly: the dense model in which every removed channel is
replaced by zero where it is *consumed* by a layer that mixes channels (the input of the next
Conv / Gemm / MatMul), i.e. after its BatchNormalization / activation / residual group —
not zero at the conv output (a BN after it would turn a zero into ``beta - mean x gamma /
sqrt(var + eps)``). Network outputs never change shape: channels reaching a graph output are
locked; ``exclude_first=True`` locks the output channels of the first convs too (those reading
the graph input: every later layer depends on them — on ShuffleNetV2 removing 8 of the stem's
24 channels alone cost all of the top-1 — but on ResNet-18 they are the whole first residual
stream, the largest activations, so it is off by default; the budget mode's scan finds such
groups by itself). No fine-tuning follows (one-shot): accuracy is what removal alone leaves.

With calibration ``feeds`` (a few images) the choice and the rewrite use data
(:mod:`onnxfit.pruning.compensate`): channel sets are ranked by the output energy the
consuming layers lose without them (``var(x_c) x ||W[:, c]||^2``), and with ``compensate``
(default) each removed channel's mean is folded into the consumer's bias (mean replacement
instead of zero). Without feeds the pruned model equals the zero-forced reference below.

Portable: a smaller dense model of the same ops. Stats: ``channels_before`` /
``channels_after`` (output channels of all source convs), ``groups_pruned``, ``params_before``
/ ``params_after`` (initializer elements), ``locked`` (convs that cannot lose channels).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common

from onnxfit.errors import InputError
from onnxfit.passes.base import OnnxfitPass
from onnxfit.pruning import scores as sc
from onnxfit.pruning.groups import analyze
from onnxfit.pruning.ids import ChannelGraph, ChannelPlan, CouplingGroup
from onnxfit.pruning.rewrite import apply_plan

__all__ = [
    "ChannelPlan",
    "CouplingGroup",
    "PruneChannelsPass",
    "apply_plan",
    "locked_convs",
    "plan_channels",
]

logger = logging.getLogger(__name__)

Scope = Literal["global", "layer"]


def _shapes(model: ir.Model) -> dict[str, list[int]]:
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.errors import OnnxfitError

    try:
        shaped = infer_shapes(model, batch=1)
    except OnnxfitError as exc:
        logger.warning("prune-channels: shape inference failed (%s); using stored shapes", exc)
        return {}
    out = {}
    for node in shaped.graph:
        for v in node.outputs:
            if v.shape is not None and all(isinstance(d, int) for d in v.shape.dims):
                out[str(v.name)] = [int(d) for d in v.shape.dims]  # type: ignore[arg-type]
    for v in shaped.graph.inputs:
        if v.shape is not None and all(isinstance(d, int) for d in v.shape.dims):
            out[str(v.name)] = [int(d) for d in v.shape.dims]  # type: ignore[arg-type]
    return out


def _bn_scale(conv: ir.Node) -> np.ndarray | None:
    users = list(conv.outputs[0].uses())
    if len(users) != 1 or users[0].node.op_type != "BatchNormalization":
        return None
    bn = users[0].node
    arrs = [ir.convenience.get_const_tensor(v) if v is not None else None for v in bn.inputs[1:5]]
    if any(a is None for a in arrs):
        return None
    gamma, _, _, var = (np.asarray(a.numpy(), np.float64) for a in arrs)  # type: ignore[union-attr]
    eps = bn.attributes["epsilon"].value if "epsilon" in bn.attributes else 1e-5
    return gamma / np.sqrt(var + eps)


def _groups(
    cg: ChannelGraph, norm: sc.Norm, data_scores: np.ndarray | None = None
) -> list[CouplingGroup]:
    uf = cg.uf
    roots = uf.roots()
    elem_score = np.full(len(roots), np.nan)
    owner: dict[int, int] = {}  # root -> index of a source (to join sources into groups)
    parent = list(range(len(cg.sources)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for k, s in enumerate(cg.sources):
        w = ir.convenience.get_const_tensor(s.node.inputs[1])  # type: ignore[arg-type]
        assert w is not None
        elem_score[s.ids] = sc.normalized(
            sc.channel_norms(w.numpy(), norm=norm, scale=_bn_scale(s.node))
        )
        for r in set(roots[s.ids].tolist()):
            if r in owner:
                a, b = find(k), find(owner[r])
                parent[max(a, b)] = min(a, b)
            else:
                owner[r] = k
    members: dict[int, list[int]] = {}
    for k in range(len(cg.sources)):
        members.setdefault(find(k), []).append(k)
    scored = ~np.isnan(elem_score)
    sums = np.bincount(roots[scored], weights=elem_score[scored], minlength=len(roots))
    counts = np.bincount(roots[scored], minlength=len(roots))
    root_score = sums / np.maximum(counts, 1)
    groups = []
    for ks in members.values():
        names = [str(cg.sources[k].node.name) for k in ks]
        rs = np.unique(np.concatenate([roots[cg.sources[k].ids] for k in ks]))
        locked = np.array([uf.locked[int(r)] for r in rs], bool)
        free = rs[~locked]
        if not free.size:
            continue  # every channel locked: nothing to choose here (see ``locked_convs``)
        if data_scores is not None and np.isfinite(data_scores[free]).all():
            root_score[free] = sc.normalized(data_scores[free])
        order = np.argsort(root_score[free], kind="stable")
        label = names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1})"
        groups.append(
            CouplingGroup(label, names, free[order], root_score[free][order], int(locked.sum()))
        )
    return groups


def _cap(group: CouplingGroup, max_ratio: float, min_channels: int) -> int:
    total = group.sets.size + group.locked_sets
    keep_min = max(min_channels, total - int(max_ratio * total), group.locked_sets)
    return max(0, min(group.sets.size, total - keep_min))


def _rounded(group: CouplingGroup, k: int, multiple_of: int, cap: int) -> int:
    """``k`` adjusted so that the kept count is the nearest multiple of ``multiple_of``."""
    total = group.sets.size + group.locked_sets
    if multiple_of <= 1 or k == 0 or total < multiple_of:
        return k
    kept = max(multiple_of, math.floor((total - k) / multiple_of + 0.5) * multiple_of)
    return max(0, min(cap, total - kept))


def plan_channels(
    model: ir.Model,
    *,
    ratio: float | None = 0.3,
    scope: Scope = "layer",
    ratios: Mapping[str, float] | None = None,
    norm: sc.Norm = "l1",
    max_ratio: float = 0.9,
    min_channels: int = 1,
    multiple_of: int = 8,
    exclude: Sequence[str] = (),
    exclude_first: bool = False,
    feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
) -> ChannelPlan:
    """Analyze ``model`` and choose the channel sets to remove (the model is not changed).

    ``ratios`` maps a group label or any of its conv names to a ratio; only those groups lose
    channels then. With calibration ``feeds`` the sets are ranked by what removing them costs
    the layers that read them (:func:`~onnxfit.pruning.compensate.activation_scores`)
    instead of by filter norms. See the module docstring for the rest.
    """
    if scope not in ("global", "layer"):
        raise InputError(f"unknown scope {scope!r}", hint="use 'global' or 'layer'")
    for name, r in [("ratio", ratio or 0.0), ("max_ratio", max_ratio)]:
        if not 0.0 <= r < 1.0:
            raise InputError(f"{name} must be in [0, 1), got {r}", hint=f"{name}=0.3")
    excluded = list(exclude)
    if exclude_first:
        from onnxfit.pruning.unstructured import boundary_nodes

        first, _ = boundary_nodes(model.graph)
        excluded += [str(n.name) for n in first if n.op_type == "Conv"]
    cg = analyze(model, shapes=_shapes(model), exclude=excluded)
    stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    data_scores = None
    if feeds:
        from onnxfit.pruning import compensate as pc

        stats = pc.channel_stats(model, feeds, pc.mixed_inputs(cg))
        data_scores = pc.activation_scores(cg, stats)
    groups = _groups(cg, norm, data_scores)
    caps = [_cap(g, max_ratio, min_channels) for g in groups]
    counts: list[int]
    if ratios is not None:
        counts = []
        for g, cap in zip(groups, caps, strict=True):
            r = next((ratios[k] for k in (g.label, *g.convs) if k in ratios), 0.0)
            counts.append(min(cap, sc.exact_count(float(r), g.sets.size + g.locked_sets)))
    elif scope == "layer":
        counts = [
            min(cap, sc.exact_count(ratio or 0.0, g.sets.size + g.locked_sets))
            for g, cap in zip(groups, caps, strict=True)
        ]
    else:
        total = sum(g.sets.size for g in groups)
        k = min(sc.exact_count(ratio or 0.0, total), sum(caps))
        counts = sc.prune_counts([g.scores for g in groups], k, caps)
    plan = ChannelPlan(cg, groups, stats=stats)
    for g, k, cap in zip(groups, counts, caps, strict=True):
        k = _rounded(g, k, multiple_of, cap)
        plan.removed.update(int(r) for r in g.sets[:k])
    return plan


def locked_convs(plan: ChannelPlan) -> list[str]:
    """Names of the source convs none of whose channels can be removed."""
    uf = plan.graph.uf
    out = [
        str(s.node.name)
        for s in plan.graph.sources
        if all(uf.locked[uf.find(int(i))] for i in s.ids)
    ]
    return sorted(set(out) | set(plan.graph.locked_sources))


def count_elements(model: ir.Model) -> int:
    return sum(
        int(v.const_value.size)
        for v in model.graph.initializers.values()
        if v.const_value is not None
    )


class PruneChannelsPass(OnnxfitPass):
    """Remove the lowest-scoring Conv output channels (see the module docstring);
    ``self.plan`` is the last run's :class:`ChannelPlan`."""

    name = "prune-channels"
    portable = True

    def __init__(
        self,
        *,
        ratio: float | None = 0.3,
        scope: Scope = "layer",
        ratios: Mapping[str, float] | None = None,
        norm: sc.Norm = "l1",
        max_ratio: float = 0.9,
        min_channels: int = 1,
        multiple_of: int = 8,
        exclude: Sequence[str] = (),
        exclude_first: bool = False,
        feeds: Sequence[Mapping[str, np.ndarray]] | None = None,
        compensate: bool = True,
    ) -> None:
        super().__init__()
        self.ratio = ratio
        self.scope = scope
        self.ratios = dict(ratios) if ratios is not None else None
        self.norm = norm
        self.max_ratio = max_ratio
        self.min_channels = min_channels
        self.multiple_of = multiple_of
        self.exclude = tuple(exclude)
        self.exclude_first = exclude_first
        self.compensate = compensate
        self._feeds = list(feeds) if feeds is not None else None  # not shown in repr
        self.plan: ChannelPlan | None = None

    def run(self, model: ir.Model) -> bool:
        params_before = count_elements(model)
        plan = plan_channels(
            model,
            ratio=self.ratio,
            scope=self.scope,
            ratios=self.ratios,
            norm=self.norm,
            max_ratio=self.max_ratio,
            min_channels=self.min_channels,
            multiple_of=self.multiple_of,
            exclude=self.exclude,
            exclude_first=self.exclude_first,
            feeds=self._feeds,
        )
        self.plan = plan
        before = sum(len(s.ids) for s in plan.graph.sources)
        removed = plan.removed_channels()
        if self.compensate and removed and plan.stats:
            from onnxfit.pruning.compensate import compensate

            self.stats["compensated"] = compensate(plan, plan.stats)
        apply_plan(model, plan)
        if removed:
            common.RemoveUnusedNodesPass()(model)
        after = before - sum(len(v) for v in removed.values())
        for name, chans in removed.items():
            logger.debug("prune-channels: %s loses %d channels", name, len(chans))
        self.stats.update(
            channels_before=before,
            channels_after=after,
            groups_pruned=sum(
                1 for g in plan.groups if any(int(r) in plan.removed for r in g.sets)
            ),
            params_before=params_before,
            params_after=count_elements(model),
            locked=locked_convs(plan),
        )
        logger.info(
            "prune-channels: %d -> %d conv output channels, %d -> %d parameters",
            before,
            after,
            params_before,
            self.stats["params_after"],
        )
        return bool(removed)
