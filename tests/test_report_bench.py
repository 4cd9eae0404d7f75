"""Every renderer of bench / compare / profile / tracker results, on fixed (hand-made) results."""

from __future__ import annotations

import base64
import io as _io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from onnxfit.cli._common import model_figures
from onnxfit.errors import InputError
from onnxfit.profiling.bench import BatchResult, BenchResult, Static
from onnxfit.profiling.compare import CompareResult, ModelStats
from onnxfit.profiling.ortprofile import OpTiming, OrtProfile
from onnxfit.profiling.stats import summarize
from onnxfit.profiling.system import Noise
from onnxfit.profiling.tracker import Tracker
from onnxfit.report import bench as rb
from onnxfit.report import figures, plots, roofline
from onnxfit.report.html import HtmlPage, bench_page, compare_page
from onnxfit.verify.evaluator import Accuracy

PNG = b"\x89PNG\r\n\x1a\n"


def _samples(median_ms: float, n: int = 50, seed: int = 0) -> tuple[float, ...]:
    rng = np.random.default_rng(seed)
    return tuple(float(v) for v in median_ms / 1e3 * (1 + 0.05 * rng.standard_normal(n)).clip(0.8))


def _profile() -> OrtProfile:
    ops = (
        OpTiming(
            "conv1_nchwc",
            "Conv",
            "CPUExecutionProvider",
            10,
            0.060,
            0.006,
            0.75,
            matched=("conv1", "relu1"),
            flops=236_027_904,
            bytes=3_000_000,
            precision="fp32",
            bound="compute",
            achieved_flops_s=39.3e9,
            achieved_bytes_s=0.5e9,
            attainable_flops_s=166e9,
            efficiency=0.237,
        ),
        OpTiming(
            "pool",
            "MaxPool",
            "CPUExecutionProvider",
            10,
            0.015,
            0.0015,
            0.1875,
            matched=("pool",),
            flops=1_806_336,
            bytes=4_000_000,
            precision="fp32",
            bound="memory",
            achieved_flops_s=1.2e9,
            achieved_bytes_s=2.7e9,
            attainable_flops_s=9.0e9,
            efficiency=0.13,
        ),
        OpTiming(
            "ReorderOutput", "ReorderOutput", "CPUExecutionProvider", 10, 0.005, 0.0005, 0.0625
        ),
    )
    return OrtProfile(
        ops=ops,
        run_s=(0.0082,) * 10,
        kernel_s=(0.008,) * 10,
        skipped_runs=3,
        session_init_s=0.2,
        wall_s=(0.0084,) * 10,
        roofline_target="cpu",
    )


def _batch(b: int, median_ms: float, profile: OrtProfile | None = None) -> BatchResult:
    s = _samples(median_ms, seed=b)
    return BatchResult(
        batch=b,
        provider="CPUExecutionProvider",
        threads=2,
        session_s=0.31,
        first_s=0.02,
        warmup=10,
        latency=summarize(s),
        samples=s,
        peak_rss=215 * 2**20,
        rss_baseline=55 * 2**20,
        device_bytes=None,
        static=Static(
            arena_bytes=4_014_080 * b,
            lower_bound_bytes=4_014_080 * b,
            weights_bytes=46_750_000,
            runtime_bytes=51_000_000 + 4_014_080 * b,
            projected_s=0.00061 * b,
            flops=3_600_000_000 * b,
        ),
        noise=Noise(0.00120, 0.00123, 0.04, 0.5),
        pid=1234,
        isolated=True,
        profile=profile,
    )


@pytest.fixture
def bench_result() -> BenchResult:
    return BenchResult(
        model="/models/resnet18.onnx",
        file_bytes=46_827_520,
        parameters=11_689_512,
        target="xbox-series-s",
        runtime="onnxfit",
        batches=(_batch(1, 8.2, _profile()), _batch(8, 41.0)),
        machine={"cpu": "AMD EPYC, 2 cores", "ram_bytes": 8 * 2**30, "providers": ["CPU"]},
        notes=("DmlExecutionProvider is not available here; measured on CPUExecutionProvider",),
    )


