"""BatchEngine: batched results equal per-item ORT runs; dynamic batching and its failure modes.

Concurrency tests use a gated fake runner so that which requests share a batch is decided by the
test, not by timing; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit.errors import InputError
from onnxfit.runtime.batching import AUTO_SIZES, BatchEngine, EngineClosedError
from onnxfit.runtime.session import Session, TensorSpec
from onnxfit.runtime.stacking import signature, split_outputs, stack_items
from runtime_util import assert_outputs_close, start_and_join

pytestmark = pytest.mark.timeout(120)
WAIT = 10.0  # seconds: every wait in this file is bounded


def _linear_model(batch: int | str = "N") -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "b"], ["y"]),
        helper.make_node("Relu", ["y"], ["z"]),
    ]
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 3]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [batch, 3]),
        ],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _items(n: int, shape: tuple[int, ...] = (1, 4), name: str = "x") -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def _reference(model: onnx.ModelProto | Path, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(src, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, it), strict=True)) for it in items]


def _assert_same(got: list[dict[str, Any]], ref: list[dict[str, Any]]) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert_outputs_close(g, r)


# ------------------------------------------------------------------------ sync batching
def test_run_dynamic_batch_matches_per_item_runs() -> None:
    model = _linear_model()
    items = _items(7)
    engine = BatchEngine(Session(model), batch_size=3)
    out = engine.run(items)
    _assert_same(out, _reference(model, items))
    assert engine.stats.batch_sizes == {3: 2, 1: 1}  # 3 + 3 + 1, no padding (dynamic dim)
    assert engine.stats.padded_items == 0


def test_run_fixed_batch_pads_and_strips() -> None:
    model = _linear_model(batch=4)
    items = _items(7)
    engine = BatchEngine(Session(model), batch_size=8)
    assert engine.fixed_batch == 4 and engine.batch_size == 4
    out = engine.run(items)
    _assert_same(out, _reference(_linear_model(), items))
    assert engine.stats.batch_sizes == {4: 2}
    assert engine.stats.padded_items == 1


def test_fixed_batch_one_falls_back_to_single_items() -> None:
    model = _linear_model(batch=1)
    items = _items(5)
    engine = BatchEngine(Session(model), batch_size="auto")
    assert engine.batch_size == 1 and engine.tuning is None
    _assert_same(engine.run(items), _reference(model, items))
    assert engine.stats.batch_sizes == {1: 5}


def test_auto_tuning_reports_measurements_and_respects_cap() -> None:
    model = _linear_model()
    engine = BatchEngine(Session(model), batch_size="auto", max_batch=8, tune_seconds=0.01)
    items = _items(9)
    _assert_same(engine.run(items), _reference(model, items))
    tuning = engine.tuning
    assert tuning is not None
    assert [m.batch for m in tuning.measurements] == [s for s in AUTO_SIZES if s <= 8]
    assert tuning.chosen == engine.batch_size
    best = max(tuning.measurements, key=lambda m: m.items_per_s)
    assert tuning.chosen == best.batch
    assert tuning.to_dict()["measurements"][0]["batch"] == 1
    # an impossible cap: nothing fits, batch 1 is chosen and sizes stop growing
    capped = BatchEngine(Session(model), batch_size="auto", latency_cap_ms=1e-9, tune_seconds=0.01)
    capped.tune(items[0])
    assert capped.batch_size == 1
    assert capped.tuning is not None
    assert len(capped.tuning.measurements) == 1 and not capped.tuning.measurements[0].within_cap


def test_items_are_checked() -> None:
    engine = BatchEngine(Session(_linear_model()))
    with pytest.raises(InputError, match="leading batch"):
        engine.run([{"x": np.zeros((2, 4), np.float32)}])
    with pytest.raises(InputError, match="missing"):
        engine.run([{"nope": np.zeros((1, 4), np.float32)}])
    with pytest.raises(InputError, match="dtype float64"):
        engine.submit_future({"x": np.zeros((1, 4))})  # refused at once, before any batch
    with pytest.raises(InputError, match="expected"):
        engine.submit_future({"x": np.zeros((1, 5), np.float32)})
    with pytest.raises(InputError):
        BatchEngine(Session(_linear_model()), batch_size=0)
    engine.close()
    assert engine.run([]) == []


def test_stack_and_split_alone_pad_to_a_fixed_batch_and_drop_the_padding() -> None:
    items = [{"x": np.full((1, 2), float(i), np.float32)} for i in range(3)]
    feeds, run_n = stack_items(items, ["x"], 4)
    assert run_n == 4
    np.testing.assert_array_equal(feeds["x"][:, 0], [0.0, 1.0, 2.0, 2.0])  # last item repeated
    scalar = np.array([7.0], np.float32)  # an output without the batch dimension: given whole
    split = split_outputs({"y": 2 * feeds["x"], "s": scalar}, 3, run_n)
    assert len(split) == 3
    for i, out in enumerate(split):
        np.testing.assert_array_equal(out["y"], np.full((1, 2), 2.0 * i, np.float32))
        assert out["s"] is scalar
    assert signature(items[0]) == signature(items[2]) != signature({"x": np.zeros((1, 3))})


# --------------------------------------------------------------------------- gated fake runner
class GatedRunner:
    """A fake session: y = 2x. The first ``block`` runs wait on ``gate``; runs whose batch holds
    a NaN raise ValueError. Records the batch sizes it saw."""

    def __init__(self, *, block: int = 1) -> None:
        self.inputs = [TensorSpec("x", ("N", 2), np.dtype(np.float32))]
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.block = block
        self.sizes: list[int] = []
        self._lock = threading.Lock()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        with self._lock:
            self.sizes.append(x.shape[0])
            gated = len(self.sizes) <= self.block
        if gated:
            self.entered.set()
            assert self.gate.wait(WAIT), "test gate never opened"
        if np.isnan(x).any():
            raise ValueError("bad batch")
        return {"y": 2 * x}


def _item(v: float) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 2), v, np.float32)}


def _start_blocked(engine: BatchEngine, runner: GatedRunner) -> Any:
    """Submit a blocker request and wait until the worker is running it (and so blocked)."""
    fut = engine.submit_future(_item(-1.0))
    assert runner.entered.wait(WAIT)
    return fut


def test_threads_submit_sync_get_their_own_results() -> None:
    runner = GatedRunner(block=0)
    engine = BatchEngine(runner, max_batch=8, max_wait_ms=1.0)
    results: dict[int, np.ndarray] = {}

    def call(i: int) -> None:
        results[i] = engine.submit_sync(_item(float(i)), timeout=WAIT)["y"]

    start_and_join([threading.Thread(target=call, args=(i,)) for i in range(32)], timeout=WAIT)
    engine.close()
    assert sorted(results) == list(range(32))
    for i, y in results.items():
        np.testing.assert_array_equal(y, np.full((1, 2), 2.0 * i, np.float32))
    assert sum(runner.sizes) == 32 and max(runner.sizes) <= 8
    assert not engine.worker_alive


def test_requests_queued_behind_a_running_batch_are_batched_together() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=16, max_wait_ms=0.0)
    first = _start_blocked(engine, runner)
    futs = [engine.submit_future(_item(float(i))) for i in range(10)]
    runner.gate.set()
    for i, f in enumerate(futs):
        np.testing.assert_array_equal(f.result(WAIT)["y"], np.full((1, 2), 2.0 * i))
    first.result(WAIT)
    engine.close()
    assert runner.sizes == [1, 10]
    assert engine.stats.mean_batch == pytest.approx(11 / 2)


def test_async_submit_matches_and_batches() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=32, max_wait_ms=0.0)

    async def main() -> list[dict[str, np.ndarray]]:
        blocker = asyncio.ensure_future(engine.submit(_item(-1.0)))
        assert await asyncio.to_thread(runner.entered.wait, WAIT)
        tasks = [asyncio.ensure_future(engine.submit(_item(float(i)))) for i in range(20)]
        await asyncio.sleep(0)  # let every task queue its request
        runner.gate.set()
        out = await asyncio.wait_for(asyncio.gather(*tasks), WAIT)
        await asyncio.wait_for(blocker, WAIT)
        return out

    out = asyncio.run(main())
    engine.close()
    for i, o in enumerate(out):
        np.testing.assert_array_equal(o["y"], np.full((1, 2), 2.0 * i))
    assert runner.sizes == [1, 20]


def test_a_failing_batch_fails_only_its_callers() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=2, max_wait_ms=0.0)
    _start_blocked(engine, runner)
    bad, same_batch, other1, other2 = (
        engine.submit_future(_item(v)) for v in (np.nan, 1.0, 2.0, 3.0)
    )
    runner.gate.set()
    with pytest.raises(ValueError, match="bad batch"):
        bad.result(WAIT)
    with pytest.raises(ValueError, match="bad batch"):
        same_batch.result(WAIT)
    np.testing.assert_array_equal(other1.result(WAIT)["y"], np.full((1, 2), 4.0))
    np.testing.assert_array_equal(other2.result(WAIT)["y"], np.full((1, 2), 6.0))
    # the worker survives the failure
    np.testing.assert_array_equal(engine.submit_sync(_item(5.0), timeout=WAIT)["y"], 10.0)
    engine.close()
    assert engine.stats.failed_batches == 1


def test_cancelled_callers_are_dropped_without_breaking_others() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=8, max_wait_ms=0.0)
    _start_blocked(engine, runner)
    keep1, drop, keep2 = (engine.submit_future(_item(v)) for v in (1.0, 2.0, 3.0))
    assert drop.cancel()
    runner.gate.set()
    np.testing.assert_array_equal(keep1.result(WAIT)["y"], 2.0)
    np.testing.assert_array_equal(keep2.result(WAIT)["y"], 6.0)
    engine.close()
    assert runner.sizes == [1, 2]
    assert engine.stats.dropped_cancelled == 1


def test_async_cancelled_task_is_dropped() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=8, max_wait_ms=0.0)

    async def main() -> tuple[Any, ...]:
        blocker = asyncio.ensure_future(engine.submit(_item(-1.0)))
        assert await asyncio.to_thread(runner.entered.wait, WAIT)
        a, b, c = (asyncio.ensure_future(engine.submit(_item(v))) for v in (1.0, 2.0, 3.0))
        await asyncio.sleep(0)
        b.cancel()
        for _ in range(3):  # let the cancellation reach the engine's future
            await asyncio.sleep(0)
        runner.gate.set()
        return await asyncio.wait_for(
            asyncio.gather(a, b, c, blocker, return_exceptions=True), WAIT
        )

    ra, rb, rc, _ = asyncio.run(main())
    engine.close()
    assert isinstance(rb, asyncio.CancelledError)
    np.testing.assert_array_equal(ra["y"], 2.0)
    np.testing.assert_array_equal(rc["y"], 6.0)
    assert runner.sizes == [1, 2]


def test_timeout_cancels_the_request() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=8, max_wait_ms=0.0)
    _start_blocked(engine, runner)
    with pytest.raises(TimeoutError):
        engine.submit_sync(_item(1.0), timeout=0.05)
    later = engine.submit_future(_item(2.0))
    runner.gate.set()
    np.testing.assert_array_equal(later.result(WAIT)["y"], 4.0)
    engine.close()
    assert engine.stats.dropped_cancelled == 1
    assert runner.sizes == [1, 1]


def test_close_fails_pending_callers_and_stops_the_worker() -> None:
    runner = GatedRunner()
    engine = BatchEngine(runner, max_batch=8, max_wait_ms=0.0)
    running = _start_blocked(engine, runner)
    pending = [engine.submit_future(_item(float(i))) for i in range(3)]
    closer = threading.Thread(target=engine.close)
    closer.start()
    for _ in range(1000):
        if engine._closed:
            break
        threading.Event().wait(0.005)
    assert engine._closed
    with pytest.raises(EngineClosedError):
        engine.submit_future(_item(9.0))
    runner.gate.set()
    closer.join(WAIT)
    assert not closer.is_alive()
    np.testing.assert_array_equal(running.result(WAIT)["y"], -2.0)  # it was already running
    for f in pending:
        with pytest.raises(EngineClosedError):
            f.result(WAIT)
    assert not engine.worker_alive
    engine.close()  # idempotent


def test_dropped_engine_leaves_no_thread_behind() -> None:
    runner = GatedRunner(block=0)
    engine = BatchEngine(runner)
    engine.submit_sync(_item(1.0), timeout=WAIT)
    worker = engine._worker
    assert worker is not None and worker.is_alive()
    del engine
    gc.collect()
    worker.join(WAIT)
    assert not worker.is_alive()


# ------------------------------------------------------------------------ real models
def _image_items(n: int, shape: tuple[int, ...], name: str) -> list[dict[str, Any]]:
    rng = np.random.default_rng(2)
    return [{name: rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", ["zoo_resnet18", "zoo_yolov3_tiny"])
def test_zoo_models_sync_and_async(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    size = 224 if "resnet" in fixture else 416
    items = _image_items(3, (1, 3, size, size), "input")
    ref = _reference(path, items)
    with BatchEngine(Session(path), batch_size=2, max_batch=4, max_wait_ms=5.0) as engine:
        _assert_same(engine.run(items), ref)

        async def main() -> list[dict[str, Any]]:
            return await asyncio.wait_for(asyncio.gather(*(engine.submit(it) for it in items)), 60)

        _assert_same(asyncio.run(main()), ref)


@pytest.mark.needs_data
@pytest.mark.parametrize(
    ("name", "input_name", "size"),
    [("shufflenet-v2-12-qdq.onnx", "input", 224), ("yolox_nano.onnx", "images", 416)],
)
def test_real_models_fixed_batch_one(
    shared_data: Path, name: str, input_name: str, size: int
) -> None:
    path = shared_data / "models" / name
    items = _image_items(3, (1, 3, size, size), input_name)
    with BatchEngine(Session(path), batch_size="auto") as engine:
        assert engine.fixed_batch == 1
        _assert_same(engine.run(items), _reference(path, items))
        got = [engine.submit_sync(it, timeout=60) for it in items]
        _assert_same(got, _reference(path, items))
