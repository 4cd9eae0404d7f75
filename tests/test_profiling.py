"""Tests for onnxfit.profiling: percentiles, the Tracker, and parsing a recorded ORT profile."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxfit import io
from onnxfit.errors import InputError
from onnxfit.profiling.opcost import base_name, join_cost, match_nodes
from onnxfit.profiling.ortprofile import parse_profile
from onnxfit.profiling.stats import percentile, summarize
from onnxfit.profiling.tracker import Tracker

DATA = Path(__file__).parent / "data"
PROFILE = DATA / "ort_profile_tiny.json"


def tiny_model(seed: int = 0) -> onnx.ModelProto:
    """Conv(3->8, 3x3) + Relu + GlobalAveragePool + Flatten + Gemm(8->10), dynamic batch.

    tests/data/ort_profile_tiny.json was recorded from this model: batch 2, 1 thread,
    3 runs, onnxruntime 1.32 CPU; event args other than op_name / provider / shapes /
    node_index were dropped to keep the file small (see ``record_profile``).
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((10, 8)).astype(np.float32), "W2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W2"], ["y"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def record_profile(path: Path) -> None:  # pragma: no cover - run by hand to refresh the fixture
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(path.with_suffix(""))
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(
        tiny_model().SerializeToString(), so, providers=["CPUExecutionProvider"]
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for _ in range(3):
        sess.run(None, {"x": x})
    events = json.loads(Path(sess.end_profiling()).read_text())
    keep = {"op_name", "provider", "input_type_shape", "output_type_shape", "node_index"}
    for e in events:
        e["args"] = {k: v for k, v in e.get("args", {}).items() if k in keep}
    path.write_text("[\n" + ",\n".join(json.dumps(e, sort_keys=True) for e in events) + "\n]\n")


# ------------------------------------------------------------------------- percentiles


def test_percentile_linear_interpolation_by_hand() -> None:
    xs = [15.0, 20.0, 35.0, 40.0, 50.0]
    # h = (n-1) p / 100: p40 -> h = 1.6 -> 20 + 0.6 * 15 = 29
    assert percentile(xs, 40) == pytest.approx(29.0)
    assert percentile(xs, 50) == 35.0
    assert percentile(xs, 0) == 15.0
    assert percentile(xs, 100) == 50.0
    # p90 -> h = 3.6 -> 40 + 0.6 * 10 = 46
    assert percentile(xs, 90) == pytest.approx(46.0)
    # unsorted input, even count: median is the mean of the middle two
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == pytest.approx(2.5)
    # p99 of 1..10: h = 8.91 -> 9 + 0.91 * 1
    assert percentile(list(range(1, 11)), 99) == pytest.approx(9.91)


def test_percentile_matches_numpy_default() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 100, 1001):
        xs = rng.exponential(size=n).tolist()
        for p in (0, 1, 25, 50, 90, 99, 99.9, 100):
            assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)), rel=1e-12)


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(InputError):
        percentile([], 50)
    with pytest.raises(InputError):
        percentile([1.0], 101)
    with pytest.raises(InputError):
        summarize([])


def test_summarize_by_hand() -> None:
    s = summarize([3.0, 1.0, 2.0, 10.0])
    assert (s.count, s.total, s.min, s.max) == (4, 16.0, 1.0, 10.0)
    assert s.mean == 4.0
    assert s.median == 2.5
    assert s.p90 == pytest.approx(3.0 + 0.7 * 7.0)  # h = 2.7
    assert s.stdev == pytest.approx(float(np.std([3, 1, 2, 10], ddof=1)))
    assert summarize([5.0]).stdev == 0.0


