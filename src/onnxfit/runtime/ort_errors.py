"""ONNX Runtime's failures as one-line onnxfit errors, and ONNX Runtime's log kept quiet.

ONNX Runtime raises its own exception classes (``Fail``, ``InvalidGraph``, ``InvalidArgument``,
``NotImplemented``, ``RuntimeException``...; none derives from a Python built-in error other
than ``Exception``) with messages that can run to hundreds of lines (one dynamo export gave a
104 KB message). :func:`ort_failure` turns one into an :class:`~onnxfit.errors.OnnxfitError`:

* the message is one line, at most :data:`MAX_MESSAGE` characters: what onnxfit was doing, the
  op and node that failed when ORT names them, and ORT's own first line;
* the hint says what to do for the common causes: attributes that do not match the weights
  (Conv ``group``), a tensor too large to allocate (a huge Expand / ConstantOfShape / Tile),
  an op or dtype the runtime lacks, a graph whose shapes or types disagree;
* ORT's full text goes to the log at DEBUG (``onnxfit -vv``).

:func:`ort_log_severity` is the ``log_severity_level`` sessions use: 4 (fatal only) unless
onnxfit logs at INFO (``-v``: 2, warnings and errors) or DEBUG (``-vv``: 1, info). Level 2 lets
through ORT's "Initializer ... appears in graph inputs" warnings (488 lines around one refusal,
issue 11); level 3 still prints ORT's own ERROR line, with C++ source paths, before every run
failure that :func:`ort_failure` then reports as one line, so the default is 4: ORT's full
text is in onnxfit's DEBUG log instead. :func:`quiet_ort` applies the level to ORT's default
logger too, which the sessions made by ORT's own tools (quantization) use.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _state

from onnxfit.errors import ExecutionError, ModelLoadError, OnnxfitError

logger = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

_ORT_CLASS_NAMES = (
    "Fail", "InvalidArgument", "InvalidGraph", "InvalidProtobuf", "NoModel", "NoSuchFile",
    "NotFound", "NotImplemented", "RuntimeException", "EPFail", "EngineError",
    "ModelLoadCanceled", "ModelRequiresCompilation",
)  # fmt: skip
#: ONNX Runtime's exception classes (those this version defines).
ORT_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for name in _ORT_CLASS_NAMES if isinstance(cls := getattr(_state, name, None), type)
)
#: What a failing ORT call can raise: its own classes, and MemoryError (numpy-side buffers).
ORT_OR_MEMORY: tuple[type[BaseException], ...] = (*ORT_ERRORS, MemoryError)
#: Longest one-line message (characters) an ORT failure becomes.
MAX_MESSAGE = 300

_NODE = re.compile(r"running (\S+) node\. Name:'([^']*)'(?: Status Message: )?")
_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : [A-Z_]+ : ")
#: ORT's source location and C++ signature before an ORT_ENFORCE message.
_SOURCE = re.compile(r"\S*onnxruntime\S*\.(?:h|cc|cpp|cu):\d+ (?:[^()]*\([^()]*\)(?: const)? )?")
_HINTS: tuple[tuple[re.Pattern[str], str], ...] = (
    (
        re.compile(r"alloc|out of memory|bad_alloc|Unable to allocate|size overflow", re.I),
        "a tensor is too large to allocate: check Expand / ConstantOfShape / Tile / Reshape "
        "shapes and the input dims (--input-shape)",
    ),
    (
        re.compile(r"group|kernel_shape|channels|W shape|Invalid input shape", re.I),
        "an attribute (group, kernel_shape, strides, pads) does not match the weights or the "
        "input: re-export the model",
    ),
    (
        re.compile(r"NOT_IMPLEMENTED|Could not find an implementation|not supported", re.I),
        "this onnxruntime lacks the op or dtype: try another opset, dtype or --provider",
    ),
    (
        re.compile(r"ShapeInference|shape|Type Error|type mismatch|INVALID_GRAPH", re.I),
        "the model's shapes or types disagree: re-export it, or check --input-shape",
    ),
)
_DEFAULT_HINT = "run with -vv to see onnxruntime's full message in the log"


def one_line(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1].rstrip() + "…"


def ort_failure(
    exc: BaseException,
    *,
    doing: str,
    error: type[OnnxfitError] = ExecutionError,
    lead: str | None = None,
) -> OnnxfitError:
    """An ``error`` saying onnxruntime failed while ``doing`` (e.g. "running the model").

    The full text of ``exc`` is logged at DEBUG; the message is one line of at most
    :data:`MAX_MESSAGE` characters, naming the op and node when ORT does.
    """
    full = str(exc) or type(exc).__name__
    logger.debug("onnxruntime failed while %s:\n%s", doing, full)
    first = full.strip().splitlines()[0] if full.strip() else full
    first = _SOURCE.sub("", _PREFIX.sub("", first))
    where = ""
    if m := _NODE.search(first):
        op, name = m.groups()
        where = f" at {op} node {name!r}" if name else f" at an unnamed {op} node"
        first = first[m.end() :] or first
    if isinstance(exc, MemoryError):
        first = f"out of memory ({first})"
    text = one_line(f"{lead or f'onnxruntime failed {doing}'}{where}: {first}")
    hint = next((h for pattern, h in _HINTS if pattern.search(full[:4000])), _DEFAULT_HINT)
    return error(text, hint=hint)


def session_failure(exc: BaseException) -> OnnxfitError:
    """:func:`ort_failure` for a session that could not be created (a :class:`ModelLoadError`)."""
    return ort_failure(
        exc,
        doing="to load the model",
        error=ModelLoadError,
        lead="onnxruntime cannot create a session for the model",
    )


def ort_log_severity() -> int:
    """4 (fatal), 2 with ``-v`` (warnings), 1 with ``-vv`` (info): see the module docstring."""
    root = logging.getLogger("onnxfit")
    if root.isEnabledFor(logging.DEBUG):
        return 1
    if root.isEnabledFor(logging.INFO):
        return 2
    return 4


def quiet_ort() -> int:
    """Set ORT's default logger to :func:`ort_log_severity`, and its Python tools' loggers
    (``onnxruntime.quantization...``, which log tracebacks at ERROR before raising) to silent
    unless ``-v``; returns the level set."""
    level = ort_log_severity()
    ort.set_default_logger_severity(level)
    logging.getLogger("onnxruntime").setLevel(logging.NOTSET if level <= 2 else logging.CRITICAL)
    return level


@contextlib.contextmanager
def translated(doing: str, *, error: type[OnnxfitError] = ExecutionError) -> Iterator[None]:
    """Turn an ORT failure (or a MemoryError) inside the block into :func:`ort_failure`."""
    try:
        yield
    except ORT_OR_MEMORY as exc:
        raise ort_failure(exc, doing=doing, error=error) from None


def guard_ort(doing: str, *, error: type[OnnxfitError] = ExecutionError) -> Callable[[F], F]:
    """Decorator: :func:`translated` around the whole function (a last net for an API call)."""

    def wrap(func: F) -> F:
        @functools.wraps(func)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with translated(doing, error=error):
                return func(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap
