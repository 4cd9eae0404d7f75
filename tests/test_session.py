"""Session: target settings, provider fall-back, input checks, run lock, pooled IO binding."""

from __future__ import annotations

import gc
import logging
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import onnxfit
from onnxfit import io
from onnxfit.errors import BudgetExceededError, InputError
from onnxfit.runtime.binding import DeviceBinding, StaticBinding, graph_capture_shapes
from onnxfit.runtime.pool import MemoryPool
from onnxfit.runtime.session import Session, TensorSpec
from onnxfit.runtime.settings import (
    CPU,
    CUDA,
    DML,
    build_session_options,
    deploy_settings,
    plan_session,
)
from onnxfit.targets import get_target
from runtime_util import start_and_join

RTOL, ATOL = 1e-5, 1e-6


def _mlp(
    path: Path | None = None, *, batch: str | int = "batch", width: int = 4
) -> onnx.ModelProto:
    """y = relu(x @ W + b), z = sum(x, axis=1): x [batch, width] -> y [batch, 3], z [batch]."""
    rng = np.random.default_rng(0)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch])
    w = helper.make_tensor("W", TensorProto.FLOAT, [width, 3], rng.standard_normal(width * 3))
    b = helper.make_tensor("b", TensorProto.FLOAT, [3], rng.standard_normal(3))
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["a"]),
        helper.make_node("Relu", ["a"], ["y"]),
        helper.make_node("ReduceSum", ["x", "axes"], ["z"], keepdims=0),
    ]
    g = helper.make_graph(nodes, "mlp", [x], [y, z], [w, b, axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    if path is not None:
        onnx.save(m, str(path))
    return m


def _two_inputs() -> onnx.ModelProto:
    """out = a + cast(i) : a float32 [batch, 2], i int64 [batch, 2]."""
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 2])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 2])
    o = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 2])
    nodes = [
        helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["a", "f"], ["out"]),
    ]
    g = helper.make_graph(nodes, "two", [a, i], [o])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _reference(model: onnx.ModelProto | Path, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    proto = io.load_proto(model) if isinstance(model, Path) else model
    sess = ort.InferenceSession(proto.SerializeToString(), providers=[CPU])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=ATOL, err_msg=k)


@pytest.fixture
def mlp_path(tmp_path: Path) -> Path:
    p = tmp_path / "mlp.onnx"
    _mlp(p)
    return p


# -- construction, specs, parity ------------------------------------------------------------


def test_run_matches_plain_onnxruntime_from_path_and_ir(
    mlp_path: Path, rng: np.random.Generator
) -> None:
    x = rng.standard_normal((5, 4)).astype(np.float32)
    want = _reference(mlp_path, {"x": x})
    with Session(mlp_path) as s:
        assert s.provider == CPU
        _assert_same(s.run({"x": x}), want)
    with Session(onnxfit.load(mlp_path)) as s:
        _assert_same(s.run({"x": x}), want)


def test_specs_and_free_dims(mlp_path: Path) -> None:
    with Session(mlp_path) as s:
        assert s.inputs == [TensorSpec("x", ("batch", 4), np.dtype(np.float32))]
        assert [o.name for o in s.outputs] == ["y", "z"]
        assert s.outputs[0].shape == ("batch", 3) and not s.outputs[0].is_static
    with Session(mlp_path, free_dims={"batch": 2}) as s:
        assert s.inputs[0].shape == (2, 4) and s.inputs[0].is_static
        assert s.outputs[1].shape == (2,)
        assert s.session_options()["free_dimension_overrides"] == {"batch": 2}
        assert s.inputs[0].to_dict() == {"name": "x", "shape": [2, 4], "dtype": "float32"}
    with pytest.raises(InputError, match="'seq' are not symbolic") as info:
        Session(mlp_path, free_dims={"seq": 3})
    assert "batch" in (info.value.hint or "")
    for bad in (0, -1, 1.5, True):
        with pytest.raises(InputError, match="positive int"):
            Session(mlp_path, free_dims={"batch": bad})  # type: ignore[dict-item]


def test_bad_model_argument() -> None:
    with pytest.raises(InputError, match=r"path or an onnx_ir\.Model"):
        Session(42)  # type: ignore[arg-type]
    with pytest.raises(onnxfit.ModelLoadError):
        Session("/nonexistent/model.onnx")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    g = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["y"])], "bad", [x], [x])
    bad = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(onnxfit.ModelLoadError, match="onnxruntime cannot create a session"):
        Session(bad)


