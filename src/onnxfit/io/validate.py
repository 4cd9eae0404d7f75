"""Structural validation of a parsed model, before any analysis touches it.

:func:`validate` raises :class:`ModelLoadError` naming the node (or tensor, or function) and
the reason for the first defect it finds:

* header: IR version and opset imports that no runtime knows, a domain imported twice;
* strings: any name, op type, domain, doc string, metadata or string attribute that is not
  valid UTF-8;
* tensors: unknown data types, negative dims, data inconsistent with dims and dtype
  (:mod:`onnxfit.io.tensors`);
* graphs (main graph, subgraphs, function bodies): a value read that nothing defines, a value
  defined twice, a cycle, a graph output that nothing produces, a main graph with no outputs,
  graph inputs without a (known) dtype, negative dims;
* nodes: an op unknown to its opset, a domain without an opset import, attributes of type
  UNDEFINED, duplicated, unknown to the op's schema, of the wrong type (``kernel_shape`` as
  STRINGS), required ones missing, and a zero/negative ``group``, stride, dilation or kernel;
* model-local functions: defined twice, or calling themselves (directly or through others).

Nodes that are merely out of topological order (ONNX Runtime sorts them itself) are sorted in
place instead of refused; :func:`validate` returns a note saying so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from onnx import AttributeProto, TensorProto

from onnxfit.errors import ModelLoadError
from onnxfit.io.nodes import FunctionKey, check_node, node_label
from onnxfit.io.tensors import all_tensors, check_tensor, dtype_name, is_known_dtype

_HINT = "the file is damaged or was written by a broken exporter; re-export the model"
_STRING_ATTRS = (AttributeProto.STRING, AttributeProto.STRINGS)


def validate(model: onnx.ModelProto) -> list[str]:
    """Refuse a structurally broken model (module docstring); return notes on what was fixed."""
    _check_strings(model, "model")
    opsets = _check_header(model)
    for where, tensor in all_tensors(model):
        check_tensor(where, tensor)
    functions = _check_functions(model)
    notes: list[str] = []
    graph = model.graph
    if not graph.output:
        raise ModelLoadError(
            "the graph has no outputs, so nothing can be computed", hint="re-export the model"
        )
    _check_graph(graph, set(), opsets, functions, "", notes)
    return notes


# ---------------------------------------------------------------------- header and strings


def _check_header(model: onnx.ModelProto) -> dict[str, int]:
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise ModelLoadError(
            f"IR version {model.ir_version} is not one ONNX knows (3..{onnx.IR_VERSION})",
            hint=_HINT,
        )
    return _opset_map(model.opset_import, "the model")


def _opset_map(imports: Iterable[onnx.OperatorSetIdProto], where: str) -> dict[str, int]:
    opsets: dict[str, int] = {}
    newest = onnx.defs.onnx_opset_version()
    for op in imports:
        domain = "" if op.domain == "ai.onnx" else op.domain
        if domain in opsets:
            raise ModelLoadError(f"{where} imports domain {op.domain!r} twice", hint=_HINT)
        if domain == "" and not 1 <= op.version <= newest:
            raise ModelLoadError(
                f"{where} imports ONNX opset {op.version}; this onnx knows opsets 1..{newest}",
                hint="convert the model to a released opset (onnx.version_converter)",
            )
        opsets[domain] = int(op.version)
    return opsets


def _check_strings(message: Message, where: str) -> None:
    """Every string field (and STRING attribute) of ``message`` must be valid UTF-8."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            if isinstance(message, TensorProto):
                continue  # tensors carry data, not names worth walking
            items = value if _is_repeated(field) else [value]
            for item in items:
                _check_strings(item, _where(where, item))
        elif field.type == FieldDescriptor.TYPE_STRING:
            items = value if _is_repeated(field) else [value]
            bad = [v for v in items if isinstance(v, bytes)]
            if bad:
                kind = message.DESCRIPTOR.name.removesuffix("Proto")
                raise ModelLoadError(
                    f"{where}: {kind}.{field.name} {bad[0][:24]!r} is not valid UTF-8",
                    hint=_HINT,
                )
        elif (
            isinstance(message, AttributeProto)
            and message.type in _STRING_ATTRS
            and field.name in ("s", "strings")
        ):
            for v in value if _is_repeated(field) else [value]:
                try:
                    v.decode("utf-8")
                except UnicodeDecodeError:
                    raise ModelLoadError(
                        f"{where}: string attribute {message.name!r} is not valid UTF-8",
                        hint=_HINT,
                    ) from None


