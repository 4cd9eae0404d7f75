"""Compare an optimized model with its original on the same inputs.

* :func:`compare_models` runs both models in onnxruntime (CPU) on the same feeds and returns a
  :class:`VerifyResult`: per output the max abs error, the max error relative to the reference
  output's largest magnitude, the mean abs error, and the cosine similarity of each sample
  (mean and worst); the top-1 agreement of a classifier-like output ``[N, C]``, or the top-box
  agreement of a decoded detector output ``[N, boxes, 5 + classes]``; and with ``labels`` the
  top-1 / top-5 accuracy of both models and the drop in points. ``synthetic`` says whether the
  inputs were made up (then the result says nothing about real accuracy).
* :func:`per_node_sensitivity` exposes every float tensor both models compute (same name) as an
  extra output, runs both, and ranks nodes by the error they *add* (their output's relative L2
  error minus the worst of their inputs'): the layers to keep in higher precision when backing
  off.
* :func:`load_eval_set` reads an evaluation folder (images + ``labels.tsv``, the format of
  ``../shared/data/imagenet-sample``).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.passes.calibration import CalibrationData

logger = logging.getLogger(__name__)

Task = Literal["classify", "detect"]
ModelArg = ir.Model | str | os.PathLike[str]
Inputs = CalibrationData | np.ndarray | Sequence[Mapping[str, np.ndarray]]


@dataclass
class OutputDiff:
    """Differences on one output (name and shape as the reference gives them)."""

    name: str
    shape: tuple[int, ...]
    max_abs_error: float
    max_rel_error: float
    mean_abs_error: float
    cosine: float
    cosine_min: float

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class VerifyResult:
    """What :func:`compare_models` measured. Accuracies are fractions; the drop is in points."""

    samples: int
    synthetic: bool
    task: Task | None
    outputs: list[OutputDiff]
    agreement: float | None = None
    agreement_output: str | None = None
    reference_accuracy: dict[str, float] = field(default_factory=dict)
    candidate_accuracy: dict[str, float] = field(default_factory=dict)

    @property
    def max_abs_error(self) -> float:
        return max((o.max_abs_error for o in self.outputs), default=0.0)

    @property
    def max_rel_error(self) -> float:
        return max((o.max_rel_error for o in self.outputs), default=0.0)

    @property
    def cosine_min(self) -> float:
        return min((o.cosine_min for o in self.outputs), default=1.0)

    @property
    def top1_agreement(self) -> float | None:
        """Top-1 agreement (classify) or top-box agreement (detect); None when neither applies."""
        return self.agreement

    @property
    def accuracy_drop(self) -> float | None:
        """Reference top-1 minus candidate top-1, in percentage points (None without labels)."""
        if "top1" not in self.reference_accuracy:
            return None
        return 100.0 * (self.reference_accuracy["top1"] - self.candidate_accuracy["top1"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "synthetic": self.synthetic,
            "task": self.task,
            "max_abs_error": self.max_abs_error,
            "max_rel_error": self.max_rel_error,
            "cosine_min": self.cosine_min,
            "agreement": self.agreement,
            "agreement_output": self.agreement_output,
            "reference_accuracy": dict(self.reference_accuracy),
            "candidate_accuracy": dict(self.candidate_accuracy),
            "accuracy_drop_pts": self.accuracy_drop,
            "outputs": [o.to_dict() for o in self.outputs],
        }


# ---------------------------------------------------------------------------- running


def _feeds(inputs: Inputs, input_names: Sequence[str]) -> tuple[list[dict[str, np.ndarray]], bool]:
    if isinstance(inputs, CalibrationData):
        return [dict(f) for f in inputs.feeds], inputs.synthetic
    if isinstance(inputs, np.ndarray):
        if len(input_names) != 1:
            raise InputError(
                f"an array feeds a single-input model; this one has {len(input_names)} inputs",
                hint="pass a list of {input name: array} dicts",
            )
        return [{input_names[0]: inputs}], False
    return [dict(f) for f in inputs], False


def _split(feed: Mapping[str, np.ndarray], size: int) -> Iterator[dict[str, np.ndarray]]:
    """Split a feed along axis 0 into pieces of ``size`` samples."""
    n = next(iter(feed.values())).shape[0]
    for i in range(0, n, size):
        yield {k: v[i : i + size] for k, v in feed.items()}


def _iter_runs(
    model: ModelArg | onnx.ModelProto, feeds: list[dict[str, np.ndarray]], batch: int
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``model`` on every feed, split to its fixed batch size (else to ``batch``)."""
    from onnxfit.runtime.session import Session

    with Session(model, target="cpu") as sess:
        first = sess.inputs[0].shape[0] if sess.inputs and sess.inputs[0].shape else None
        size = first if isinstance(first, int) and first > 0 else batch
        for feed in feeds:
            for piece in _split(feed, size):
                yield sess.run(piece)


