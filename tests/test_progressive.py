"""ProgressiveLoader and section planning: sectioned outputs equal the whole model's, in budget."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.errors import BudgetExceededError, InputError
from onnxfit.runtime.memstat import PeakRSS, malloc_trim
from onnxfit.runtime.progressive import ProgressiveLoader
from onnxfit.runtime.sections import analyze_graph, max_node_cost, plan_sections
from runtime_util import assert_outputs_close, start_and_join

pytestmark = pytest.mark.timeout(180)
KIB = 1024
MIB = 2**20
#: stated RSS overhead beyond budget + the largest section's build copy: ORT per-session state,
#: thread pools, kernel workspaces, numpy arrays in flight and heap fragmentation
RSS_FIXED_OVERHEAD = 32 * MIB


def _mlp(layers: int = 8, width: int = 256) -> onnx.ModelProto:
    """x[N,width] -> (MatMul, Relu) x layers with a residual Add every second layer; outputs the
    last value and one from the middle (so a graph output leaves an early section)."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev, skip = "x", "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Relu", [f"m{i}"], [f"r{i}"], name=f"relu{i}"))
        out = f"r{i}"
        if i % 2 == 1:
            nodes.append(helper.make_node("Add", [out, skip], [f"h{i}"], name=f"add{i}"))
            out = skip = f"h{i}"
        prev = out
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [
            helper.make_tensor_value_info(prev, TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("h3", TensorProto.FLOAT, ["N", width]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _save(proto: onnx.ModelProto, path: Path, *, external: bool = True) -> Path:
    io.save(io.from_proto(proto), path, external_threshold=0 if external else io.PROTOBUF_LIMIT)
    return path


_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


def _reference(path: Path, feeds: dict[str, np.ndarray], *, level: str = "all") -> dict[str, Any]:
    """Outputs of one plain ORT session over the whole model."""
    so = ort.SessionOptions()
    so.graph_optimization_level = _LEVELS[level]
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds), strict=True))


def _assert_same(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> None:
    """:func:`assert_outputs_close`. References run at the loader's ORT optimization level: plain
    sessions of YOLOX-Nano at BASIC and ALL differ by 1e-4 from each other, more than the
    tolerance, while sections match their level exactly."""
    assert_outputs_close(got, ref)


def _x(batch: int = 2, width: int = 256) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(3).standard_normal((batch, width)).astype(np.float32)}


# ---------------------------------------------------------------------------- planning
def test_live_bytes_of_a_chain() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Relu", ["a"], ["y"])],
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
    )
    info = analyze_graph(io.from_proto(helper.make_model(graph)), batch=2)
    assert info.value_bytes == {"x": 32, "a": 32, "y": 32}
    assert info.live_bytes == [64, 64]  # x + a, then a + y
    assert info.weight_bytes == 0


def test_sections_are_contiguous_and_fit(tmp_path: Path) -> None:
    info = analyze_graph(io.load(_save(_mlp(), tmp_path / "m.onnx")))
    assert info.weight_bytes == 8 * 256 * 256 * 4
    budget = 600 * KIB  # two 256 KiB layers + activations at most
    sections = plan_sections(info, budget)
    assert len(sections) >= 4
    assert sections[0].start == 0 and sections[-1].stop == len(info.nodes)
    for a, b in itertools.pairwise(sections):
        assert a.stop == b.start
    assert all(s.cost_bytes <= budget for s in sections)
    assert sum(s.weight_bytes for s in sections) == info.weight_bytes  # no shared weights here
    for s in sections[1:]:  # every cut input is produced earlier (or is the graph input)
        assert all(info.producer[t] < s.start for t in s.inputs)
    with pytest.raises(BudgetExceededError, match="mm0"):
        plan_sections(info, 100 * KIB)  # one 256 KiB weight alone does not fit


# ----------------------------------------------------------------------------- loading
def test_streamed_sections_match_whole_model_and_stay_in_budget(tmp_path: Path) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    feeds = _x()
    budget = 700 * KIB  # the model's weights alone are 2 MiB
    with ProgressiveLoader(path, budget_bytes=budget, batch=2) as loader:
        plan = loader.plan
        assert plan.sectioned and not plan.resident and len(plan.sections) >= 3
        # metadata only: the section models hold no weight bytes, only references to the file
        protos = [io.to_proto(m, inline_external=False) for m in loader._models]
        inits = [t for p in protos for t in p.graph.initializer]
        assert len(inits) == 8
        assert all(t.data_location == TensorProto.EXTERNAL and not t.raw_data for t in inits)
        for _ in range(2):
            _assert_same(loader.run(feeds), _reference(path, feeds, level=loader.optimization))
        stats = loader.stats
        assert stats.peak_held_bytes <= budget
        assert stats.loads >= 2 * len(plan.sections) - 1  # reloaded for the second run
        assert stats.releases == 2 * len(plan.sections)
        assert plan.to_dict()["sections"][0]["start"] == 0


