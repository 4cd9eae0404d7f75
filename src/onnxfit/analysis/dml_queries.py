"""DirectML's support-query functions, re-implemented for the pre-flight.

Some DirectML kernels are asked again, at session creation, whether they take a node with its
attributes (``supportQueryFunction`` in ``OperatorRegistration.cpp``). Three are re-implemented
here from ONNX Runtime's sources; each returns why DirectML refuses the node, or None:

* ``QueryMaxPool`` (``DmlOperatorPooling.cpp``): ``storage_order != 0``;
* ``QueryBatchNormalization`` (``DmlOperatorBatchNormalization.cpp``): ``training_mode != 0``,
  fewer than 5 inputs, or scale / bias / mean / var dtypes that differ from the input's;
* ``QueryResize`` (``DmlOperatorResize.cpp``): ``mode="cubic"``, ``exclude_outside != 0`` or
  ``extrapolation_value != 0``.

The pre-flight (:mod:`onnxfit.analysis.directml`) lists nodes of the other queried ops as
conditional.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir as ir


def _attr(node: ir.Node, name: str, default: Any) -> Any:
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _query_maxpool(node: ir.Node) -> str | None:
    return "storage_order != 0" if _attr(node, "storage_order", 0) != 0 else None


def _query_batchnorm(node: ir.Node) -> str | None:
    if _attr(node, "training_mode", 0) != 0:
        return "training_mode != 0"
    ins = [v for v in node.inputs if v is not None]
    if len(ins) < 5:
        return "fewer than 5 inputs"
    if len({v.dtype for v in ins}) > 1:
        return "scale/bias/mean/var dtypes differ from the input's"
    return None


def _query_resize(node: ir.Node) -> str | None:
    if _attr(node, "mode", "nearest") == "cubic":
        return 'mode="cubic"'
    if _attr(node, "exclude_outside", 0) != 0:
        return "exclude_outside != 0"
    if float(_attr(node, "extrapolation_value", 0.0)) != 0.0:
        return "extrapolation_value != 0"
    return None


#: support-query function name -> its re-implementation (the reason it refuses, or None)
QUERIES: dict[str, Callable[[ir.Node], str | None]] = {
    "QueryMaxPool": _query_maxpool,
    "QueryBatchNormalization": _query_batchnorm,
    "QueryResize": _query_resize,
}