def _run_all(
    model: ModelArg, feeds: list[dict[str, np.ndarray]], batch: int
) -> dict[str, np.ndarray]:
    """Outputs of ``model`` on all feeds, concatenated along the batch axis."""
    parts: dict[str, list[np.ndarray]] = {}
    for out in _iter_runs(model, feeds, batch):
        for name, value in out.items():
            parts.setdefault(name, []).append(np.asarray(value))
    return {k: np.concatenate(v) if v[0].ndim else np.stack(v) for k, v in parts.items()}


def _input_names(model: ModelArg) -> list[str]:
    graph = model.graph if isinstance(model, ir.Model) else None
    if graph is None:
        proto = io.load_proto(Path(model), with_external=False)  # type: ignore[arg-type]
        inits = {i.name for i in proto.graph.initializer}
        return [i.name for i in proto.graph.input if i.name not in inits]
    inits = set(graph.initializers)
    return [v.name or "" for v in graph.inputs if v.name not in inits]


# ---------------------------------------------------------------------------- math


def cosine_per_sample(ref: np.ndarray, cand: np.ndarray) -> np.ndarray:
    """Cosine similarity of each sample (axis 0) of two equal-shape arrays, in float64.

    Two all-zero samples count as identical (1.0); one all-zero sample as orthogonal (0.0).
    """
    r = ref.reshape(ref.shape[0], -1).astype(np.float64)
    c = cand.reshape(cand.shape[0], -1).astype(np.float64)
    nr, nc = np.linalg.norm(r, axis=1), np.linalg.norm(c, axis=1)
    dot = np.einsum("ij,ij->i", r, c)
    out = np.where((nr > 0) & (nc > 0), dot / np.maximum(nr * nc, 1e-300), 0.0)
    return np.where((nr == 0) & (nc == 0), 1.0, np.clip(out, -1.0, 1.0))


def output_diff(name: str, ref: np.ndarray, cand: np.ndarray) -> OutputDiff:
    """Error figures of one output; ``max_rel_error`` is ``max|ref - cand| / max|ref|``."""
    if ref.shape != cand.shape:
        raise InputError(
            f"output {name!r}: shapes differ ({list(ref.shape)} vs {list(cand.shape)})",
            hint="compare models with the same outputs",
        )
    r, c = ref.astype(np.float64), cand.astype(np.float64)
    diff = np.abs(r - c)
    scale = float(np.max(np.abs(r))) if r.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    cos = cosine_per_sample(r, c) if r.ndim and r.shape[0] else np.ones(1)
    return OutputDiff(
        name,
        tuple(ref.shape),
        max_abs,
        max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf),
        float(diff.mean()) if diff.size else 0.0,
        float(cos.mean()),
        float(cos.min()),
    )


def _class_scores(arr: np.ndarray) -> np.ndarray | None:
    """``arr`` as [N, C] when it looks like per-class scores ([N, C] or [N, C, 1, 1], C > 1)."""
    if arr.ndim >= 2 and arr.shape[1] > 1 and all(d == 1 for d in arr.shape[2:]):
        return arr.reshape(arr.shape[0], arr.shape[1])
    return None


