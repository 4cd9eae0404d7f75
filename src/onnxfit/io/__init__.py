"""Safe model I/O: the only place ONNX protobuf files are read or written.

* :func:`load` returns an :class:`onnx_ir.Model` with its external data resolved (relative to
  the model's own folder, whatever the current directory). Before anything else reads the
  model, it is checked at this edge: a missing, empty, irregular (FIFO, folder), over-2-GiB,
  truncated or non-ONNX file, and every structural defect :mod:`onnxfit.io.validate` knows
  (undefined values, cycles, unknown dtypes, attributes of the wrong type, recursive
  functions, tensor data that disagrees with its dims...) raise :class:`ModelLoadError` naming
  the file, the node or tensor, and the reason. External data is checked by
  :mod:`onnxfit.io.external`: a location that leaves the model's folder (absolute path, ``..``,
  symlink out) raises :class:`UnsafeModelError`; a missing or irregular file or a byte range
  past its end raises :class:`ModelLoadError`. Sparse initializers become dense ones.
* :func:`load_proto` gives the checked ModelProto (for onnxruntime and its tools).
* :func:`save` writes atomically (temporary file in the same folder, flush + fsync, rename),
  switches to external data when the serialized model would pass protobuf's 2 GiB limit, and
  refuses to overwrite the file the model was loaded from unless ``force=True``.
* :func:`to_proto` / :func:`from_proto` / :func:`to_bytes` are the edges used when handing a model
  to onnxruntime or its quantization tools.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
import tempfile
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxfit import atomic
from onnxfit.errors import ModelLoadError, OnnxfitError
from onnxfit.io.external import check_external_data, read_external
from onnxfit.io.tensors import all_tensors, densify_sparse_initializers
from onnxfit.io.validate import validate

__all__ = [
    "MIB",
    "PROTOBUF_LIMIT",
    "SOURCE_KEY",
    "FileSize",
    "check_external_data",
    "file_size",
    "from_proto",
    "load",
    "load_proto",
    "save",
    "to_bytes",
    "to_proto",
]

logger = logging.getLogger(__name__)

#: Protobuf cannot serialize a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1
#: Metadata key under which :func:`load` records where a model came from.
SOURCE_KEY = "onnxfit.source_path"
MIB = 1024 * 1024


@dataclass(frozen=True)
class FileSize:
    """Exact size of a model on disk: the .onnx file plus every external-data file it uses."""

    path: str
    bytes: int
    model_bytes: int
    external_bytes: int

    @property
    def mib(self) -> float:
        return self.bytes / MIB

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "bytes": self.bytes,
            "mib": round(self.mib, 4),
            "model_bytes": self.model_bytes,
            "external_bytes": self.external_bytes,
        }


def _read_proto(path: Path) -> onnx.ModelProto:
    """Parse ``path`` after checking it is a regular, non-empty file under protobuf's limit."""
    try:
        st = path.stat()
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise ModelLoadError(f"{path}: no such file", hint="check the path") from None
        reason = "a symlink loop" if exc.errno == errno.ELOOP else exc.strerror
        raise ModelLoadError(f"{path}: cannot open it ({reason})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{path}: is a folder, not an .onnx file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(
            f"{path}: not a regular file", hint="give the path of a .onnx file on disk"
        )
    if st.st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty", hint="re-export or re-download it")
    if st.st_size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path}: {st.st_size / 2**30:.1f} GiB; a single .onnx file cannot exceed 2 GiB "
            "(protobuf's limit), so this one is damaged or not ONNX",
            hint="models above 2 GiB keep their weights in external .data files; re-export so",
        )
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read it ({exc.strerror})") from None
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        reason = "truncated or corrupt protobuf" if data[:1] == b"\x08" else "not an ONNX file"
        raise ModelLoadError(
            f"{path}: {reason} ({type(exc).__name__})",
            hint="re-export or re-download the model",
        ) from None
    del data
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(
            f"{path}: not an ONNX model (no graph or no opset import)",
            hint="give a .onnx file exported by a framework or by onnxfit",
        )
    if len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise ModelLoadError(f"{path}: the model's graph is empty")
    return proto