def test_cpu_threads_follow_the_target(mlp_path: Path) -> None:
    cpu = get_target("cpu")
    with Session(mlp_path) as s:
        assert s.plan.intra_op_threads == cpu.worker_cores == cpu.cpu_cores  # cpu reserves 0
    with Session(mlp_path, threads=1) as s:
        assert s.session_options()["intra_op_num_threads"] == 1
    with pytest.raises(InputError, match="threads"):
        Session(mlp_path, threads=0)
    # A console target falling back to this CPU never asks for more threads than it has.
    plan = plan_session("xbox-series-s", available=[CPU])
    assert plan.intra_op_threads == min(get_target("xbox-series-s").worker_cores, cpu.cpu_cores)


# -- input checks -------------------------------------------------------------------------


def test_input_errors_name_the_input_the_expected_and_the_given(mlp_path: Path) -> None:
    x = np.zeros((2, 4), np.float32)
    with Session(mlp_path, free_dims={"batch": 2}) as s:
        with pytest.raises(InputError, match=r"missing input\(s\) 'x'"):
            s.run({})
        with pytest.raises(InputError, match=r"unknown input\(s\) 'X'.*inputs are 'x'"):
            s.run({"X": x})
        with pytest.raises(InputError, match="input 'x': expected dtype float32, given float64"):
            s.run({"x": x.astype(np.float64)})
        with pytest.raises(
            InputError, match=r"input 'x': expected shape \[2, 4\] \(rank 2\), given \[8\]"
        ):
            s.run({"x": x.ravel()})
        with pytest.raises(
            InputError, match=r"expected shape \[2, 4\], given \[3, 4\] \(dimension 0 must be 2\)"
        ):
            s.run({"x": np.zeros((3, 4), np.float32)})
        with pytest.raises(InputError, match=r"dimension 1 must be 4"):
            s.run({"x": np.zeros((2, 5), np.float32)})
        with pytest.raises(InputError, match="dict of input name"):
            s.run([x])  # type: ignore[arg-type]
        # lists have no dtype: they take the input's; arrays must match exactly
        _assert_same(s.run({"x": x.tolist()}), s.run({"x": x}))
        with pytest.raises(InputError, match="cannot convert the given list to float32"):
            s.run({"x": [["a"] * 4] * 2})


def test_shared_symbolic_dims_must_agree() -> None:
    with Session(onnxfit.io.from_proto(_two_inputs())) as s:
        a = np.ones((2, 2), np.float32)
        out = s.run({"a": a, "i": np.full((2, 2), 3, np.int64)})
        np.testing.assert_array_equal(out["out"], np.full((2, 2), 4, np.float32))
        with pytest.raises(
            InputError,
            match=r"input 'i': dimension 0 \('batch'\) is 3, but input 'a' has 'batch' = 2",
        ):
            s.run({"a": a, "i": np.zeros((3, 2), np.int64)})
        with pytest.raises(InputError, match="input 'i': expected dtype int64, given int32"):
            s.run({"a": a, "i": np.zeros((2, 2), np.int32)})


# -- providers ------------------------------------------------------------------------------