def top_box(arr: np.ndarray) -> np.ndarray:
    """Per sample, (box index, class) of the best box of a decoded detector output
    ``[N, boxes, 5 + classes]`` whose column 4 is objectness and columns 5: class scores (as
    YOLOX exports it, sigmoids applied); score = objectness x class score. Shape [N, 2]."""
    scores = arr[..., 4:5] * arr[..., 5:]
    flat = scores.reshape(arr.shape[0], -1).argmax(axis=1)
    return np.stack(np.unravel_index(flat, scores.shape[1:]), axis=1)


def top1_agreement(ref: np.ndarray, cand: np.ndarray) -> float:
    """Fraction of samples whose argmax class is the same in both [N, C] score arrays."""
    return float(np.mean(ref.argmax(axis=1) == cand.argmax(axis=1))) if len(ref) else math.nan


def _agreement(
    ref: Mapping[str, np.ndarray], cand: Mapping[str, np.ndarray], task: Task | None
) -> tuple[float | None, str | None, Task | None]:
    for name, r in ref.items():
        if task in (None, "classify") and (rs := _class_scores(r)) is not None:
            cs = _class_scores(cand[name])
            assert cs is not None
            return top1_agreement(rs, cs), name, "classify"
        if task in (None, "detect") and r.ndim == 3 and r.shape[2] >= 6:
            same = np.all(top_box(r) == top_box(cand[name]), axis=1)
            return float(same.mean()), name, "detect"
    if task is not None:
        want = "[N, C] scores" if task == "classify" else "[N, boxes, 5 + classes]"
        raise InputError(
            f"task {task!r}: no output looks like {want}",
            hint="pass task=None to compare errors only",
        )
    return None, None, None