def _model(name: str, mb: float, ms: float, top1: float, seed: int) -> ModelStats:
    s = _samples(ms, seed=seed)
    return ModelStats(
        name=name,
        path=f"/m/{name}",
        runtime="onnxfit",
        file_bytes=int(mb * 1e6),
        parameters=11_689_512,
        static=Static(
            arena_bytes=int(4e6 * mb / 44.7),
            weights_bytes=int(mb * 1e6),
            runtime_bytes=int(8.4e6 * mb / 44.7),
            projected_s=ms / 2e4,
        ),
        provider="CPUExecutionProvider",
        threads=2,
        session_s=0.3,
        first_s=0.02,
        latency=summarize(s),
        samples=s,
        peak_rss=215 * 2**20,
        rss_baseline=55 * 2**20,
        device_bytes=None,
        pid=100 + seed,
        batch=1,
        accuracy=Accuracy("classify", {"top1": top1, "top5": 0.9}, 500, "imagenet-sample"),
    )


@pytest.fixture
def compare_result() -> CompareResult:
    return CompareResult(
        models=(_model("fp32", 44.7, 128.0, 0.70, 0), _model("fp16", 22.3, 76.0, 0.698, 1)),
        target="xbox-series-s",
        batch=1,
        warmup=10,
        rounds=10,
        per_round=10,
        schedule=tuple([0, 1] * 10),
        isolated=True,
        noise=Noise(0.0012, 0.0012, 0.02, 0.3),
        machine={"cpu": "test"},
    )


def _render(renderable: object) -> str:
    con = Console(width=250, record=True, file=_io.StringIO())
    con.print(renderable)
    return con.export_text()


def test_bench_rich_markdown_json(bench_result: BenchResult) -> None:
    text = _render(rb.render_bench(bench_result))
    b1 = bench_result.batches[0]
    assert rb.fmt_time(b1.latency.median) in text and rb.fmt_time(b1.latency.p99) in text
    assert "215.00 MiB" in text and "3.83 MiB" in text  # peak RSS, arena (plan)
    assert "conv1_nchwc" in text and "39.30 GFLOP/s" in text and "23.7 %" in text
    assert "not available here" in text
    md = rb.bench_markdown(bench_result)
    assert "| batch | provider / threads |" in md and "| 8 | CPU / 2 |" in md
    assert "operators = 95.2 % of the run" in md  # 8.0 ms of 8.4 ms wall
    d = json.loads(json.dumps(bench_result.to_dict()))
    # every figure the table shows is in the JSON
    row = d["batches"][0]
    for key in ("session_s", "first_s", "throughput", "peak_rss", "rss_delta", "device_bytes"):
        assert key in row
    assert set(row["latency"]) >= {"min", "median", "mean", "p90", "p99", "max"}
    assert row["static"]["arena_bytes"] == 4_014_080 and row["static"]["projected_s"] == 0.00061
    assert row["profile"]["ops"][0]["efficiency"] == 0.237
    assert BenchResult.from_dict(d).batches[0].profile == bench_result.batches[0].profile


def test_compare_table_ratios_and_markdown(compare_result: CompareResult) -> None:
    t = rb.compare_rows(compare_result)
    rows = {r[0]: r[1:] for r in t.rows}
    assert rows["file size"][1].endswith("(2.00x)")  # 44.7 MB -> 22.3 MB
    med = compare_result.models[0].latency.median / compare_result.models[1].latency.median
    assert rows["latency median"][1].endswith(f"({med:.2f}x)")
    assert rows["top-1 accuracy"] == ("70.0 %", "69.8 % (-0.2 pts)")
    assert t.headers == ("", "fp32", "fp16")
    md = rb.compare_markdown(compare_result)
    assert "| file size | 44.70 MB" not in md  # sizes are MiB, as everywhere else
    assert "| file size | 42.63 MiB | 21.27 MiB (2.00x) |" in md
    text = _render(rb.render_compare(compare_result))
    assert "runtime memory (plan" in text and "peak RSS (measured)" in text
    d = json.loads(json.dumps(compare_result.to_dict()))
    assert d["ratios"][1]["file_size"] == pytest.approx(44.7 / 22.3)
    assert d["ratios"][1]["accuracy_pts"] == pytest.approx(-0.2)