def test_missing_directml_falls_back_with_a_warning(
    mlp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    assert DML not in ort.get_available_providers()
    with caplog.at_level(logging.WARNING, logger="onnxfit.runtime"):
        s = Session(mlp_path, target="xbox-series-s")
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1
    assert DML in warned[0].getMessage() and f"{CPU} runs instead" in warned[0].getMessage()
    assert s.provider == CPU and s.plan.fallback and s.plan.wanted == DML
    x = np.ones((1, 4), np.float32)
    _assert_same(s.run({"x": x}), _reference(mlp_path, {"x": x}))
    s.close()


def test_missing_directml_with_strict_is_an_error(mlp_path: Path) -> None:
    with pytest.raises(InputError, match=f"{DML} is not available") as info:
        Session(mlp_path, target="xbox-series-s", strict=True)
    assert "onnxruntime-directml" in (info.value.hint or "")
    with pytest.raises(InputError, match=f"{DML} is not available"):
        Session(mlp_path, providers=[DML], strict=True)


def test_directml_plan_settings() -> None:
    plan = plan_session(
        "xbox-series-s",
        available=[DML, CPU],
        provider_options={"device_id": 1, "performance_preference": "high_performance"},
        free_dims={"batch": 1},
    )
    assert plan.provider == DML and not plan.fallback
    assert plan.enable_mem_pattern is False and plan.execution_mode == "sequential"
    assert plan.serialize_runs is True and plan.device_type == "dml" and plan.device_id == 1
    assert plan.providers[0] == (
        DML,
        {"device_id": "1", "performance_preference": "high_performance"},
    )
    assert plan.providers[-1][0] == CPU
    so = build_session_options(plan)
    assert so.enable_mem_pattern is False
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.intra_op_num_threads == plan.intra_op_threads
    with pytest.raises(InputError, match="performance_preference 'fast'"):
        plan_session(
            "xbox-series-s",
            available=[DML, CPU],
            provider_options={"performance_preference": "fast"},
        )
    with pytest.raises(InputError, match="device_id"):
        plan_session("xbox-series-s", available=[DML, CPU], provider_options={"device_id": "gpu0"})


def test_cuda_plan_settings_and_graph_capture_rules(caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_session("cuda", available=[CUDA, CPU])
    # numpy in/out goes through plain run (measured faster); binding is for graphs / run_device
    assert plan.provider == CUDA and not plan.io_binding and plan.device_type == "cuda"
    assert plan_session("cuda", available=[CUDA, CPU], io_binding=True).io_binding
    assert plan.enable_mem_pattern and not plan.cuda_graph and not plan.serialize_runs
    g = plan_session("cuda", available=[CUDA, CPU], cuda_graph=True, free_dims={"batch": 1})
    assert (
        g.cuda_graph and g.serialize_runs and g.providers[0] == (CUDA, {"enable_cuda_graph": "1"})
    )
    with pytest.raises(InputError, match="needs IO binding"):
        plan_session("cuda", available=[CUDA, CPU], cuda_graph=True, io_binding=False)
    with pytest.raises(InputError, match="cuda_graph=True needs CUDAExecutionProvider"):
        plan_session("cpu", available=[CPU], cuda_graph=True)
    with pytest.raises(InputError, match="not available"):
        plan_session("cuda", available=[CPU], cuda_graph=True, strict=True)
    with caplog.at_level(logging.WARNING, logger="onnxfit.runtime"):
        fb = plan_session("cuda", available=[CPU], cuda_graph=True)
    assert fb.provider == CPU and not fb.cuda_graph and not fb.io_binding
    assert any("CUDA graph capture is off" in r.getMessage() for r in caplog.records)


def test_graph_capture_needs_static_shapes_and_no_control_flow() -> None:
    m = _mlp()
    with pytest.raises(InputError, match=r"static input shapes; dynamic: x \[\?, 4\]") as info:
        graph_capture_shapes(m)
    assert "free_dims" in (info.value.hint or "")
    assert graph_capture_shapes(m, {"batch": 3}) == {"y": (3, 3), "z": (3,)}
    assert graph_capture_shapes(_mlp(batch=2)) == {"y": (2, 3), "z": (2,)}
    then = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 4])],
    )
    cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [2, 4])
    node = helper.make_node("If", ["c"], ["o"], then_branch=then, else_branch=then)
    cf = helper.make_model(
        helper.make_graph([node], "cf", [cond, x], [out]),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    with pytest.raises(InputError, match=r"control-flow ops \(If\)"):
        graph_capture_shapes(cf)


def test_static_and_device_bindings_on_cpu_memory(mlp_path: Path, rng: np.random.Generator) -> None:
    """The CUDA-graph binding (fixed OrtValues, update in place) and the CUDA IO binding
    (host inputs, device outputs) run here with "cpu" as the device: same results as ORT."""
    with Session(mlp_path, free_dims={"batch": 2}) as s:
        shapes = graph_capture_shapes(io.load_proto(mlp_path), {"batch": 2})
        outs = [TensorSpec(o.name, shapes[o.name], o.dtype) for o in s.outputs]
        static = StaticBinding(s._sess, s.inputs, outs, device_type="cpu")
        device = DeviceBinding(s._sess, s.outputs, "cpu")
        for _ in range(3):
            x = rng.standard_normal((2, 4)).astype(np.float32)
            want = _reference(mlp_path, {"x": x})
            _assert_same(static.run({"x": x}), want)
            _assert_same(device.run({"x": x}), want)
        static.release()
        device.release()


# -- one run at a time ------------------------------------------------------------------------


class _Spy:
    """Stands in for the ORT session's ``run``: counts how many callers are inside at once."""

    def __init__(self, inner: Any, *, barrier: threading.Barrier | None = None) -> None:
        self.inner, self.barrier = inner, barrier
        self.active = self.max_active = self.calls = 0
        self.lock = threading.Lock()

    def run(self, *args: Any, **kw: Any) -> Any:
        with self.lock:
            self.active += 1
            self.calls += 1
            self.max_active = max(self.max_active, self.active)
        try:
            if self.barrier is not None:
                self.barrier.wait(timeout=10)  # passes only if two callers are inside together
            else:
                time.sleep(0.02)
            return self.inner.run(*args, **kw)
        finally:
            with self.lock:
                self.active -= 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _hammer(s: Session, n_threads: int, per_thread: int) -> list[BaseException]:
    errors: list[BaseException] = []
    x = np.ones((1, 4), np.float32)

    def work() -> None:
        try:
            for _ in range(per_thread):
                s.run({"x": x})
        except BaseException as exc:  # collected and re-raised by the test
            errors.append(exc)

    start_and_join([threading.Thread(target=work) for _ in range(n_threads)], timeout=30)
    return errors


@pytest.mark.timeout(60)
def test_locking_mode_serializes_concurrent_runs(mlp_path: Path) -> None:
    with Session(mlp_path, serialize_runs=True) as s:
        assert s.session_options()["one_run_at_a_time"] is True
        spy = _Spy(s._sess)
        s._sess = spy  # type: ignore[assignment]
        assert _hammer(s, 4, 3) == []
        assert spy.calls == 12 and spy.max_active == 1


@pytest.mark.timeout(60)
def test_without_the_lock_runs_overlap(mlp_path: Path) -> None:
    """Control for the test above: the spy does see overlap when nothing serializes."""
    with Session(mlp_path, serialize_runs=False) as s:
        spy = _Spy(s._sess, barrier=threading.Barrier(2))
        s._sess = spy  # type: ignore[assignment]
        assert _hammer(s, 2, 1) == []
        assert spy.max_active == 2


def test_closed_session_refuses_to_run(mlp_path: Path) -> None:
    s = Session(mlp_path)
    s.close()
    s.close()  # idempotent
    with pytest.raises(InputError, match="closed"):
        s.run({"x": np.ones((1, 4), np.float32)})


# -- IO binding with the pool -----------------------------------------------------------------


def test_bound_runs_match_and_write_in_place(mlp_path: Path, rng: np.random.Generator) -> None:
    with Session(mlp_path, io_binding=True) as s:
        pool = None
        views: dict[str, np.ndarray] = {}
        for i in range(4):
            x = rng.standard_normal((3, 4)).astype(np.float32)
            want = _reference(mlp_path, {"x": x})
            got = s.run_bound({"x": x}, copy=False)
            _assert_same(got, want)
            if i == 0:
                pool, views = s.pool, got
                assert pool is not None
                lo = pool.arena.address(0)
                for v in got.values():  # outputs live inside the pool's arena
                    assert lo <= v.ctypes.data < lo + pool.capacity
            else:
                assert s.pool is pool  # same buffers, rewritten in place
                for k, v in got.items():
                    assert v.ctypes.data == views[k].ctypes.data
                _assert_same(views, want)  # the old views now hold this run's outputs
        copied = s.run_bound({"x": x}, copy=True)
        assert not np.shares_memory(copied["y"], views["y"])
        _assert_same(s.run({"x": x}), want)  # run() in io_binding mode returns copies


def test_bound_runs_rebind_on_new_shapes_and_take_input_buffers(
    mlp_path: Path, rng: np.random.Generator
) -> None:
    with Session(mlp_path, io_binding=True) as s:
        assert s.input_buffers() == {}
        for n in (1, 6, 2):
            x = rng.standard_normal((n, 4)).astype(np.float32)
            _assert_same(s.run_bound({"x": x}), _reference(mlp_path, {"x": x}))
            assert s.pool is not None and s.pool.stats().blocks == 3  # x, y, z
        buf = s.input_buffers()["x"]
        buf[:] = rng.standard_normal(buf.shape).astype(np.float32)
        _assert_same(s.run_bound({"x": buf}), _reference(mlp_path, {"x": buf.copy()}))


def test_bound_runs_in_a_given_pool(mlp_path: Path) -> None:
    pool = MemoryPool(1 << 12)
    x = np.ones((2, 4), np.float32)
    with Session(mlp_path, io_binding=True, pool=pool) as s:
        _assert_same(s.run_bound({"x": x}), _reference(mlp_path, {"x": x}))
        assert s.pool is pool and pool.stats().blocks == 3 and pool.stats().in_use == 3 * 256
        s.run_bound({"x": np.ones((3, 4), np.float32)})  # rebinding frees the old blocks first
        assert pool.stats().blocks == 3
    assert pool.stats().in_use == 0  # closing gives the blocks back
    with Session(mlp_path, pool=MemoryPool(1 << 12)) as s:  # a pool implies io_binding
        assert s.plan.io_binding
        _assert_same(s.run_bound({"x": x}), _reference(mlp_path, {"x": x}))
    with pytest.raises(InputError, match="pool= is used for IO binding"):
        Session(mlp_path, pool=MemoryPool(1 << 12), io_binding=False)
    tiny = MemoryPool(512)
    with Session(mlp_path, io_binding=True, pool=tiny) as s, pytest.raises(BudgetExceededError):
        s.run_bound({"x": x})


def test_run_bound_needs_io_binding(mlp_path: Path) -> None:
    with Session(mlp_path) as s, pytest.raises(InputError, match="io_binding=True"):
        s.run_bound({"x": np.ones((1, 4), np.float32)})


def _big_model(width: int) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, width])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, width])
    g = helper.make_graph([helper.make_node("Sigmoid", ["x"], ["y"])], "big", [x], [y])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _traced(fn: Any, calls: int) -> tuple[int, int]:
    """(growth of traced memory after ``calls`` calls, peak above the start) in bytes."""
    gc.collect()
    tracemalloc.start()
    try:
        start, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for _ in range(calls):
            fn()
        _, peak = tracemalloc.get_traced_memory()
        gc.collect()  # also empties CPython's free lists of small objects (tuples, floats)
        end, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return end - start, peak - start


