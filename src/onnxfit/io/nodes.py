"""Node checks against the op schemas (part of :mod:`onnxfit.io.validate`).

:func:`check_node` refuses (:class:`ModelLoadError`) a node without an op type, attributes that
are unnamed, set twice, of type UNDEFINED or of an unknown type, a zero or negative ``group``,
stride, dilation or kernel size, a domain without an opset import, and, for ONNX's own domains,
an op its opset does not have, an attribute the op's schema does not list or lists with
another type, and a missing required attribute. A call of a model-local function may not pass
more inputs or take more outputs than the function declares; the rest of such calls and contrib
ops (``com.microsoft``: no schema here, onnxruntime knows its own) are left to the runtime.
"""

from __future__ import annotations

import functools

import onnx
from onnx import AttributeProto

from onnxfit.errors import ModelLoadError

_HINT = "the file is damaged or was written by a broken exporter; re-export the model"
#: Attributes that must be >= 1 where they appear (division by them, or a window size).
_POSITIVE = frozenset({"group", "strides", "dilations", "kernel_shape"})
#: (domain, name) of a model-local function.
FunctionKey = tuple[str, str]


def node_label(node: onnx.NodeProto) -> str:
    """``node 'conv1' (Conv)``, or ``unnamed Conv node``."""
    name = node.name if isinstance(node.name, str) else "?"
    return f"node {name!r} ({node.op_type})" if name else f"unnamed {node.op_type} node"


@functools.lru_cache(maxsize=4096)
def _schema(op_type: str, version: int, domain: str) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, version, domain)
    except onnx.defs.SchemaError:
        return None


_ONNX_DOMAINS = ("", "ai.onnx.ml")


def check_node(
    node: onnx.NodeProto,
    opsets: dict[str, int],
    functions: dict[FunctionKey, onnx.FunctionProto],
    prefix: str,
) -> None:
    """Refuse a node that breaks its schema (module docstring); ``prefix`` starts messages."""
    label = f"{prefix}{node_label(node)}"
    if not node.op_type:
        raise ModelLoadError(f"{label}: the node has no op type", hint=_HINT)
    names: set[str] = set()
    for attr in node.attribute:
        if not attr.name:
            raise ModelLoadError(f"{label}: an attribute has no name", hint=_HINT)
        if attr.name in names:
            raise ModelLoadError(f"{label}: attribute {attr.name!r} is set twice", hint=_HINT)
        names.add(attr.name)
        if attr.type == AttributeProto.UNDEFINED and not attr.ref_attr_name:
            raise ModelLoadError(f"{label}: attribute {attr.name!r} has type UNDEFINED", hint=_HINT)
        if attr.type not in AttributeProto.AttributeType.values():
            raise ModelLoadError(
                f"{label}: attribute {attr.name!r} has unknown type {attr.type}", hint=_HINT
            )
        if attr.name in _POSITIVE and attr.type in (AttributeProto.INT, AttributeProto.INTS):
            values = [attr.i] if attr.type == AttributeProto.INT else list(attr.ints)
            if any(v < 1 for v in values):
                raise ModelLoadError(
                    f"{label}: attribute {attr.name} = {values if len(values) > 1 else attr.i}; "
                    "it must be >= 1",
                    hint=_HINT,
                )
    domain = "" if node.domain == "ai.onnx" else node.domain
    fn = functions.get((node.domain, node.op_type))
    if fn is not None:
        for kind, given, declared in (("inputs", node.input, fn.input),
                                      ("outputs", node.output, fn.output)):  # fmt: skip
            if len(given) > len(declared):
                raise ModelLoadError(
                    f"{label}: calls function {fn.domain}::{fn.name} with {len(given)} {kind}; "
                    f"it has {len(declared)}",
                    hint=_HINT,
                )
        return
    if domain not in opsets:
        if prefix.startswith("function") and not opsets:
            return  # a function without its own imports uses the model's
        raise ModelLoadError(
            f"{label}: domain {node.domain or 'ai.onnx'!r} has no opset import", hint=_HINT
        )
    if domain not in _ONNX_DOMAINS:
        return  # contrib / custom ops: no schema here; onnxruntime knows its own
    schema = _schema(node.op_type, opsets[domain], domain)
    if schema is None:
        where = f"opset {opsets[domain]}" + (f" of {domain}" if domain else "")
        raise ModelLoadError(
            f"{label}: there is no op {node.op_type!r} in {where}",
            hint="the op is misspelt, custom, or newer than the model's opset",
        )
    for attr in node.attribute:
        spec = schema.attributes.get(attr.name)
        if spec is None:
            raise ModelLoadError(
                f"{label}: {node.op_type} has no attribute {attr.name!r}", hint=_HINT
            )
        expected = int(spec.type)  # type: ignore[call-overload]  # a pybind11 enum
        if attr.type != expected and not attr.ref_attr_name:
            raise ModelLoadError(
                f"{label}: attribute {attr.name!r} is {_attr_type(attr.type)}; "
                f"{node.op_type} expects {_attr_type(expected)}",
                hint=_HINT,
            )
    for name, spec in schema.attributes.items():
        if spec.required and name not in names:
            raise ModelLoadError(f"{label}: required attribute {name!r} is missing", hint=_HINT)


def _attr_type(code: int) -> str:
    try:
        return str(AttributeProto.AttributeType.Name(code))
    except ValueError:
        return f"type {code}"