def test_profile_and_tracker_rows() -> None:
    t = rb.profile_rows(_profile(), top=2)
    assert len(t.rows) == 2 and t.rows[0][:3] == ("conv1_nchwc", "Conv", "10")
    assert rb.profile_rows(_profile()).rows[2][-1] == "(not in model)"
    types = rb.op_type_rows(_profile())
    assert [r[0] for r in types.rows] == ["Conv", "MaxPool", "ReorderOutput"]
    tr = Tracker()
    with tr.section("outer"), tr.section("inner"):
        pass
    rows = rb.tracker_rows(tr.stats())
    assert [r[0] for r in rows.rows] == ["outer", "  inner"]
    assert "| section | count |" in rb.markdown(rows)


def _valid_png(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG
    with Image.open(_io.BytesIO(data)) as im:
        im.verify()
    with Image.open(_io.BytesIO(data)) as im:
        return im.size


def test_plots_are_valid_pngs(tmp_path: Path, bench_result: BenchResult) -> None:
    figs = {
        "lat": plots.latency_figure({"a": _samples(8), "b": _samples(9, seed=1)}),
        "ops": plots.op_time_figure(_profile()),
        "roof": roofline.roofline_figure(roofline.points_from_profile(_profile()), "cpu"),
    }
    for name, fig in figs.items():
        out = figures.save_figure(fig, tmp_path / f"{name}.png")
        w, h = _valid_png(out.read_bytes())
        assert w > 400 and h > 200
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temporary file
    written = figures.write_plots(plots.bench_plots(bench_result), tmp_path / "bench.png")
    names = [p.name for p in written]
    assert names[0] == "bench.png" and "bench-ops-b1.png" in names
    assert "bench-roofline-measured-b1.png" in names
    for p in written:
        _valid_png(p.read_bytes())
    with pytest.raises(InputError):
        figures.save_figure(figs["lat"], tmp_path / "x.gif")
    with pytest.raises(InputError):
        plots.latency_figure({})


def test_model_plots_memory_plan_and_projected_roofline(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from onnxfit import io

    w = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    g = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 16])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    io.save(m, tmp_path / "m.onnx")
    got = plots.model_plots(
        model_figures(io.load(tmp_path / "m.onnx"), batch=2, target="xbox-series-s")
    )
    assert [p.tag for p in got] == ["roofline-xbox-series-s", "memory"]
    for p in got:
        _valid_png(p.png)


def test_html_pages(
    tmp_path: Path, bench_result: BenchResult, compare_result: CompareResult
) -> None:
    page = bench_page(bench_result, plots.bench_plots(bench_result))
    out = page.write(tmp_path / "bench.html")
    text = out.read_text()
    assert text.startswith("<!DOCTYPE html>") and text.count("<table>") >= 4
    assert "memory and projection" in text and "conv1_nchwc" in text
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert len(imgs) == 3  # latency, operator bars, measured roofline
    for b64 in imgs:
        _valid_png(base64.b64decode(b64))
    assert "http://" not in text and "https://" not in text  # self-contained
    cmp = compare_page(compare_result, plots.compare_plots(compare_result)).write(
        tmp_path / "cmp.html"
    )
    ctext = cmp.read_text()
    assert "top-1 accuracy" in ctext and "(2.00x)" in ctext
    assert 'src="data:image/png;base64,' in ctext
    assert not list(tmp_path.glob(".*tmp"))


def test_html_escapes_and_refuses_bad_paths(tmp_path: Path) -> None:
    page = HtmlPage("a <b> & c")
    page.table(rb.Rows("t<", ("h&",), (("<script>",),)))
    html_text = page.render()
    assert "<script>" not in html_text and "&lt;script&gt;" in html_text
    with pytest.raises(InputError):
        page.write(tmp_path / "missing" / "x.html")
    with pytest.raises(InputError):
        page.write(tmp_path)