# ----------------------------------------------------------------------------- tracker


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_tracker_sections_nesting_and_stats() -> None:
    clock = FakeClock()
    tr = Tracker(clock=clock)
    for i in range(4):
        with tr.section("frame"):
            with tr.section("preprocess"):
                clock.t += 1.0 + i
            tr.start("infer")
            clock.t += 10.0
            tr.end("infer")
    stats = tr.stats()
    assert list(stats) == ["frame", "frame/preprocess", "frame/infer"]
    pre = stats["frame/preprocess"]
    assert pre.wall.count == 4 and pre.depth == 1 and pre.parent == "frame"
    assert (pre.wall.min, pre.wall.median, pre.wall.max, pre.wall.total) == (1.0, 2.5, 4.0, 10.0)
    assert stats["frame"].wall.total == pytest.approx(50.0)
    assert tr.samples("frame/infer") == [10.0] * 4
    assert tr.to_dict()["sections"][0]["name"] == "frame"


def test_tracker_mismatched_end_and_exceptions() -> None:
    tr = Tracker()
    with pytest.raises(InputError):
        tr.end()
    tr.start("a")
    tr.start("b")
    with pytest.raises(InputError, match="innermost open section is 'a/b'"):
        tr.end("a")
    tr.end("b")
    tr.end("a")
    with pytest.raises(ValueError), tr.section("boom"):
        raise ValueError("x")
    assert tr.stats()["boom"].wall.count == 1  # closed despite the exception
    with pytest.raises(InputError):
        tr.start("a/b")
    tr.add("external", 0.5)
    assert tr.samples("external") == [0.5]