def _is_repeated(field: FieldDescriptor) -> bool:
    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.29; `label` before
    if repeated is None:
        repeated = field.label == FieldDescriptor.LABEL_REPEATED
    return bool(repeated)


def _where(parent: str, item: Message) -> str:
    if isinstance(item, onnx.NodeProto) and isinstance(item.name, str):
        return node_label(item)
    if isinstance(item, onnx.FunctionProto) and isinstance(item.name, str):
        return f"function {item.name!r}"
    return parent


# ---------------------------------------------------------------------- functions


def _check_functions(model: onnx.ModelProto) -> dict[FunctionKey, onnx.FunctionProto]:
    functions: dict[FunctionKey, onnx.FunctionProto] = {}
    for fn in model.functions:
        key = (fn.domain, fn.name)
        if key in functions and not getattr(fn, "overload", ""):
            raise ModelLoadError(f"function {fn.domain}::{fn.name} is defined twice", hint=_HINT)
        functions[key] = fn
    calls = {
        key: {(n.domain, n.op_type) for n in fn.node if (n.domain, n.op_type) in functions}
        for key, fn in functions.items()
    }
    state: dict[FunctionKey, int] = {}  # 1: on the stack, 2: done

    def visit(key: FunctionKey, stack: list[FunctionKey]) -> None:
        state[key] = 1
        for callee in sorted(calls[key]):
            if state.get(callee) == 1:
                cycle = [*stack[stack.index(callee) :], callee]
                text = " -> ".join(f"{d}::{n}" for d, n in cycle)
                raise ModelLoadError(
                    f"model-local functions call themselves ({text}); ONNX forbids recursion",
                    hint=_HINT,
                )
            if state.get(callee) is None:
                visit(callee, [*stack, callee])
        state[key] = 2

    for key in sorted(functions):
        if key not in state:
            visit(key, [key])
    for (domain, name), fn in functions.items():
        where = f"function {domain}::{name}"
        opsets = _opset_map(fn.opset_import, where) if fn.opset_import else {}
        order = _order(fn.node, set(fn.input), where, functions, opsets)
        if order is not None:
            _reorder(fn.node, order)
        produced = set(fn.input) | {o for n in fn.node for o in n.output if o}
        for out in fn.output:
            if out not in produced:
                raise ModelLoadError(f"{where}: output {out!r} is produced by no node", hint=_HINT)
    return functions


# ---------------------------------------------------------------------- graphs


def _free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a subgraph reads from its enclosing scopes."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {sp.values.name for sp in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(i for i in node.input if i)
        for sub in _subgraphs(node):
            used |= _free_names(sub)
        defined.update(o for o in node.output if o)
    used.update(o.name for o in graph.output)
    return used - defined


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _node_reads(node: onnx.NodeProto) -> list[str]:
    reads = [i for i in node.input if i]
    for sub in _subgraphs(node):
        reads.extend(sorted(_free_names(sub)))
    return reads