def test_bound_steady_state_allocates_nothing_new() -> None:
    """tracemalloc over 100 bound runs after warm-up, plus the addresses ORT writes to.

    tracemalloc sees Python objects and numpy-allocated buffers, not ORT's own C++ allocations.
    Two checks together: (1) the outputs of every bound run sit at the same pool addresses, so
    ORT allocates no output buffers; (2) Python-side, a bound run with copy=False allocates only
    small transient objects (result dict, shape tuple, and ~50-100 B of cyclic garbage per call
    inside onnxruntime's ``run_with_iobinding`` that the next GC pass frees): growth after 100
    calls, read after gc.collect(), is < 2 KiB and the peak some tens of KiB at most, well below
    the 256 KiB output. Control: copy=True makes a 256 KiB numpy copy
    per call, and tracemalloc sees it (peak >= the output size), so the measure can fail.
    """
    width = 65536  # 256 KiB of float32
    x = np.random.default_rng(0).standard_normal((1, width)).astype(np.float32)
    with Session(onnxfit.io.from_proto(_big_model(width)), io_binding=True) as s:
        for _ in range(5):
            out = s.run_bound({"x": x}, copy=False)
        addr = out["y"].ctypes.data
        for _ in range(10):
            assert s.run_bound({"x": x}, copy=False)["y"].ctypes.data == addr
        growth, peak = _traced(lambda: s.run_bound({"x": x}, copy=False), 100)
        assert growth < 2048, f"bound runs grew traced memory by {growth} bytes"
        assert peak < 64 * 1024, f"bound runs peaked {peak} bytes above the start"
        np.testing.assert_allclose(out["y"], 1 / (1 + np.exp(-x)), rtol=1e-5)
        c_growth, c_peak = _traced(lambda: s.run_bound({"x": x}, copy=True), 100)
        assert c_peak >= x.nbytes  # the measure does see a per-call output-sized allocation
        assert c_growth < 2048  # which is freed again