def test_tracker_threads_nest_independently() -> None:
    tr = Tracker()
    barrier = threading.Barrier(2, timeout=10)

    def work(name: str) -> None:
        with tr.section(name):
            barrier.wait()
            with tr.section("inner"):
                pass

    threads = [threading.Thread(target=work, args=(n,)) for n in ("t1", "t2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert set(tr.stats()) == {"t1", "t2", "t1/inner", "t2/inner"}


class FakeGpu:
    name = "fake"

    def __init__(self) -> None:
        self.n = 0

    def begin(self) -> list[float]:
        self.n += 1
        return [float(self.n)]

    def finish(self, token: list[float]) -> list[float]:
        return token

    def elapsed(self, token: list[float]) -> float:
        return token[0] / 1000


def test_tracker_gpu_timer_plumbing() -> None:
    tr = Tracker(gpu=FakeGpu())
    for _ in range(3):
        with tr.section("run"):
            pass
    st = tr.stats()["run"]
    assert tr.gpu_timer == "fake"
    assert st.gpu is not None and st.gpu.count == 3 and st.gpu.median == pytest.approx(0.002)
    assert Tracker(gpu=None).gpu_timer is None


# ------------------------------------------------------------------------ ORT profile


def test_parse_recorded_profile_by_hand() -> None:
    prof = parse_profile(PROFILE, skip_runs=1)
    assert prof.runs == 2
    assert prof.run_s == pytest.approx((77e-6, 61e-6))
    assert prof.kernel_s == pytest.approx((45e-6, 38e-6))
    assert prof.session_init_s == pytest.approx(32060e-6)
    by = {o.node: o for o in prof.ops}
    assert list(by) == ["r_nchwc", "ReorderOutput", "gap", "fc", "flat"]  # total time order
    conv = by["r_nchwc"]
    assert (conv.op_type, conv.calls, conv.provider) == ("Conv", 2, "CPUExecutionProvider")
    assert conv.total_s == pytest.approx(46e-6) and conv.mean_s == pytest.approx(23e-6)
    assert conv.share == pytest.approx(46 / 83)
    assert conv.input_shapes[0] == (2, 3, 32, 32)
    assert sum(o.share for o in prof.ops) == pytest.approx(1.0)
    assert prof.coverage == pytest.approx(41.5 / 69)  # no wall times: vs ORT's model_run
    types = {r["op_type"]: r for r in prof.by_op_type()}
    assert types["Conv"]["per_run_s"] == pytest.approx(23e-6)
    full = parse_profile(PROFILE)
    assert full.runs == 3 and {o.node: o.calls for o in full.ops}["r_nchwc"] == 3


def test_parse_profile_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="not a JSON profile"):
        parse_profile(bad)
    with pytest.raises(InputError, match="no model_run"):
        parse_profile([{"cat": "Node", "name": "x_kernel_time", "ts": 0, "dur": 1}])
    with pytest.raises(InputError, match="cannot skip"):
        parse_profile(PROFILE, skip_runs=3)
    with pytest.raises(InputError, match="cannot read"):
        parse_profile(tmp_path / "missing.json")


def test_base_name_strips_ort_suffixes() -> None:
    assert base_name("layer1.0.relu1_nchwc") == "layer1.0.relu1"
    assert base_name("Conv_0_quant_token_1") == "Conv_0"
    assert base_name("Mul_43/QuickGeluFusion/") == "Mul_43"
    assert base_name("ReorderOutput_token_35") == "ReorderOutput"
    assert base_name("fc") == "fc"


def test_join_cost_matches_fused_conv(tmp_path: Path) -> None:
    from onnxfit.analysis.shapes import infer_shapes

    path = tmp_path / "tiny.onnx"
    io.save(tiny_model(), path)
    model = infer_shapes(io.load(path), batch=2)
    groups = match_nodes({"r_nchwc": "Conv", "gap": "GlobalAveragePool", "Transpose": "X"}, model)
    assert [n.name for n in groups["r_nchwc"]] == ["conv0", "relu0"]  # via output 'r' -> Relu
    assert [n.name for n in groups["gap"]] == ["gap"]
    assert "Transpose" not in groups
    prof = join_cost(parse_profile(PROFILE, skip_runs=1), model, target="cpu")
    conv = next(o for o in prof.ops if o.node == "r_nchwc")
    # Conv: 2 x (2*8*32*32 outputs) x (3*3*3 MACs) = 884736 FLOPs; Relu: 1 per element
    assert conv.flops == 2 * 2 * 8 * 32 * 32 * 27 + 2 * 8 * 32 * 32
    assert conv.achieved_flops_s == pytest.approx(conv.flops / 23e-6)
    assert conv.bound in ("compute", "memory") and conv.efficiency is not None
    reorder = next(o for o in prof.ops if o.node == "ReorderOutput")
    assert reorder.flops is None and reorder.matched == ()
    assert prof.roofline_target == "cpu"
    assert 0 < prof.matched_share < 1
    again = type(prof).from_dict(json.loads(json.dumps(prof.to_dict())))
    assert again.ops == prof.ops and again.run_s == prof.run_s


# ------------------------------------------------------------------------------ system


def test_peak_rss_grows_with_a_big_allocation() -> None:
    from onnxfit.profiling import system

    before = system.peak_rss_bytes()
    rss = system.rss_bytes()
    assert before > 0 and (rss is None or rss <= before)
    block = np.ones(64 * 1024 * 1024 // 8)  # 64 MiB, touched
    after = system.peak_rss_bytes()
    assert after >= before and after >= (system.rss_bytes() or 0)
    assert block.sum() > 0


def test_noise_figures() -> None:
    from onnxfit.profiling.system import CpuMonitor, Noise, noise_probe

    assert noise_probe(repeats=3) > 0
    share = CpuMonitor().stop()
    assert share is None or 0.0 <= share <= 1.0
    n = Noise(probe_before_s=0.010, probe_after_s=0.0115, other_cpu_share=0.05, load_average=1.0)
    assert n.drift == pytest.approx(0.15) and not n.quiet
    assert Noise(0.010, 0.0105, 0.05, None).quiet
    assert not Noise(0.010, 0.010, 0.30, None).quiet
    assert Noise.from_dict(n.to_dict()) == n


def test_match_prefers_the_longest_name_that_exists() -> None:
    from onnxfit.profiling.opcost import name_candidates

    assert name_candidates("Conv_0_quant_token_1") == [
        "Conv_0_quant_token_1",
        "Conv_0_quant",
        "Conv_0",
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="Conv_0_quant")], "g", [x], [y], [w]
    )
    model = io.from_proto(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))
    groups = match_nodes({"Conv_0_quant_token_1": "QLinearConv"}, model)
    assert [n.name for n in groups["Conv_0_quant_token_1"]] == ["Conv_0_quant"]
