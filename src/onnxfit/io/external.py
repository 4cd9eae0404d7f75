"""External data: every location stays in the model's folder and every byte range is in its file.

:func:`check_external_data` looks at every tensor stored outside the .onnx file (initializers,
sparse initializers, tensors in node attributes, subgraphs, functions) before anything reads it:

* the location is refused (:class:`UnsafeModelError`) when it is absolute, contains ``..``, or
  resolves (through symlinks) outside the model's folder;
* it is refused (:class:`ModelLoadError`) when it is empty, contains a NUL, is longer than a file
  system allows, names no file, a symlink loop, or something that is not a regular file (a FIFO,
  a folder, a device: reading those could block or never end);
* ``offset`` / ``length`` must be non-negative integers, the range must lie inside the file, and
  the length must be what the tensor's dims and dtype need.

:func:`read_external` reads one checked tensor's bytes (sparse initializers need it; onnx_ir
memory-maps the others itself).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from onnxfit.errors import ModelLoadError, UnsafeModelError
from onnxfit.io.tensors import all_tensors, expected_nbytes

#: Longest path / path component (bytes) that common file systems accept.
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255
_KEEP_HINT = "keep the .data file next to the .onnx file, as it was saved"
_SAFE_HINT = "external data must sit in the model's folder; re-save the model there"


def external_info(t: TensorProto) -> dict[str, str]:
    """The tensor's external-data entries (location, offset, length, checksum) as a dict."""
    return {e.key: e.value for e in t.external_data}


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a plain file"


def _check_location(where: str, location: str, base: Path) -> Path:
    """The checked file path for ``location`` (relative to ``base``, already resolved)."""
    if not location:
        raise UnsafeModelError(f"{where}: empty location")
    if "\x00" in location:
        raise ModelLoadError(f"{where}: the location contains a NUL character", hint=_KEEP_HINT)
    raw = location.encode("utf-8", "surrogateescape")
    longest = max((len(p.encode("utf-8", "surrogateescape")) for p in location.split("/")),
                  default=0)  # fmt: skip
    if len(raw) > MAX_PATH_BYTES or longest > MAX_NAME_BYTES:
        raise ModelLoadError(
            f"{where}: the location is {len(location):,} characters long; no file system "
            "accepts a file name that long",
            hint=_KEEP_HINT,
        )
    if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
        raise UnsafeModelError(f"{where}: absolute paths are refused", hint=_SAFE_HINT)
    parts = Path(location.replace("\\", "/")).parts
    if ".." in parts:
        raise UnsafeModelError(f"{where}: '..' leaves the model's folder", hint=_SAFE_HINT)
    joined = base / location
    target = Path(os.path.realpath(joined))
    if not target.is_relative_to(base):
        raise UnsafeModelError(
            f"{where}: it resolves to {target}, outside {base} (symlink?)",
            hint="copy the data file into the model's folder instead of linking to it",
        )
    try:
        st = os.stat(joined)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelLoadError(f"{where}: {joined} is a symlink loop", hint=_KEEP_HINT) from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            if os.path.islink(joined):
                raise ModelLoadError(
                    f"{where}: {joined} is a symlink to a file that does not exist",
                    hint=_KEEP_HINT,
                ) from None
            raise ModelLoadError(
                f"{where}: file {joined} does not exist", hint=_KEEP_HINT
            ) from None
        raise ModelLoadError(
            f"{where}: cannot open {joined} ({exc.strerror})", hint=_KEEP_HINT
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(
            f"{where}: {joined} is not a regular file (it is {_file_kind(st.st_mode)})",
            hint=_KEEP_HINT,
        )
    return target


def _int_field(where: str, info: dict[str, str], key: str) -> int | None:
    text = info.get(key)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ModelLoadError(
            f"{where}: external-data {key} {text[:40]!r} is not an integer", hint=_KEEP_HINT
        ) from None
    if value < 0:
        raise ModelLoadError(f"{where}: negative external-data {key} {value}", hint=_KEEP_HINT)
    return value


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Check every external-data location and byte range (module docstring); return the files.

    Raises :class:`UnsafeModelError` for a location outside ``base_dir`` and
    :class:`ModelLoadError` for a missing / irregular file or a bad range, naming the tensor.
    """
    base = Path(os.path.realpath(base_dir))
    files: list[Path] = []
    sizes: dict[Path, int] = {}
    for label, tensor in all_tensors(proto):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        info = external_info(tensor)
        location = info.get("location", "")
        where = f"{label} has external data location {location[:80]!r}"
        if len(location) > 80:
            where = f"{label} has external data location {location[:40]!r}..."
        target = _check_location(where, location, base)
        size = sizes.setdefault(target, target.stat().st_size)
        offset = _int_field(where, info, "offset") or 0
        length = _int_field(where, info, "length")
        need = expected_nbytes(label, tensor)
        if length is None:
            length = need if need is not None else size - offset
        if need is not None and length != need:
            raise ModelLoadError(
                f"{where}: length {length:,} bytes, but dims {list(tensor.dims)} need {need:,}",
                hint="the file is damaged; re-export or re-download the model",
            )
        if offset + length > size:
            empty = " (the file is empty)" if size == 0 else ""
            raise ModelLoadError(
                f"{where}: bytes {offset:,}..{offset + length:,} are past the end of "
                f"{target.name} ({size:,} bytes){empty}",
                hint="the .data file is truncated or does not belong to this model",
            )
        if target not in files:
            files.append(target)
    return files


def read_external(tensor: TensorProto, base_dir: Path) -> np.ndarray:
    """The array of one tensor whose external data :func:`check_external_data` accepted."""
    if tensor.data_location != TensorProto.EXTERNAL:
        return onnx.numpy_helper.to_array(tensor)
    info = external_info(tensor)
    offset = int(info.get("offset") or 0)
    need = expected_nbytes(tensor.name, tensor) or 0
    with open(Path(base_dir) / info["location"], "rb") as fh:
        fh.seek(offset)
        data = fh.read(need)
    copy = TensorProto()
    copy.CopyFrom(tensor)
    del copy.external_data[:]
    copy.data_location = TensorProto.DEFAULT
    copy.raw_data = data
    return onnx.numpy_helper.to_array(copy)
