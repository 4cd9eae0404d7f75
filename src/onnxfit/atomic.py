"""Atomic file writes: nothing half-written is ever left under the final name.

Every file onnxfit writes (models, reports, plots, pages, JSON sidecars) goes through
:func:`atomic_open`: a temporary file in the same folder, flushed and fsync'ed, given the mode a
plain ``open()`` would have given it (``mkstemp`` creates 0600), then renamed over the target.
On any error the temporary file is removed and the target is untouched; a read-only folder,
a full disk, a missing folder or a path that is too long becomes one
:class:`~onnxfit.errors.OutputError` line (:func:`output_error`) instead of a traceback.

The write guard lives here too. :func:`guard_output` is called by every command before any
work, for every path it will write: it refuses (one :class:`~onnxfit.errors.InputError` line,
exit 2) a path that is one of the command's own inputs (always, even with ``--force``) and a
file that already exists (unless ``--force``). Temporary files and folders carry the writing
process's id in their names (``.NAME.onnxfit-PID-xxxx.tmp``, ``NAME.onnxfit-PID.partial``,
``onnxfit-KIND-PID-xxxx/``), so that leftovers of a killed run (``kill -9`` skips every
cleanup) can be told apart from a live run's files: :func:`sweep_beside` and
:func:`sweep_temp` remove those whose process is gone, on the next run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from onnxfit.errors import InputError, OutputError

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
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(out), suffix=".tmp", dir=out.parent)
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


# --- the write guard -------------------------------------------------------------------------

#: The marker in the names of onnxfit's temporary files and folders (followed by the pid).
MARK = "onnxfit"
#: Temporary folders older than this whose process is gone are leftovers (seconds).
STALE_AFTER_S = 2.0


def temp_prefix(out: Path) -> str:
    """The ``mkstemp`` prefix of a temporary file beside ``out`` (hidden, with this pid)."""
    return f".{out.name}.{MARK}-{os.getpid()}-"


def partial_path(out: Path) -> Path:
    """Where a streamed output (JSON lines) grows before it is renamed to ``out``."""
    return out.with_name(f"{out.name}.{MARK}-{os.getpid()}.partial")


def temp_dir(kind: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder ``onnxfit-KIND-PID-xxxx`` in the system temp folder (removed on exit
    from the ``with`` block; :func:`sweep_temp` removes it after a ``kill -9``)."""
    return tempfile.TemporaryDirectory(prefix=f"{MARK}-{kind}-{os.getpid()}-")


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: somebody else's live process
        return True
    return True


def _leftover_pid(name: str, stem: str) -> int | None:
    """The pid in ``name`` when it is one of onnxfit's temporary names for ``stem``."""
    for head, tail in ((f".{stem}.{MARK}-", ".tmp"), (f"{stem}.{MARK}-", ".partial")):
        if name.startswith(head) and name.endswith(tail):
            digits = name[len(head) :].split("-", 1)[0].split(".", 1)[0]
            return int(digits) if digits.isdigit() else None
    return None


def sweep_beside(out: Path) -> list[Path]:
    """Remove the temporary files a killed onnxfit run left beside ``out`` (their process is
    gone); returns what was removed. Files of live runs and anything else are left alone."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(out.parent if str(out.parent) else "."))
    except OSError:
        return removed
    for entry in entries:
        pid = _leftover_pid(entry.name, out.name)
        if pid is None or _pid_alive(pid) or not entry.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


def sweep_temp(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove ``onnxfit-KIND-PID-*`` folders from the temp folder (or ``root``) whose process is
    gone and that are older than :data:`STALE_AFTER_S`, owned by this user; returns them."""
    import shutil
    import time

    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    removed: list[Path] = []
    try:
        entries = list(os.scandir(base))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        parts = entry.name.split("-")
        if len(parts) < 4 or parts[0] != MARK or not parts[2].isdigit():
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.getuid():
            continue
        if now - st.st_mtime < STALE_AFTER_S or _pid_alive(int(parts[2])):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(Path(entry.path))
    return removed


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def guard_output(
    out: str | os.PathLike[str],
    *,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    force: bool = False,
    option: str = "-o",
    protect_in_folders: Callable[[Path], bool] | None = None,
) -> Path:
    """Check, before any work, that ``out`` may be written; returns it as a Path.

    Refused with one :class:`InputError` line: a folder; one of the command's ``inputs`` (the
    same file by any name: symlink or hard link), even with ``force``; a file inside an input
    folder that ``protect_in_folders`` says is an input (an image the command reads); an existing
    file unless ``force``. Leftover temporary files of a killed run beside ``out`` are removed.
    """
    path = Path(out)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder", hint="give a file name")
    for given in inputs:
        if given is None:
            continue
        src = Path(given)
        if src.is_dir():
            hit = path.exists() and _inside(path, src)
            hit = hit and (protect_in_folders is None or protect_in_folders(path))
        else:
            hit = _same(path, src)
        if hit:
            raise InputError(
                f"{option} {path}: refusing to write over an input of this command ({src})",
                hint="write to another file (--force never overwrites an input)",
            )
    sweep_beside(path)
    if path.exists() and not force:
        raise InputError(
            f"{option} {path}: file exists", hint="choose another path, or pass --force"
        )
    return path
