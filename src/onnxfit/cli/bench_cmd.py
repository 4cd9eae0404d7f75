"""``onnxfit bench``: latency, throughput and memory of a model per batch size."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxfit.cli._common import (
    console,
    echo_json,
    guarded,
    json_option,
    parse_shapes,
    progress,
    target_option,
)


def parse_providers(text: str | None) -> list[str] | None:
    """``cuda,cpu`` or full provider names -> ORT provider names."""
    if not text:
        return None
    short = {
        "cpu": "CPUExecutionProvider",
        "cuda": "CUDAExecutionProvider",
        "dml": "DmlExecutionProvider",
        "directml": "DmlExecutionProvider",
        "tensorrt": "TensorrtExecutionProvider",
    }
    return [short.get(p.strip().lower(), p.strip()) for p in text.split(",") if p.strip()]


def progress_callback(bar: Any) -> Any:
    """An ``on_progress`` function driving one rich progress task."""
    task = bar.add_task("starting", total=None)

    def update(done: int, total: int | None, label: str) -> None:
        bar.update(task, completed=done, total=total, description=label)

    return update


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@target_option()
@click.option("--provider", "-p", help="Execution provider(s), e.g. cpu, cuda, dml (comma list).")
@click.option("--batch", "-b", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs first.")
@click.option("--iterations", "-n", type=int, help="Timed runs per batch size [default: 100].")
@click.option("--duration", type=float, help="Instead of --iterations: seconds of timed runs.")
@click.option("--threads", type=int, help="Intra-op threads (default: the target's setting).")
@click.option("--io-binding", is_flag=True, help="Bind inputs/outputs once (preallocated).")
@click.option("--profile", is_flag=True, help="Add ORT's per-operator profile, with rooflines.")
@click.option("--profile-runs", type=int, default=20, show_default=True)
@click.option("--top", type=int, default=15, show_default=True, help="Operators listed.")
@click.option(
    "--runtime",
    type=click.Choice(["onnxfit", "ort"]),
    default="onnxfit",
    show_default=True,
    help="onnxfit Session with target settings, or plain onnxruntime defaults.",
)
@click.option(
    "--input-shape",
    "input_shape",
    multiple=True,
    metavar="NAME=1x3x224x224",
    help="Full shape of an input with unknown dims (repeatable).",
)
@click.option("--in-process", is_flag=True, help="Measure in this process (no fresh child).")
@click.option("--no-pin", is_flag=True, help="Do not pin the child to the cores it uses.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Plots (.png).")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One self-contained HTML page with the tables and plots.",
)
@click.option("--markdown", is_flag=True, help="Print the result as Markdown.")
@json_option
@guarded
def bench(
    model: Path,
    target: str,
    provider: str | None,
    batch: str,
    warmup: int,
    iterations: int | None,
    duration: float | None,
    threads: int | None,
    io_binding: bool,
    profile: bool,
    profile_runs: int,
    top: int,
    runtime: str,
    input_shape: tuple[str, ...],
    in_process: bool,
    no_pin: bool,
    plot: Path | None,
    html_out: Path | None,
    markdown: bool,
    as_json: bool,
) -> None:
    """Benchmark MODEL: session creation, first run, latency percentiles, throughput, peak
    memory (measured and planned) and the projection on the target, per batch size.

    Each batch size runs in a fresh child process (unless --in-process) pinned to its cores;
    a fixed workload timed before and after says how noisy the machine was. --plot writes the
    latency distribution to FILE and the other plots beside it (FILE-ops-b1.png, ...).

    \b
    Examples:
      onnxfit bench resnet18.onnx --target cpu
      onnxfit bench resnet18.onnx --batch 1,8,32 --iterations 200 --profile
      onnxfit bench model.onnx --duration 10 --threads 2 --json
      onnxfit bench yolo.onnx --profile --plot yolo.png --html yolo.html
    """
    from onnxfit import io
    from onnxfit.errors import InputError
    from onnxfit.profiling.bench import bench as run_bench
    from onnxfit.profiling.bench import check_options, parse_batches

    batches = parse_batches(batch)
    check_options(warmup=warmup, iterations=iterations, duration=duration)
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}", hint="--threads 2")
    if profile_runs < 1:
        raise InputError(f"--profile-runs must be >= 1, got {profile_runs}")
    if plot is not None:
        from onnxfit.report.plots import check_plot_path

        check_plot_path(plot)
    if html_out is not None:
        from onnxfit.report.html import check_html_path

        check_html_path(html_out)
    shapes = parse_shapes(input_shape)
    ir_model = io.load(model)  # a bad file fails here, before anything runs
    if duration is None and iterations is None:
        iterations = 100
    with progress() as bar:
        result = run_bench(
            model,
            target=target,
            providers=parse_providers(provider),
            batches=batches,
            warmup=warmup,
            iterations=iterations,
            duration=duration,
            threads=threads,
            io_binding=io_binding,
            profile=profile,
            profile_runs=profile_runs,
            isolated=not in_process,
            runtime=runtime,
            input_shapes=shapes or None,
            pin=not no_pin,
            on_progress=progress_callback(bar),
        )
    plots = []
    if plot is not None or html_out is not None:
        from onnxfit.report.plots import bench_plots

        plots = bench_plots(result, model=ir_model)
    written = []
    if plot is not None:
        from onnxfit.report.plots import write_plots

        written = write_plots(plots, plot)
    if html_out is not None:
        from onnxfit.report.html import bench_page

        written.append(bench_page(result, plots, top=top).write(html_out))
    if as_json:
        echo_json(result.to_dict())
    elif markdown:
        from onnxfit.report.bench import bench_markdown

        click.echo(bench_markdown(result, top=top))
    else:
        from onnxfit.report.bench import render_bench

        console.print(render_bench(result, top=top))
    for p in written:
        click.echo(f"wrote {p}", err=True)
