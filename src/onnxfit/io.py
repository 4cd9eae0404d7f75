"""Safe model I/O: the only place ONNX protobuf files are read or written.

* :func:`load` returns an :class:`onnx_ir.Model` with its external data resolved. It refuses,
  with :class:`UnsafeModelError`, any external-data location that leaves the model's folder
  (absolute path, ``..``, or a symlink that resolves outside). A missing, empty, truncated or
  non-ONNX file raises :class:`ModelLoadError` naming the file and the reason.
* :func:`save` writes atomically (temporary file in the same folder, flush + fsync, rename),
  switches to external data when the serialized model would pass protobuf's 2 GiB limit, and
  refuses to overwrite the file the model was loaded from unless ``force=True``.
* :func:`to_proto` / :func:`from_proto` / :func:`to_bytes` are the edges used when handing a model
  to onnxruntime or its quantization tools.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError
from onnx import external_data_helper

from onnxfit import atomic
from onnxfit.errors import ModelLoadError, UnsafeModelError

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


def _iter_tensors(proto: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from external_data_helper._get_all_tensors(proto)


def _external_locations(proto: onnx.ModelProto) -> list[tuple[str, str]]:
    """(tensor name, location) of every tensor stored as external data."""
    out = []
    for tensor in _iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {e.key: e.value for e in tensor.external_data}
            out.append((tensor.name, info.get("location", "")))
    return out


def check_external_data(proto: onnx.ModelProto, base_dir: Path) -> list[Path]:
    """Check every external-data location stays inside ``base_dir``; return the files used.

    Raises :class:`UnsafeModelError` naming the tensor and location of the first bad entry,
    and :class:`ModelLoadError` when a referenced file is missing.
    """
    base = base_dir.resolve()
    files: list[Path] = []
    for name, location in _external_locations(proto):
        where = f"tensor {name!r} has external data location {location!r}"
        if not location:
            raise UnsafeModelError(f"{where}: empty location")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise UnsafeModelError(
                f"{where}: absolute paths are refused",
                hint="external data must sit in the model's folder; re-save the model there",
            )
        parts = Path(location.replace("\\", "/")).parts
        if ".." in parts:
            raise UnsafeModelError(
                f"{where}: '..' leaves the model's folder",
                hint="external data must sit in the model's folder; re-save the model there",
            )
        target = (base / location).resolve()
        if not target.is_relative_to(base):
            raise UnsafeModelError(
                f"{where}: it resolves to {target}, outside {base} (symlink?)",
                hint="copy the data file into the model's folder instead of linking to it",
            )
        if not target.is_file():
            raise ModelLoadError(
                f"{where}: file {target} does not exist",
                hint="keep the .data file next to the .onnx file",
            )
        if target not in files:
            files.append(target)
    return files


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise ModelLoadError(f"{path}: no such file", hint="check the path")
    if path.is_dir():
        raise ModelLoadError(f"{path}: is a folder, not an .onnx file")
    size = path.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{path}: the file is empty", hint="re-export or re-download it")
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
    if not proto.HasField("graph") or not proto.opset_import:
        raise ModelLoadError(
            f"{path}: not an ONNX model (no graph or no opset import)",
            hint="give a .onnx file exported by a framework or by onnxfit",
        )
    if len(proto.graph.node) == 0 and len(proto.graph.output) == 0:
        raise ModelLoadError(f"{path}: the model's graph is empty")
    return proto


def load(path: str | os.PathLike[str]) -> ir.Model:
    """Load a model file into an :class:`onnx_ir.Model`, refusing unsafe external data.

    External tensors stay memory-mapped on disk until read. The resolved source path is
    recorded in ``model.meta`` so that :func:`save` can refuse to overwrite it.
    """
    p = Path(path)
    proto = _read_proto(p)
    check_external_data(proto, p.parent)
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
    proto = _read_proto(p)
    check_external_data(proto, p.parent)
    if with_external and _external_locations(proto):
        external_data_helper.load_external_data_for_model(proto, str(p.parent))
    return proto


def to_proto(model: ir.Model) -> onnx.ModelProto:
    """Serialize an IR model to a ModelProto; external tensors stay references to their files
    (location, offset, length), unread."""
    return ir.to_proto(model)


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


def to_bytes(model: ir.Model | onnx.ModelProto) -> bytes:
    """The serialized model, e.g. for ``onnxruntime.InferenceSession(bytes)`` (< 2 GiB)."""
    proto = model if isinstance(model, onnx.ModelProto) else to_proto(model)
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
        out.parent.mkdir(parents=True, exist_ok=True)
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
        proto = to_proto(model)
        if proto.ByteSize() < external_threshold:
            atomic.write_bytes(out, proto.SerializeToString())
        else:
            data_name = out.name + ".data"
            mode = atomic.file_mode(out)
            fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
            os.close(fd)
            try:
                # onnx_ir writes the external file atomically itself, then we rename the graph.
                ir.save(model, tmp, external_data=data_name, size_threshold_bytes=1024)
                os.chmod(tmp, mode)  # mkstemp created it 0600
                os.replace(tmp, out)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    finally:
        if saved_meta is not None:
            model.meta[SOURCE_KEY] = saved_meta
    size = file_size(out)
    logger.info("saved %s (%d bytes, %.2f MiB)", out, size.bytes, size.mib)
    return size


def file_size(path: str | os.PathLike[str]) -> FileSize:
    """Exact bytes on disk of a model file and the external-data files it references."""
    p = Path(path)
    files = check_external_data(_read_proto(p), p.parent)
    model_bytes = p.stat().st_size
    external = sum(f.stat().st_size for f in files)
    return FileSize(str(p), model_bytes + external, model_bytes, external)
