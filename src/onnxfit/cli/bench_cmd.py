"""``onnxfit bench``: latency, throughput and memory of a model per batch size."""

from __future__ import annotations

from pathlib import Path

import click

from onnxfit.cli._common import (
    check_report_paths,
    check_threads,
    force_option,
    guarded,
    html_option,
    input_shape_option,
    io_binding_option,
    json_option,
    markdown_option,
    model_figures,
    parse_providers,
    parse_shapes,
    plot_option,
    print_result,
    progress,
    progress_callback,
    provider_option,
    target_option,
    threads_option,
    write_reports,
)


@click.command("bench")
@click.argument("model", type=click.Path(path_type=Path))
@target_option()
@provider_option
@click.option("--batch", "-b", default="1", show_default=True, help="Batch sizes, e.g. 1,8,32.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs first.")
@click.option("--iterations", "-n", type=int, help="Timed runs per batch size [default: 100].")
@click.option("--duration", type=float, help="Instead of --iterations: seconds of timed runs.")
@threads_option
@io_binding_option
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
@input_shape_option("Full shape of an input with unknown dims (repeatable).")
@click.option("--in-process", is_flag=True, help="Measure in this process (no fresh child).")
@click.option("--no-pin", is_flag=True, help="Do not pin the child to the cores it uses.")
@plot_option
@force_option
@html_option("One self-contained HTML page with the tables and plots.")
@markdown_option
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
    force: bool,
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
    check_threads(threads)
    if profile_runs < 1:
        raise InputError(f"--profile-runs must be >= 1, got {profile_runs}")
    check_report_paths(plot, html_out, inputs=[model], force=force)
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
    from onnxfit.report.bench import bench_markdown, render_bench
    from onnxfit.report.html import bench_page
    from onnxfit.report.plots import bench_plots

    written = write_reports(
        plot,
        html_out,
        lambda: bench_plots(
            result,
            model=model_figures(ir_model, batch=result.batches[0].batch, target=result.target),
        ),
        lambda plots: bench_page(result, plots, top=top),
    )
    print_result(
        result,
        as_json=as_json,
        markdown=markdown,
        to_markdown=lambda: bench_markdown(result, top=top),
        render=lambda: render_bench(result, top=top),
        written=written,
    )