def _checked_proto(path: Path, *, densify: bool = False) -> tuple[onnx.ModelProto, list[Path]]:
    """Read, validate (:mod:`onnxfit.io.validate`) and check external data; (proto, files).

    ``densify`` also turns sparse initializers into dense ones (for onnx_ir).
    """
    proto = _read_proto(path)
    try:
        notes = validate(proto)
        files = check_external_data(proto, path.parent)
        densify_sparse_initializers(
            proto, lambda t: read_external(t, path.parent), check_only=not densify
        )
    except OnnxfitError as exc:
        exc.message = f"{path}: {exc.message}"
        exc.args = (exc.message,)
        raise
    for note in notes:
        logger.info("%s: %s", path, note)
    return proto, files


def load(path: str | os.PathLike[str]) -> ir.Model:
    """Load a model file into an :class:`onnx_ir.Model`, refusing unsafe external data.

    External tensors stay memory-mapped on disk until read. The resolved source path is
    recorded in ``model.meta`` so that :func:`save` can refuse to overwrite it.
    """
    p = Path(path)
    proto, _ = _checked_proto(p, densify=True)
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # malformed fields that parse as protobuf but not as ONNX
        raise ModelLoadError(f"{p}: not a valid ONNX model ({exc})") from None
    ir.external_data.set_base_dir(model.graph, str(p.parent.resolve()))
    model.meta[SOURCE_KEY] = str(p.resolve())
    logger.debug("loaded %s: %d nodes", p, len(model.graph))
    return model


def load_proto(path: str | os.PathLike[str], *, with_external: bool = True) -> onnx.ModelProto:
    """Load a model as protobuf (for tools that need one), with the same safety checks."""
    p = Path(path)
    proto, files = _checked_proto(p)
    if with_external and files:
        external_data_helper.load_external_data_for_model(proto, str(p.parent))
    return proto


def _external_tensors(model: ir.Model) -> dict[tuple[str, int], ir.ExternalTensor]:
    """(location, offset) -> every external tensor of ``model`` (initializers, attributes)."""
    external: dict[tuple[str, int], ir.ExternalTensor] = {}
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor):
                t = value.const_value
                external[(str(t.location), t.offset or 0)] = t
        for node in graph:
            for attr in node.attributes.values():
                if isinstance(attr.value, ir.ExternalTensor):
                    external[(str(attr.value.location), attr.value.offset or 0)] = attr.value
    return external


def to_proto(model: ir.Model, *, inline_external: bool = True) -> onnx.ModelProto:
    """Serialize an IR model to a ModelProto.

    ``inline_external=True`` (the default) makes it self-contained: external tensors are read
    into it. onnx_ir itself writes external references (relative locations), which would then be
    resolved against the current directory by whoever reads the proto; reading the bytes here
    keeps a model loaded from another folder working. ``False`` keeps the references, unread
    (progressive loading hands ORT the folder and never reads the weights in Python).
    """
    proto = ir.to_proto(model)
    external = _external_tensors(model) if inline_external else {}
    if not external:
        return proto
    for _, tensor in all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        source = external.get((info.get("location", ""), int(info.get("offset") or 0)))
        if source is None:
            continue
        tensor.raw_data = source.tobytes()
        del tensor.external_data[:]
        tensor.data_location = onnx.TensorProto.DEFAULT
    return proto


def from_proto(proto: onnx.ModelProto) -> ir.Model:
    """Deserialize a ModelProto (with all data in memory) into an IR model."""
    return ir.from_proto(proto)


