"""Atomic file writes: nothing half-written is ever left under the final name.

Every file onnxfit writes (models, reports, plots, pages, JSON sidecars) goes through
:func:`atomic_open`: a temporary file in the same folder, flushed and fsync'ed, given the mode a
plain ``open()`` would have given it (``mkstemp`` creates 0600), then renamed over the target.
On any error the temporary file is removed and the target is untouched; a read-only folder,
a full disk, a missing folder or a path that is too long becomes one
:class:`~onnxfit.errors.OutputError` line (:func:`output_error`) instead of a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from onnxfit.errors import OutputError

#: errno values that mean "this output cannot be written here" (not a bug in onnxfit).
WRITE_ERRNOS = frozenset(
    {
        errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.ENOENT,
        errno.ENOTDIR, errno.EISDIR, errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, errno.EXDEV,
    }
)  # fmt: skip


def output_error(path: str | os.PathLike[str], exc: OSError) -> OutputError:
    """One line saying why ``path`` cannot be written, with what to do about it."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        hint = "free some disk space, or write to another disk"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = "write to a folder you can write to (-o other/folder/file)"
    else:
        hint = "check the output path"
    return OutputError(f"cannot write {path}: {reason}", hint=hint)


def file_mode(path: str | os.PathLike[str] | None = None) -> int:
    """The existing file's mode, or the one a plain ``open()`` gives a new file (0o666 - umask)."""
    if path is not None:
        with contextlib.suppress(OSError):
            return Path(path).stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_open(
    path: str | os.PathLike[str], mode: str = "wb", *, encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path`` for writing; rename it to ``path`` on success."""
    out = Path(path)
    final_mode = file_mode(out)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    except OSError as exc:
        if exc.errno in WRITE_ERRNOS:
            raise output_error(out, exc) from None
        raise
    try:
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, final_mode)
        os.replace(tmp, out)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise output_error(out, exc) from None
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_open(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)