def test_resident_sections_load_once(tmp_path: Path) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    feeds = _x()
    with ProgressiveLoader(
        path, budget_bytes=3 * MIB, section_budget_bytes=700 * KIB, batch=2, preload=2
    ) as loader:
        assert loader.plan.sectioned and loader.plan.resident
        assert loader.wait_loaded(30)
        for _ in range(3):
            _assert_same(loader.run(feeds), _reference(path, feeds, level=loader.optimization))
        assert loader.stats.loads == len(loader.plan.sections)
        assert loader.stats.releases == 0


def test_small_model_is_one_section(tmp_path: Path) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    feeds = _x(batch=3)  # another batch than planned for: sections have no fixed shapes
    with ProgressiveLoader(path) as loader:
        assert not loader.plan.sectioned and len(loader.plan.sections) == 1
        _assert_same(loader.run(feeds), _reference(path, feeds, level=loader.optimization))


def test_embedded_weights_are_spilled_to_a_temp_folder(tmp_path: Path) -> None:
    path = _save(_mlp(layers=6, width=512), tmp_path / "embedded.onnx", external=False)
    assert io.file_size(path).external_bytes == 0
    feeds = _x(width=512)
    loader = ProgressiveLoader(path, budget_bytes=2 * MIB, batch=2)
    tmpdir = Path(loader._tmpdir or "")
    assert tmpdir.is_dir() and tmpdir != path.parent
    _assert_same(loader.run(feeds), _reference(path, feeds, level=loader.optimization))
    loader.close()
    assert not tmpdir.exists()
    assert not loader._thread.is_alive()


