"""Safe model I/O: unsafe external data refused, corrupt files named, atomic no-clobber saves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import atomic, io
from onnxfit.errors import ModelLoadError, UnsafeModelError


def _tiny_proto(weight_elems: int = 64) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.arange(weight_elems, dtype=np.float32), "w")
    node = helper.make_node("Add", ["x", "w"], ["y"], name="add")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [weight_elems])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [weight_elems])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save_external(proto: onnx.ModelProto, path: Path, location: str) -> None:
    """Write ``proto`` with tensor w stored at ``location`` (relative to ``path``'s folder)."""
    tensor = proto.graph.initializer[0]
    data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
    target = Path(location) if os.path.isabs(location) else path.parent / location
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for k, v in {"location": location, "offset": "0", "length": str(len(data))}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = k, v
    path.write_bytes(proto.SerializeToString())


def test_roundtrip_and_exact_size(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    model = io.load(src)
    out = tmp_path / "out.onnx"
    size = io.save(model, out)
    assert size.bytes == out.stat().st_size
    assert size.mib == pytest.approx(size.bytes / 2**20)
    onnx.checker.check_model(str(out), full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.ones(64, np.float32)
    np.testing.assert_array_equal(sess.run(None, {"x": x})[0], x + np.arange(64, dtype=np.float32))


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _save_external(_tiny_proto(), path, "weights/m.data")
    model = io.load(path)
    w = model.graph.initializers["w"].const_value
    assert w is not None
    np.testing.assert_array_equal(w.numpy(), np.arange(64, dtype=np.float32))
    size = io.file_size(path)
    assert size.external_bytes == 64 * 4
    assert size.bytes == path.stat().st_size + 64 * 4


@pytest.mark.parametrize("location", ["../outside.data", "sub/../../outside.data"])
def test_dotdot_refused(tmp_path: Path, location: str) -> None:
    path = tmp_path / "model" / "m.onnx"
    path.parent.mkdir()
    _save_external(_tiny_proto(), path, location)
    with pytest.raises(UnsafeModelError, match=r"initializer 'w'.*leaves the model's folder"):
        io.load(path)


def test_absolute_refused(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _save_external(_tiny_proto(), path, str(tmp_path / "abs.data"))
    with pytest.raises(UnsafeModelError, match="absolute"):
        io.load(path)


def test_symlink_out_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = model_dir / "m.onnx"
    _save_external(_tiny_proto(), path, "w.data")
    real = outside / "w.data"
    (model_dir / "w.data").rename(real)
    (model_dir / "w.data").symlink_to(real)
    with pytest.raises(UnsafeModelError, match="outside"):
        io.load(path)


def test_missing_external_file(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    _save_external(_tiny_proto(), path, "w.data")
    (tmp_path / "w.data").unlink()
    with pytest.raises(ModelLoadError, match="does not exist"):
        io.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        io.load(tmp_path / "nope.onnx")


def test_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "e.onnx"
    p.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty"):
        io.load(p)


def test_truncated_file(tmp_path: Path) -> None:
    data = _tiny_proto(4096).SerializeToString()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"t\.onnx"):
        io.load(p)


@pytest.mark.parametrize(
    "content", [b"hello, this is not a model\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64]
)
def test_not_onnx(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError, match=r"x\.onnx"):
        io.load(p)


def test_folder_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="folder"):
        io.load(tmp_path)


def test_save_refuses_to_overwrite_source(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    before = src.read_bytes()
    model = io.load(src)
    with pytest.raises(ModelLoadError, match="loaded from"):
        io.save(model, src)
    assert src.read_bytes() == before
    io.save(model, src, force=True)
    io.load(src)


def test_save_refuses_existing_file(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    other = tmp_path / "other.onnx"
    other.write_text("keep me")
    with pytest.raises(ModelLoadError, match="exists"):
        io.save(io.load(src), other)
    assert other.read_text() == "keep me"


def test_save_leaves_no_temp_files_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    model = io.load(src)

    def boom(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save(model, tmp_path / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_save_switches_to_external_data_above_threshold(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto(4096).SerializeToString())
    out = tmp_path / "big.onnx"
    size = io.save(io.load(src), out, external_threshold=1000)
    assert (tmp_path / "big.onnx.data").is_file()
    assert out.stat().st_mode & 0o777 == atomic.file_mode()  # not mkstemp's 0600
    assert size.external_bytes == 4096 * 4
    reloaded = io.load(out)
    w = reloaded.graph.initializers["w"].const_value
    assert w is not None
    np.testing.assert_array_equal(w.numpy(), np.arange(4096, dtype=np.float32))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"x": np.zeros(4096, np.float32)})[0][5] == 5.0


def test_source_marker_not_written(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    out = tmp_path / "o.onnx"
    io.save(io.load(src), out)
    keys = [p.key for p in onnx.load(str(out)).metadata_props]
    assert io.SOURCE_KEY not in keys


def test_saved_file_has_ordinary_permissions(tmp_path: Path) -> None:
    src = tmp_path / "m.onnx"
    src.write_bytes(_tiny_proto().SerializeToString())
    out = tmp_path / "o.onnx"
    io.save(io.load(src), out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


def test_atomic_write_text_and_failure_leaves_target(tmp_path: Path) -> None:
    target = tmp_path / "r.json"
    atomic.write_text(target, "one")
    assert target.read_text() == "one"
    with pytest.raises(RuntimeError), atomic.atomic_open(target, "w", encoding="utf-8") as fh:
        fh.write("half")
        raise RuntimeError("boom")
    assert target.read_text() == "one"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_file_size_names_a_corrupt_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"not a model at all")
    with pytest.raises(ModelLoadError, match=r"bad\.onnx"):
        io.file_size(p)