# -- deploy settings ----------------------------------------------------------------------------


def test_deploy_settings_for_directml_and_cpu() -> None:
    d = deploy_settings("xbox-series-s", free_dims={"batch": 1})
    assert d["enable_mem_pattern"] is False and d["execution_mode"] == "ORT_SEQUENTIAL"
    assert d["offline_graph_optimization_level"] == "ORT_ENABLE_BASIC"
    assert d["free_dimension_overrides"] == {"batch": 1} and d["one_run_at_a_time"] is True
    assert d["providers"][0] == DML
    assert "session_options.DisableMemPattern();" in d["cpp"]
    assert 'session_options.AddFreeDimensionOverrideByName("batch", 1);' in d["cpp"]
    c = deploy_settings("cpu")
    assert c["enable_mem_pattern"] is True and c["one_run_at_a_time"] is False
    assert c["intra_op_num_threads"] == get_target("cpu").worker_cores
    with pytest.raises(InputError):
        deploy_settings("xbox-series-s", free_dims={"batch": 0})


def test_public_api_exports() -> None:
    assert onnxfit.Session is Session
    assert onnxfit.MemoryPool is MemoryPool
    from onnxfit import runtime

    assert runtime.Session is Session and runtime.deploy_settings is deploy_settings


# -- real models --------------------------------------------------------------------------------


