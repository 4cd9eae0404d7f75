"""The few exceptions onnxfit raises for user mistakes.

Every user-facing error is an :class:`OnnxfitError`: the CLI prints ``error: <message>`` and,
when there is one, ``hint: <hint>`` on one line each, exits with status 2 (3 for
:class:`DoesNotFitError`) and writes nothing.
Any other exception escaping the CLI is a bug in onnxfit.
"""

from __future__ import annotations


class OnnxfitError(Exception):
    """Base class of every error caused by input rather than by a bug.

    ``hint`` says what to do about it (shown by the CLI after the message).
    """

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ModelLoadError(OnnxfitError):
    """A model file is missing, empty, truncated or not ONNX (the message names file and reason)."""


class UnsafeModelError(OnnxfitError):
    """A model refers to external data outside its own folder (absolute path, ``..``, symlink)."""


class BudgetExceededError(OnnxfitError):
    """A memory request does not fit in a pool, arena or memory budget (sizes in the message)."""


class DoesNotFitError(OnnxfitError):
    """A model (after optimizing) does not fit the target's memory budget; the CLI exits with
    status 3 (``onnxfit.analysis.fit.EXIT_DOES_NOT_FIT``). ``result`` holds what was measured
    (e.g. the :class:`~onnxfit.optimizer.result.OptimizeResult`), nothing was written."""

    exit_code = 3

    def __init__(self, message: str, *, hint: str | None = None, result: object = None) -> None:
        super().__init__(message, hint=hint)
        self.result = result


class VerificationError(OnnxfitError):
    """An optimized model could not be brought within the accuracy budget."""


class InputError(OnnxfitError):
    """A bad argument: unknown target, wrong shape or dtype, bad option value, bad data folder."""


class ExecutionError(OnnxfitError):
    """ONNX Runtime could not run the model (the message names the op and node when it can)."""


class OutputError(OnnxfitError):
    """An output cannot be written: it exists (no ``--force``), it is one of the command's own
    inputs, or the folder is read-only or the disk is full. Nothing was changed."""