def test_errors_do_not_hang(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(BudgetExceededError):
        ProgressiveLoader(path, budget_bytes=100 * KIB)
    with pytest.raises(InputError):
        ProgressiveLoader(path, budget_bytes=MIB, section_budget_bytes=2 * MIB)
    real_build = ProgressiveLoader._build

    def failing_build(self: ProgressiveLoader, index: int) -> Any:
        if index == 1:
            raise RuntimeError("disk on fire")
        return real_build(self, index)

    monkeypatch.setattr(ProgressiveLoader, "_build", failing_build)
    loader = ProgressiveLoader(path, budget_bytes=700 * KIB, batch=2)
    with pytest.raises(RuntimeError, match="loading section 1 failed"):
        loader.run(_x(), timeout=30)
    loader.close()
    with pytest.raises(InputError, match="missing"):
        loader.run({})
    with pytest.raises(InputError, match="closed"):
        loader.run(_x(), timeout=5)
    loader.close()  # idempotent
    assert not loader._thread.is_alive()


def test_a_failed_run_does_not_break_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    feeds = _x()
    with ProgressiveLoader(path, budget_bytes=700 * KIB, batch=2) as loader:
        ref = _reference(path, feeds, level=loader.optimization)
        with pytest.raises(Exception, match=r"(?i)type|invalid"):
            loader.run({"x": feeds["x"].astype(np.float64)}, timeout=30)  # fails in section 0
        _assert_same(loader.run(feeds, timeout=30), ref)
        real_wait = ProgressiveLoader._wait_for
        calls = {"n": 0}

        def flaky_wait(self: ProgressiveLoader, index: int, timeout: float | None) -> Any:
            if index == 2 and calls["n"] == 0:
                calls["n"] += 1
                raise RuntimeError("boom mid-run")
            return real_wait(self, index, timeout)

        monkeypatch.setattr(ProgressiveLoader, "_wait_for", flaky_wait)
        with pytest.raises(RuntimeError, match="boom"):
            loader.run(feeds, timeout=30)  # fails after two sections ran
        for _ in range(2):
            _assert_same(loader.run(feeds, timeout=30), ref)
        assert loader.stats.peak_held_bytes <= loader.plan.budget_bytes
        assert loader.stats.held_bytes <= loader.plan.budget_bytes


def test_concurrent_runs_are_serialized(tmp_path: Path) -> None:
    path = _save(_mlp(), tmp_path / "mlp.onnx")
    feeds = _x()
    ref = _reference(path, feeds, level="basic")  # the sectioned default
    errors: list[BaseException] = []
    with ProgressiveLoader(path, budget_bytes=700 * KIB, batch=2) as loader:

        def work() -> None:
            try:
                for _ in range(3):
                    _assert_same(loader.run(feeds, timeout=30), ref)
            except BaseException as exc:
                errors.append(exc)

        start_and_join([threading.Thread(target=work) for _ in range(3)], timeout=60)
        assert not errors
        assert loader.stats.runs == 9
        assert loader.stats.peak_held_bytes <= loader.plan.budget_bytes


# --------------------------------------------------------------------------- real models
def _weights(path: Path) -> int:
    return analyze_graph(io.load(path)).weight_bytes


@pytest.mark.slow
def test_resnet18_under_40_percent_of_its_weights(zoo_resnet18: Path, tmp_path: Path) -> None:
    path = tmp_path / "resnet18.onnx"
    io.save(io.load(zoo_resnet18), path, external_threshold=0)  # weights left on disk
    budget = int(0.4 * _weights(path))
    feeds = {"input": np.random.default_rng(0).standard_normal((1, 3, 224, 224), np.float32)}
    ref = _reference(path, feeds, level="basic")  # the sectioned default
    malloc_trim()
    with PeakRSS() as rss, ProgressiveLoader(path, budget_bytes=budget) as loader:
        for _ in range(2):
            _assert_same(loader.run(feeds), ref)
    plan, stats = loader.plan, loader.stats
    assert loader.optimization == "basic"
    assert plan.sectioned and not plan.resident and len(plan.sections) > 2
    assert stats.peak_held_bytes <= budget  # own accounting: no overhead at all
    if rss.method != "none":
        allowed = budget + plan.build_overhead_bytes + RSS_FIXED_OVERHEAD
        assert rss.growth_bytes <= allowed, (rss.growth_bytes / MIB, allowed / MIB)


@pytest.mark.slow
def test_yolov3_tiny_sectioned(zoo_yolov3_tiny: Path) -> None:
    # At 416x416 the first layers' activations (21 MiB live) outweigh 40 % of the weights, so the
    # budget is 40 % of the weights on top of the peak activations. The section budget leaves room
    # for the first Conv and its BatchNormalization together: cut apart, ORT cannot fuse them and
    # the outputs move by 2e-5 (more than the tolerance).
    info = analyze_graph(io.load(zoo_yolov3_tiny))
    act, weights = info.peak_activation_bytes, info.weight_bytes
    budget, section_budget = act + int(0.4 * weights), act + int(0.2 * weights)
    feeds = {"input": np.random.default_rng(1).standard_normal((1, 3, 416, 416), np.float32)}
    with ProgressiveLoader(
        zoo_yolov3_tiny, budget_bytes=budget, section_budget_bytes=section_budget
    ) as loader:  # embedded weights: spilled to a temp folder first
        assert loader.plan.sectioned and len(loader.plan.sections) > 2
        out = loader.run(feeds)
        assert loader.stats.peak_held_bytes <= budget
    _assert_same(out, _reference(zoo_yolov3_tiny, feeds, level=loader.optimization))


@pytest.mark.needs_data
@pytest.mark.parametrize(
    ("name", "input_name", "size"),
    [("shufflenet-v2-12-qdq.onnx", "input", 224), ("yolox_nano.onnx", "images", 416)],
)
def test_real_models_sectioned(shared_data: Path, name: str, input_name: str, size: int) -> None:
    path = shared_data / "models" / name
    info = analyze_graph(io.load(path))
    budget = int(0.5 * info.weight_bytes) + info.peak_activation_bytes
    section_budget = max(max_node_cost(info), budget // 3)
    feeds = {input_name: np.random.default_rng(2).standard_normal((1, 3, size, size), np.float32)}
    with ProgressiveLoader(
        path, budget_bytes=budget, section_budget_bytes=section_budget
    ) as loader:
        assert loader.plan.sectioned and len(loader.plan.sections) > 2
        out = loader.run(feeds)
        assert loader.stats.peak_held_bytes <= budget
    _assert_same(out, _reference(path, feeds, level=loader.optimization))