def _image_feed(s: Session, rng: np.random.Generator) -> dict[str, np.ndarray]:
    spec = s.inputs[0]
    shape = tuple(d if isinstance(d, int) else 1 for d in spec.shape)
    return {spec.name: rng.standard_normal(shape).astype(np.float32)}


@pytest.mark.needs_data
@pytest.mark.parametrize("name", ["shufflenet-v2-12-qdq.onnx", "yolox_nano.onnx"])
def test_real_models_match_plain_onnxruntime(
    shared_data: Path, name: str, rng: np.random.Generator
) -> None:
    path = shared_data / "models" / name
    with Session(path) as s:
        feeds = _image_feed(s, rng)
        want = _reference(path, feeds)
        _assert_same(s.run(feeds), want)
    with Session(path, target="xbox-series-s", io_binding=True) as s:  # falls back to CPU here
        _assert_same(s.run_bound(feeds), want)
        _assert_same(s.run_bound(feeds), want)


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["zoo_resnet18", "zoo_yolov3_tiny"])
def test_zoo_models_match_plain_onnxruntime(
    request: pytest.FixtureRequest, fixture: str, rng: np.random.Generator
) -> None:
    path: Path = request.getfixturevalue(fixture)
    x = rng.standard_normal((2, 3, *((224, 224) if "resnet" in fixture else (416, 416)))).astype(
        np.float32
    )
    want = _reference(path, {"input": x})
    with Session(path, free_dims={"batch": 2}, io_binding=True) as s:
        assert s.inputs[0].shape[0] == 2
        _assert_same(s.run({"input": x}), want)
        _assert_same(s.run_bound({"input": x}, copy=False), want)


def test_run_device_keeps_ortvalues(mlp_path: Path) -> None:
    """run_device takes and returns OrtValues (on CPU here) with the same numbers as run()."""
    import onnxruntime as ort

    with Session(mlp_path) as s:
        spec = s.inputs[0]
        shape = [d if isinstance(d, int) else 2 for d in spec.shape]
        x = np.random.default_rng(1).standard_normal(shape).astype(spec.dtype)
        want = s.run({spec.name: x})
        got = s.run_device({spec.name: ort.OrtValue.ortvalue_from_numpy(x)})
        assert set(got) == set(want)
        for name, value in got.items():
            assert isinstance(value, ort.OrtValue)
            np.testing.assert_allclose(value.numpy(), want[name], rtol=1e-6)
        with pytest.raises(InputError, match="missing"):
            s.run_device({})


def test_allow_spinning_reaches_session_options() -> None:
    plan = plan_session("cpu", available=[CPU], allow_spinning=False)
    assert not plan.allow_spinning and plan.to_dict()["allow_spinning"] is False
    from onnxfit.runtime.settings import build_session_options

    so = build_session_options(plan)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert plan_session("cpu", available=[CPU]).allow_spinning
