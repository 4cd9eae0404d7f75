"""Shape resolution: fix the batch and symbolic input dims, then infer every tensor's shape.

:func:`infer_shapes` works on a copy of the model (the input is never changed):

1. Graph inputs: the first dim of every input of rank >= 2 becomes ``batch`` when it is symbolic
   or unknown; a symbol used there is replaced by ``batch`` wherever else it appears.
   ``input_shapes={"name": [1, 3, 224, 224]}`` overrides whole shapes. In a fixed-batch export
   (no input has a dynamic first dim) a first dim fixed to 1 is moved to ``batch`` when
   ``batch > 1`` is asked for; the graph is then checked to accept it (a Reshape with a
   hard-coded batch of 1 does not, and the error says which).
2. ONNX shape inference (``onnx.shape_inference.infer_shapes``, strict mode and data
   propagation; non-strict as a fallback) runs on the copy with large initializers lifted out,
   so models above protobuf's 2 GiB limit work too. When it leaves tensors unresolved
   (``com.microsoft`` contrib ops, shapes computed at run time), onnxruntime's symbolic shape
   inference fills the gaps; when even that leaves some open and every input is static, the
   model runs once in onnxruntime with those values exposed (:mod:`.shape_engines`).
   :func:`shape_engine` tells which engine resolved the last ones.
3. Every tensor must end with a static shape and a dtype, or :class:`InputError` names the
   unresolved ones (first few + count) and where they start. Tensors downstream of ops whose
   output shape depends on the data (NonZero, NonMaxSuppression, Loop, ...) may stay dynamic:
   they are logged, and the cost model marks the nodes that touch them as not fully known.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import onnx
import onnx_ir as ir

from onnxfit import io
from onnxfit.analysis import shape_engines as engines
from onnxfit.errors import InputError

logger = logging.getLogger(__name__)

#: Ops whose output shapes depend on input *values* that are not known before running.
DATA_DEPENDENT_OPS = frozenset(
    {
        "NonZero",
        "NonMaxSuppression",
        "Unique",
        "Compress",
        "Loop",
        "If",
        "Scan",
        "StringSplit",
        "RegexFullMatch",
    }
)
_SHOW = 5


def is_static(value: ir.Value | None) -> bool:
    """True when ``value`` has a dtype and a shape made only of integers."""
    return (
        value is not None
        and value.dtype not in (None, ir.DataType.UNDEFINED)
        and value.shape is not None
        and all(isinstance(d, int) for d in value.shape.dims)
    )


def static_dims(value: ir.Value | None) -> list[int] | None:
    """The dims of ``value`` as integers, or None when the shape is missing or symbolic."""
    if value is None or value.shape is None:
        return None
    out: list[int] = []
    for d in value.shape.dims:
        if not isinstance(d, int):
            return None
        out.append(d)
    return out


def fmt_shape(shape: ir.Shape | Sequence[object] | None) -> str:
    """``[1, 3, batch, ?]`` style text for a shape (``?`` for an unknown dim, ``?`` if none)."""
    if shape is None:
        return "?"
    dims = shape.dims if isinstance(shape, ir.Shape) else shape
    return "[" + ", ".join(_dim_text(d) for d in dims) + "]"


def _dim_text(d: object) -> str:
    if isinstance(d, int):
        return str(d)
    value = getattr(d, "value", d)
    return "?" if value is None else str(value)


def _hint_shape(name: str, shape: ir.Shape | None) -> str:
    if shape is None:
        return f"{name}=1x3x224x224"
    return name + "=" + "x".join(_dim_text(d).replace("?", "N") for d in shape.dims)


def _graph_inputs(model: ir.Model) -> list[ir.Value]:
    """Real graph inputs (initializers that are also listed as inputs are left out)."""
    return [v for v in model.graph.inputs if not v.is_initializer()]


def _copy(model: ir.Model) -> ir.Model:
    copy = io.clone(model)
    for key, value in model.meta.items():
        copy.meta[key] = value
    return copy


def _fix_inputs(
    model: ir.Model, batch: int, input_shapes: Mapping[str, Sequence[int]]
) -> list[str]:
    """Set input dims in place; return the names of inputs whose *static* dims changed."""
    inputs = {str(v.name): v for v in _graph_inputs(model)}
    unknown = sorted(set(input_shapes) - set(inputs))
    if unknown:
        raise InputError(
            f"--input-shape names no graph input: {', '.join(unknown)}",
            hint=f"the model's inputs are: {', '.join(str(n) for n in inputs)}",
        )
    # A symbol used as the batch dim means "batch" wherever it appears. A fixed leading 1
    # is only taken for the batch when no input has a dynamic one (a fixed-batch export).
    batch_symbols: set[str] = set()
    dynamic_batch = False
    for name, value in inputs.items():
        shape = value.shape
        if name in input_shapes or shape is None or len(shape) < 2:
            continue
        first = shape.dims[0]
        if not isinstance(first, int):
            dynamic_batch = True
            if first.value is not None:
                batch_symbols.add(first.value)
    move_fixed = batch != 1 and not dynamic_batch
    static_changed: list[str] = []
    for name, value in inputs.items():
        old = value.shape
        if name in input_shapes:
            new = [int(d) for d in input_shapes[name]]
            if old is not None and len(old) != len(new):
                raise InputError(
                    f"--input-shape {name}: {len(new)} dims given, the input has {len(old)} "
                    f"{fmt_shape(old)}",
                    hint=f"--input-shape {_hint_shape(str(name), old)}",
                )
            if old is not None and any(
                isinstance(o, int) and o != n for o, n in zip(old.dims, new, strict=True)
            ):
                static_changed.append(str(name))
            value.shape = ir.Shape(new)
            continue
        if old is None:
            continue
        dims: list[int | str | None] = []
        for i, d in enumerate(old.dims):
            if isinstance(d, int):
                if i == 0 and len(old) >= 2 and d == 1 and move_fixed:
                    dims.append(batch)
                    static_changed.append(str(name))
                else:
                    dims.append(d)
            elif (i == 0 and len(old) >= 2) or d.value in batch_symbols:
                dims.append(batch)
            else:
                dims.append(d.value)
        value.shape = ir.Shape(dims)
    return static_changed


def _forget_inferred(model: ir.Model) -> dict[str, ir.Shape]:
    """Drop the shapes of everything but graph inputs and initializers; return the old ones."""
    old: dict[str, ir.Shape] = {}
    graph = model.graph
    values = [out for node in graph for out in node.outputs]
    values += [v for v in graph.outputs if v not in values]
    for value in values:
        if value.is_graph_input() or value.is_initializer():
            continue
        if value.shape is not None and value.name:
            old[value.name] = value.shape
        value.shape = None
    return old


def _check_reshapes(model: ir.Model, changed: list[str], batch: int) -> None:
    """Refuse a graph that breaks under the new dims (a Reshape with a hard-coded batch).

    A Reshape whose in/out element counts differ is always wrong. When a fixed batch dim was
    moved (``changed``), a Reshape that turns a leading ``batch`` into 1 folds the batch into
    another dim and silently mixes samples: that is refused too.
    """
    for node in model.graph:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx"):
            continue
        x, y = node.inputs[0], node.outputs[0]
        x_dims, y_dims = static_dims(x), static_dims(y)
        if x_dims is None or y_dims is None or x is None:
            continue
        n_in, n_out = math.prod(x_dims), math.prod(y_dims)
        folds = bool(changed) and x_dims[:1] == [batch] and y_dims[:1] == [1]
        if n_in == n_out and not folds:
            continue
        const = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] else None
        target = fmt_shape(list(const.numpy().tolist())) if const is not None else "?"
        if n_in != n_out:
            why = (
                f"the graph hard-codes shape {target} in Reshape {node.name!r}, which gets a "
                f"tensor of shape {fmt_shape(x_dims)} ({n_in:,} elements, {n_out:,} expected)"
            )
        else:
            why = (
                f"Reshape {node.name!r} hard-codes shape {target}: it folds the batch of "
                f"{fmt_shape(x_dims)} into {fmt_shape(y_dims)}, mixing samples"
            )
        if changed:
            raise InputError(
                f"cannot run {', '.join(changed)} at batch {batch}: {why}",
                hint="use --batch 1 / the model's own input shape, or re-export the model "
                "with a dynamic batch dimension",
            )
        raise InputError(f"inconsistent model: {why}", hint="check the --input-shape values")


def _check_outputs_carry_batch(
    model: ir.Model, old: Mapping[str, ir.Shape], changed: list[str], batch: int
) -> None:
    """After moving a fixed batch of 1, every output that had batch 1 must now have ``batch``."""
    for value in model.graph.outputs:
        prev = old.get(str(value.name))
        if prev is None or len(prev) < 2 or prev.dims[0] != 1 or value.shape is None:
            continue
        if value.shape.dims[0] != batch:
            raise InputError(
                f"cannot run {', '.join(changed)} at batch {batch}: output {value.name!r} "
                f"comes out as {fmt_shape(value.shape)} instead of batch {batch} (the graph "
                "hard-codes a batch of 1 somewhere)",
                hint="use --batch 1, or re-export the model with a dynamic batch dimension",
            )


def _downstream_of_data_dependent(model: ir.Model) -> set[ir.Value]:
    tainted: set[ir.Value] = set()
    for node in model.graph:  # graph order is topological for valid ONNX
        dynamic = node.op_type in DATA_DEPENDENT_OPS or any(
            v in tainted for v in node.inputs if v is not None
        )
        if dynamic:
            tainted.update(node.outputs)
    return tainted


def _unresolved(model: ir.Model) -> list[ir.Value]:
    graph = model.graph
    seen: set[ir.Value] = set()
    out: list[ir.Value] = []
    candidates: Iterable[ir.Value] = [
        *_graph_inputs(model),
        *(v for node in graph for v in node.outputs),
        *graph.outputs,
    ]
    for value in candidates:
        if value in seen:
            continue
        seen.add(value)
        if not value.uses() and not value.is_graph_output() and not value.is_graph_input():
            continue  # an unused optional output never gets a shape; nothing reads it
        if not is_static(value):
            out.append(value)
    return out


def _roots(unresolved: Sequence[ir.Value]) -> list[str]:
    """Where the unresolved region starts: inputs, or nodes whose own inputs were resolved."""
    bad = set(unresolved)
    roots: list[str] = []
    for value in unresolved:
        node = value.producer()
        if node is None:
            roots.append(f"input {value.name!r} {fmt_shape(value.shape)}")
        elif not any(v in bad for v in node.inputs if v is not None):
            where = f"{node.domain}::" if node.domain not in ("", "ai.onnx") else ""
            label = f"node {node.name!r}" if node.name else "(unnamed node)"
            text = f"{where}{node.op_type} {label}"
            if text not in roots:
                roots.append(text)
    return roots


def _execute_for_shapes(model: ir.Model, engine: str) -> str:
    """Resolve what static inference left open by running the model once (static inputs
    only; values downstream of data-dependent ops stay open). Returns the engine to report."""
    tainted = _downstream_of_data_dependent(model)
    pending = [v for v in _unresolved(model) if v not in tainted and not v.is_graph_input()]
    if not pending:
        return engine
    logger.info("%d shapes still open; resolving them by running the model once", len(pending))
    found = engines.execution_infer(model, pending)
    return "execution" if found and engines.apply_executed(pending, found) else engine


def shape_engine(model: ir.Model) -> str | None:
    """Which engine resolved the last shapes of a model from :func:`infer_shapes`:
    ``onnx``, ``ort-symbolic`` or ``execution`` (None for a model it did not make)."""
    value = model.meta.get(engines.ENGINE_KEY)
    return str(value) if value is not None else None


def infer_shapes(
    model: ir.Model,
    *,
    batch: int = 1,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    allow_data_dependent: bool = True,
) -> ir.Model:
    """A copy of ``model`` with input dims fixed and every tensor's shape and dtype inferred.

    See the module docstring for the rules. ``allow_data_dependent=False`` also refuses
    tensors whose shape depends on runtime values. Raises :class:`InputError` for batch <= 0,
    an unknown input name, a shape the graph cannot take, or unresolved shapes.
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise InputError(f"batch must be a positive integer, got {batch!r}", hint="--batch 1")
    shapes = dict(input_shapes or {})
    for name, dims in shapes.items():
        if not dims or any(int(d) <= 0 for d in dims):
            raise InputError(
                f"--input-shape {name}: dims must be positive, got {list(dims)}",
                hint=f"--input-shape {name}=1x3x224x224",
            )
    out = _copy(model)
    changed = _fix_inputs(out, batch, shapes)
    if changed:
        logger.info("overriding fixed input dims of %s", ", ".join(changed))
    old = _forget_inferred(out)
    strict_error: str | None = None
    proto = engines.lifted_proto(out)
    try:
        try:
            inferred = engines.onnx_infer(proto, strict=True)
        except (onnx.shape_inference.InferenceError, RuntimeError) as exc:
            strict_error = str(exc).strip().splitlines()[-1][:300]
            logger.info("strict shape inference failed (%s); retrying non-strict", strict_error)
            inferred = engines.onnx_infer(proto, strict=False)
    except (onnx.shape_inference.InferenceError, RuntimeError, ValueError) as exc:
        raise InputError(
            f"ONNX shape inference failed: {str(exc).strip().splitlines()[-1][:300]}",
            hint="check --input-shape / --batch against the model's inputs",
        ) from None
    engines.merge(out, inferred)
    engine = "onnx"
    if open_before := len(_unresolved(out)):
        logger.info("ONNX left shapes unresolved; trying onnxruntime symbolic shape inference")
        ort_inferred = engines.ort_symbolic_infer(inferred)
        if ort_inferred is not None:
            engines.merge(out, ort_inferred, only_missing=True)
            engine = "ort-symbolic" if len(_unresolved(out)) < open_before else engine
    if not changed:  # shapes a previous tool stored stay valid when no static dim moved
        for node in out.graph:
            for value in node.outputs:
                prev = old.get(str(value.name))
                if value.shape is None and prev is not None and prev.is_static():
                    value.shape = prev
    engine = _execute_for_shapes(out, engine)
    out.meta[engines.ENGINE_KEY] = engine
    _check_reshapes(out, changed, batch)
    if changed:
        _check_outputs_carry_batch(out, old, changed, batch)
    unresolved = _unresolved(out)
    tainted = set() if not allow_data_dependent else _downstream_of_data_dependent(out)
    dynamic = [v for v in unresolved if v in tainted]
    hard = [v for v in unresolved if v not in tainted]
    if dynamic:
        logger.warning(
            "%d tensors have data-dependent shapes (e.g. %s); their cost is partly unknown",
            len(dynamic),
            ", ".join(repr(v.name) for v in dynamic[:_SHOW]),
        )
    if hard:
        names = ", ".join(f"{v.name!r} {fmt_shape(v.shape)}" for v in hard[:_SHOW])
        more = f" and {len(hard) - _SHOW} more" if len(hard) > _SHOW else ""
        roots = _roots(hard)
        start = f"; it starts at {', '.join(roots[:3])}" if roots else ""
        detail = f" (strict inference said: {strict_error})" if strict_error else ""
        symbolic = [v for v in _graph_inputs(out) if not is_static(v)]
        if symbolic:
            hint = "give every input a full shape: " + " ".join(
                f"--input-shape {_hint_shape(str(v.name), v.shape)}" for v in symbolic[:3]
            )
        else:
            hint = (
                "the ops named above are unknown to ONNX shape inference; give input shapes "
                "with --input-shape name=1x3x224x224 or run symbolic shape inference first"
            )
        raise InputError(
            f"shapes of {len(hard)} tensors stay unresolved: {names}{more}{start}{detail}",
            hint=hint,
        )
    logger.debug("shapes inferred for %d nodes (batch %d)", len(out.graph), batch)
    return out


def has_static_shapes(model: ir.Model, *, allow_data_dependent: bool = False) -> bool:
    """True when every graph input and used node output has a static shape and a dtype.

    ``allow_data_dependent`` ignores values downstream of data-dependent ops (NonZero, ...).
    """
    unresolved = _unresolved(model)
    if allow_data_dependent and unresolved:
        tainted = _downstream_of_data_dependent(model)
        unresolved = [v for v in unresolved if v not in tainted]
    return not unresolved