def _accuracy(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    from onnxfit.data.tasks import topk_accuracy

    acc = topk_accuracy(scores, labels, ks=[k for k in (1, 5) if k <= scores.shape[1]])
    return {f"top{k}": float(v) for k, v in acc.items()}


def check_labels(labels: np.ndarray, num_classes: int, *, what: str = "labels") -> None:
    """:class:`InputError` unless every label is a class index of a ``num_classes`` model."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(
            f"{what} run from {int(labels.min())} to {int(labels.max())}, but the model has "
            f"{num_classes} classes",
            hint="use an evaluation set made for this model's classes",
        )


def compare_models(
    reference: ModelArg,
    candidate: ModelArg,
    inputs: Inputs,
    *,
    labels: Sequence[int] | np.ndarray | None = None,
    task: Task | None = None,
    synthetic: bool | None = None,
    batch: int = 8,
) -> VerifyResult:
    """Run both models on ``inputs`` and measure how far ``candidate`` is from ``reference``.

    ``inputs``: :class:`CalibrationData`, one array (single-input models; axis 0 = samples) or a
    list of feed dicts. Feeds larger than a model's fixed batch size are split. ``labels``: one
    class index per sample, for top-1/top-5 accuracy of both (a classifier output is needed).
    ``task``: ``None`` finds a classifier or detector output by shape; a named task that finds
    none raises :class:`InputError`. ``synthetic`` overrides the flag taken from ``inputs``.
    """
    feeds, is_synthetic = _feeds(inputs, _input_names(reference))
    if not feeds:
        raise InputError("no inputs to compare the models on", hint="give at least one sample")
    ref = _run_all(reference, feeds, batch)
    cand = _run_all(candidate, feeds, batch)
    missing = sorted(set(ref) - set(cand))
    if missing:
        raise InputError(f"the candidate lacks outputs {missing}", hint="outputs must keep names")
    diffs = [output_diff(name, ref[name], cand[name]) for name in ref]
    agreement, agree_out, found = _agreement(ref, cand, task)
    samples = next(iter(ref.values())).shape[0] if ref else 0
    result = VerifyResult(
        samples,
        bool(is_synthetic if synthetic is None else synthetic),
        found or task,
        diffs,
        agreement,
        agree_out,
    )
    if labels is not None:
        lab = np.asarray(labels, dtype=np.int64).reshape(-1)
        scores = _class_scores(ref[agree_out]) if found == "classify" and agree_out else None
        if scores is None:
            raise InputError(
                "labels given, but no output looks like [N, C] class scores",
                hint="accuracy needs a classifier; drop the labels",
            )
        if len(lab) != samples:
            raise InputError(
                f"{len(lab)} labels for {samples} samples", hint="give one label per input sample"
            )
        check_labels(lab, scores.shape[1])
        cand_scores = _class_scores(cand[agree_out])  # type: ignore[index]
        assert cand_scores is not None
        result.reference_accuracy = _accuracy(scores, lab)
        result.candidate_accuracy = _accuracy(cand_scores, lab)
    logger.info(
        "verify: %d samples, max abs %.3g, cosine min %.5f, agreement %s",
        samples,
        result.max_abs_error,
        result.cosine_min,
        agreement,
    )
    return result


# ---------------------------------------------------------------------------- sensitivity

#: Ops a QDQ quantizer folds into the QuantizeLinear before them (their output takes the name).
_FOLDED = {"Relu", "Clip"}


@dataclass
class NodeDrift:
    """Drift at one reference tensor ``output``. ``nodes``: the reference nodes from the nearest
    compared tensors upstream down to it, then its consumers: excluding them all from
    quantization keeps the tensor and its computation float (ORT quantizes a tensor when its
    producer or any consumer is quantized). ``node`` is the main producer (the first that is
    not a folded activation)."""

    node: str
    op_type: str
    output: str
    rel_error: float
    cosine: float
    added: float
    nodes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "nodes": list(self.nodes)}


def _float_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    types.update({o.name: o.type.tensor_type.elem_type for o in proto.graph.output})
    return types


def _expose(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    present = {o.name for o in proto.graph.output}
    for name in names:
        if name not in present:
            proto.graph.output.append(
                onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
            )


def _dequantized_names(proto: onnx.ModelProto) -> dict[str, str]:
    """tensor X -> the output of the ``DequantizeLinear(QuantizeLinear(X))`` after it: the value
    the consumers of X see in a QDQ model."""
    q_of = {n.output[0]: n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    return {
        q_of[n.input[0]]: n.output[0]
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in q_of
    }


def _segment(
    name: str, producers: Mapping[str, onnx.NodeProto], measured: Mapping[str, float]
) -> tuple[list[onnx.NodeProto], float]:
    """Reference nodes from tensor ``name`` back to measured tensors; the worst drift there."""
    nodes: list[onnx.NodeProto] = []
    worst, stack, seen = 0.0, [name], set()
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        nodes.append(node)
        for inp in node.input:
            if inp in measured:
                worst = max(worst, measured[inp])
            elif inp in producers:
                stack.append(inp)
    return nodes, worst


def per_node_sensitivity(
    reference: ModelArg,
    candidate: ModelArg,
    inputs: Inputs,
    *,
    top: int | None = None,
    batch: int = 8,
) -> list[NodeDrift]:
    """Rank reference nodes by the error the candidate adds after them, worst first.

    Every float tensor a reference node computes is compared with the candidate's tensor of the
    same name (QDQ quantization keeps names) or, where the candidate quantizes it, with the
    ``DequantizeLinear`` output that its consumers see; relative L2 error and cosine over all
    ``inputs``. ``added`` is a tensor's error minus the worst error of the compared tensors it
    is computed from. Pass the model the candidate was made from (for INT8: the *prepared*
    model) so that names line up with ``nodes_to_exclude``. ``top`` keeps the first entries.
    """
    ref_proto = (
        io.to_proto(reference)
        if isinstance(reference, ir.Model)
        else io.load_proto(Path(reference))
    )
    cand_proto = (
        io.to_proto(candidate)
        if isinstance(candidate, ir.Model)
        else io.load_proto(Path(candidate))
    )
    ref_types = _float_types(ref_proto)
    producers = {o: n for n in ref_proto.graph.node for o in n.output if o}
    cand_tensors = {o for n in cand_proto.graph.node for o in n.output}
    seen_as = {**{t: t for t in cand_tensors}, **_dequantized_names(cand_proto)}
    pairs = {
        name: seen_as[name]
        for name in producers
        if ref_types.get(name) == onnx.TensorProto.FLOAT and name in seen_as
    }
    _expose(ref_proto, list(pairs))
    _expose(cand_proto, sorted(set(pairs.values())))
    feeds, _ = _feeds(inputs, _input_names(reference))
    # running sums per tensor: |r - c|^2, |r|^2, |c|^2, r.c (all samples; memory stays flat)
    sums: dict[str, np.ndarray] = {n: np.zeros(4) for n in pairs}
    runs = zip(
        _iter_runs(ref_proto, feeds, batch), _iter_runs(cand_proto, feeds, batch), strict=True
    )
    for ref_out, cand_out in runs:
        for name in list(sums):
            r = ref_out[name].astype(np.float64).ravel()
            c = cand_out[pairs[name]].astype(np.float64).ravel()
            if r.shape != c.shape:
                del sums[name]
                continue
            sums[name] += (np.dot(r - c, r - c), np.dot(r, r), np.dot(c, c), np.dot(r, c))
    rel = {
        n: math.sqrt(d2 / r2) if r2 > 0 else float(c2 > 0) for n, (d2, r2, c2, _) in sums.items()
    }
    consumers: dict[str, list[str]] = {}
    for node in ref_proto.graph.node:
        for inp in set(node.input):
            consumers.setdefault(inp, []).append(node.name)
    drifts = []
    for name, (_, r2, c2, rc) in sums.items():
        nodes, upstream = _segment(name, producers, {k: v for k, v in rel.items() if k != name})
        main = next((n for n in reversed(nodes) if n.op_type not in _FOLDED), nodes[0])
        cos = float(rc / math.sqrt(r2 * c2)) if r2 > 0 and c2 > 0 else float(r2 == c2)
        drifts.append(
            NodeDrift(
                main.name,
                main.op_type,
                name,
                rel[name],
                cos,
                rel[name] - upstream,
                [n.name for n in nodes] + consumers.get(name, []),
            )
        )
    drifts.sort(key=lambda d: d.added, reverse=True)
    return drifts[:top] if top is not None else drifts


# ---------------------------------------------------------------------------- eval data


def load_eval_set(
    folder: str | os.PathLike[str],
    preset: str,
    *,
    limit: int | None = None,
    num_classes: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Images and labels of an evaluation folder: the images under ``folder`` (any depth) that
    ``labels.tsv`` (``file`` and ``class_index`` columns, matched by base name) lists, as in
    ``../shared/data/imagenet-sample``.

    Returns (float32 [N, 3, H, W], int64 [N]) in sorted path order, at most ``limit``.
    Unreadable images are skipped with a warning. Labels outside ``num_classes`` (when given),
    a missing ``labels.tsv`` or no usable image raise :class:`InputError`.
    """
    from onnxfit.data.images import list_images, preprocess
    from onnxfit.data.tasks import labels_for, read_labels_tsv

    root = Path(folder)
    tsv = root / "labels.tsv"
    if not tsv.is_file():
        raise InputError(
            f"{root}: no labels.tsv in the evaluation folder",
            hint="add labels.tsv with columns file, class_index (see imagenet-sample)",
        )
    table = read_labels_tsv(tsv)
    paths = list_images(root, recursive=True)
    idx, _ = labels_for(paths, table)
    items = [(p, int(c)) for p, c in zip(paths, idx, strict=True) if c >= 0]
    if limit is not None:
        items = items[:limit]
    if not items:
        raise InputError(
            f"{root}: no image there is listed in labels.tsv",
            hint="the file column must name the images (by base name)",
        )
    if num_classes is not None:
        check_labels(
            np.array([c for _, c in items], dtype=np.int64), num_classes, what=f"labels in {tsv}"
        )
    arrays, labels, skipped = [], [], []
    for path, cls in items:
        try:
            arrays.append(preprocess(path, preset))
            labels.append(cls)
        except InputError as exc:
            skipped.append(str(exc))
    if skipped:
        logger.warning(
            "eval set: skipped %d unreadable image(s), e.g. %s", len(skipped), skipped[0]
        )
    if not arrays:
        raise InputError(
            f"{root}: none of the {len(items)} labelled images could be read",
            hint="check the images are valid JPEG/PNG files",
        )
    return np.stack(arrays).astype(np.float32, copy=False), np.asarray(labels, dtype=np.int64)
