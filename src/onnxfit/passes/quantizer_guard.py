"""Running onnxruntime's INT8 quantizer so that one node it cannot handle stays float.

ORT's quantization tools are Python code that can fail deep inside on one node (seen on a real
speech model: a broadcast error in the bias quantizer). :func:`quantize_keeping_failures_float`
calls the quantizer; when it fails and its frames name the node it was working on, that node
is added to the excluded list (it stays float, with a WARNING saying so) and the quantizer runs
again, up to ``retries`` times. Any other failure becomes one :class:`ExecutionError` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from onnxfit.errors import ExecutionError
from onnxfit.runtime.ort_errors import one_line

logger = logging.getLogger(__name__)

#: Nodes that ORT's quantizer may fail on (each then stays float) before INT8 gives up.
MAX_QUANTIZER_RETRIES = 8


def _bias_consumer(local: dict[str, Any]) -> str | None:
    """The node reading ``bias_name`` in the quantizer's (``self``) model: its bias quantizer
    knows only the bias, and the ``node`` left in an outer frame is a stale loop variable."""
    bias, quantizer = local.get("bias_name"), local.get("self")
    nodes = getattr(getattr(quantizer, "model", None), "nodes", None)
    if not isinstance(bias, str) or not callable(nodes):
        return None
    try:
        for node in nodes():
            if bias in list(getattr(node, "input", ())):
                return str(getattr(node, "name", "") or "") or None
    except Exception:  # a third-party object: no answer rather than a second failure
        return None
    return None


def failing_node(exc: BaseException) -> str | None:
    """The name of the node ORT's quantizer was working on when ``exc`` was raised, innermost
    frame first: the consumer of the ``bias_name`` it was quantizing, else the node in a local
    called ``node``; None when no frame has either."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        consumer = _bias_consumer(frame.f_locals)
        if consumer:
            return consumer
        node: Any = frame.f_locals.get("node")
        # a NodeProto of ORT's quantizer (duck-typed: this module stays off protobuf)
        name = str(getattr(node, "name", "") or "") if type(node).__name__ == "NodeProto" else ""
        if name:
            return name
    return None


def quantize_keeping_failures_float(
    quantize: Callable[[list[str]], None],
    nodes_to_exclude: Sequence[str],
    *,
    retries: int = MAX_QUANTIZER_RETRIES,
) -> list[str]:
    """Call ``quantize(excluded)`` until it succeeds (module docstring); returns the nodes that
    were added to the excluded list because the quantizer failed on them."""
    excluded = list(nodes_to_exclude)
    added: list[str] = []
    for attempt in range(retries + 1):
        try:
            quantize(list(excluded))
            return added
        except Exception as exc:  # ORT's quantizer is Python code: any failure is its own
            node = failing_node(exc)
            if node is None or node in excluded or attempt == retries:
                raise ExecutionError(
                    one_line(f"onnxruntime's INT8 quantizer failed: {exc or type(exc).__name__}"),
                    hint="exclude the node that fails, or use --precision fp16",
                ) from None
            logger.warning(
                "onnxruntime's INT8 quantizer failed on node %r (%s): that node stays float",
                node,
                one_line(str(exc), 160),
            )
            excluded.append(node)
            added.append(node)
    return added