def _order(
    nodes: Iterable[onnx.NodeProto],
    defined: set[str],
    where: str,
    functions: dict[FunctionKey, onnx.FunctionProto],
    opsets: dict[str, int],
) -> list[int] | None:
    """A topological order of ``nodes`` (None when already sorted); refuses broken graphs."""
    nodes = list(nodes)
    producer: dict[str, int] = {}
    prefix = f"{where}: " if where else ""
    for i, node in enumerate(nodes):
        check_node(node, opsets, functions, prefix)
        for out in node.output:
            if not out:
                continue
            if out in defined:
                raise ModelLoadError(
                    f"{prefix}{node_label(node)} writes {out!r}, which is already a graph "
                    "input or initializer",
                    hint=_HINT,
                )
            if out in producer:
                other = nodes[producer[out]]
                raise ModelLoadError(
                    f"{prefix}value {out!r} is produced twice, by {node_label(other)} and "
                    f"{node_label(node)}",
                    hint=_HINT,
                )
            producer[out] = i
    deps: list[set[int]] = []
    for node in nodes:
        need: set[int] = set()
        for name in _node_reads(node):
            if name in producer:
                need.add(producer[name])
            elif name not in defined:
                raise ModelLoadError(
                    f"{prefix}{node_label(node)} reads {name!r}, which no node, graph input "
                    "or initializer defines",
                    hint=_HINT,
                )
        deps.append(need)
    if all(d < i for i, need in enumerate(deps) for d in need):
        return None
    users: list[list[int]] = [[] for _ in nodes]
    missing = [len(need) for need in deps]
    for i, need in enumerate(deps):
        for d in need:
            users[d].append(i)
    ready = deque(i for i, m in enumerate(missing) if m == 0)
    order: list[int] = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in sorted(users[i]):
            missing[u] -= 1
            if missing[u] == 0:
                ready.append(u)
    if len(order) < len(nodes):
        stuck = [node_label(nodes[i]) for i, m in enumerate(missing) if m > 0][:3]
        raise ModelLoadError(
            f"{prefix}the graph has a cycle through {', '.join(stuck)}", hint=_HINT
        )
    return order


def _reorder(container: object, order: list[int]) -> None:
    nodes = list(container)  # type: ignore[call-overload]
    del container[:]  # type: ignore[attr-defined]
    container.extend(nodes[i] for i in order)  # type: ignore[attr-defined]


def _check_value_infos(graph: onnx.GraphProto, prefix: str, *, top: bool) -> None:
    inits = {t.name for t in graph.initializer} | {s.values.name for s in graph.sparse_initializer}
    groups = (("graph input", graph.input), ("graph output", graph.output),
              ("value_info", graph.value_info))  # fmt: skip
    for kind, infos in groups:
        for info in infos:
            label = f"{prefix}{kind} {info.name!r}"
            if not info.HasField("type") or info.type.WhichOneof("value") is None:
                if kind == "graph input" and top and info.name not in inits:
                    raise ModelLoadError(f"{label} has no type", hint=_HINT)
                continue
            if info.type.WhichOneof("value") != "tensor_type":
                continue
            tt = info.type.tensor_type
            if tt.elem_type and not is_known_dtype(tt.elem_type):
                raise ModelLoadError(
                    f"{label} has data type {dtype_name(tt.elem_type)}, not one ONNX defines",
                    hint=_HINT,
                )
            if kind == "graph input" and not tt.elem_type and info.name not in inits:
                raise ModelLoadError(f"{label} has no data type", hint=_HINT)
            for d in tt.shape.dim:
                if d.HasField("dim_value") and d.dim_value < 0:
                    raise ModelLoadError(f"{label} has a negative dimension", hint=_HINT)


def _check_graph(
    graph: onnx.GraphProto,
    outer: set[str],
    opsets: dict[str, int],
    functions: dict[FunctionKey, onnx.FunctionProto],
    prefix: str,
    notes: list[str],
) -> None:
    top = not prefix
    names = [t.name for t in graph.initializer] + [s.values.name for s in graph.sparse_initializer]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ModelLoadError(f"{prefix}initializer {name!r} is defined twice", hint=_HINT)
        seen.add(name)
    _check_value_infos(graph, prefix, top=top)
    defined = set(outer) | {i.name for i in graph.input} | seen
    order = _order(graph.node, defined, prefix.rstrip(": "), functions, opsets)
    if order is not None:
        _reorder(graph.node, order)
        notes.append(f"{prefix}nodes were out of topological order; sorted")
    produced = defined | {o for n in graph.node for o in n.output if o}
    for out in graph.output:
        if out.name not in produced:
            raise ModelLoadError(
                f"{prefix}graph output {out.name!r} is produced by no node", hint=_HINT
            )
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                label = f"{prefix}{node_label(node)} subgraph {attr.name!r}: "
                _check_graph(sub, produced, opsets, functions, label, notes)