def clone(model: ir.Model) -> ir.Model:
    """An independent copy of ``model`` for passes to change: ``onnx_ir.Model.clone`` (new graph,
    nodes and values; tensors shared, which passes replace and never write in place) with every
    value's *type* unshared too. ``Model.clone`` shares type objects between the copies, and
    ``Value.dtype = ...`` changes the type object in place, so retyping a value of the copy
    (the FP16 emulation does) would retype the original's value as well. The copy has no
    source-path marker."""
    copy = model.clone()
    graphs: list[Any] = [copy.graph, *(f for f in copy.functions.values())]
    for node in ir.traversal.RecursiveGraphIterator(copy.graph):
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                graphs.append(attr.value)
            elif attr.type == ir.AttributeType.GRAPHS:
                graphs.extend(attr.value)
    for graph in graphs:
        values = [*graph.inputs, *getattr(graph, "initializers", {}).values()]
        values += [out for node in graph for out in node.outputs]
        for value in values:
            if value.type is not None:
                value.type = deepcopy(value.type)
    return copy


def to_bytes(model: ir.Model | onnx.ModelProto, *, inline_external: bool = True) -> bytes:
    """The serialized model, e.g. for ``onnxruntime.InferenceSession(bytes)`` (< 2 GiB);
    ``inline_external`` as in :func:`to_proto`."""
    proto = (
        model
        if isinstance(model, onnx.ModelProto)
        else to_proto(model, inline_external=inline_external)
    )
    return proto.SerializeToString()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def save(
    model: ir.Model | onnx.ModelProto,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    external_threshold: int = PROTOBUF_LIMIT,
) -> FileSize:
    """Write ``model`` to ``path`` atomically and return its exact size on disk.

    When the serialized model would exceed ``external_threshold`` bytes (protobuf's 2 GiB limit by
    default), tensors go to ``<name>.data`` beside it. Refuses (``ModelLoadError``) to overwrite
    the file the model was loaded from, or any existing file, unless ``force=True``.
    """
    out = Path(path)
    if out.is_dir():
        raise ModelLoadError(f"{out}: is a folder; give a file name ending in .onnx")
    if not out.parent.exists():
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise atomic.output_error(out, exc) from None
    if isinstance(model, onnx.ModelProto):
        model = from_proto(model)
    source = model.meta.get(SOURCE_KEY)
    if not force and source and _same_file(Path(source), out):
        raise ModelLoadError(
            f"{out}: refusing to overwrite the model it was loaded from",
            hint="write to another file, or pass force=True / --force",
        )
    if not force and out.exists():
        raise ModelLoadError(
            f"{out}: file exists", hint="choose another output path, or pass force=True / --force"
        )
    # The source-path marker belongs to the loaded object, not to the file we write.
    saved_meta = model.meta.pop(SOURCE_KEY, None)
    try:
        # the size without reading external tensors in: a model above the limit is not read
        external = sum(t.nbytes for t in _external_tensors(model).values())
        if ir.to_proto(model).ByteSize() + external < external_threshold:
            atomic.write_bytes(out, to_proto(model).SerializeToString())
        else:
            _save_external(model, out)
    except OSError as exc:
        if exc.errno not in atomic.WRITE_ERRNOS:
            raise
        raise atomic.output_error(out, exc) from None
    finally:
        if saved_meta is not None:
            model.meta[SOURCE_KEY] = saved_meta
    size = file_size(out)
    logger.info("saved %s (%d bytes, %.2f MiB)", out, size.bytes, size.mib)
    return size


def _save_external(model: ir.Model, out: Path) -> None:
    """Save with tensors in ``<out>.data`` (onnx_ir writes that file atomically itself; the
    graph goes to a temporary file renamed over ``out``)."""
    mode = atomic.file_mode(out)
    fd, tmp = tempfile.mkstemp(prefix=atomic.temp_prefix(out), suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        ir.save(model, tmp, external_data=out.name + ".data", size_threshold_bytes=1024)
        os.chmod(tmp, mode)  # mkstemp created it 0600
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def file_size(path: str | os.PathLike[str]) -> FileSize:
    """Exact bytes on disk of a model file and the external-data files it references."""
    p = Path(path)
    _, files = _checked_proto(p)
    model_bytes = p.stat().st_size
    external = sum(f.stat().st_size for f in files)
    return FileSize(str(p), model_bytes + external, model_bytes, external)
