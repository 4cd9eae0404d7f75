"""``onnxfit calibrate``: fit the latency model to this device and write a target TOML."""

from __future__ import annotations

from pathlib import Path

import click

from onnxfit.cli._common import (
    claim_outputs,
    force_option,
    guarded,
    json_option,
    markdown_option,
    print_result,
    progress,
    progress_callback,
)


@click.command("calibrate")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Target file to write (.toml).",
)
@click.option("--provider", "-p", help="Execution provider: cpu (default), cuda, dml, webgpu.")
@click.option(
    "--base",
    help="Built-in target the figures are relative to (default: cpu, cuda, or xbox-series-s "
    "for dml).",
)
@click.option("--name", help="Target name (default: the file's stem).")
@click.option("--threads", type=int, default=1, show_default=True, help="Intra-op threads.")
@click.option("--runs", type=int, default=20, show_default=True, help="Timed runs per model.")
@click.option(
    "--rounds",
    type=int,
    default=1,
    show_default=True,
    help="Measure the whole suite this many times, graph after graph, and keep the medians "
    "(a shared or thermally busy device: 3).",
)
@click.option("--quick", is_flag=True, help="Fewer widths and no batch-2 models.")
@click.option(
    "--model",
    "extra",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also measure this model (repeatable): your own networks make the fit closer.",
)
@click.option(
    "--save-measurements",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Keep the raw measurements (JSON) to refit later with --from-measurements.",
)
@click.option(
    "--from-measurements",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Fit measurements saved earlier instead of measuring.",
)
@click.option("--validate", is_flag=True, help="Also report leave-one-model-out errors.")
@force_option
@markdown_option
@json_option
@guarded
def calibrate(
    output: Path,
    provider: str | None,
    base: str | None,
    name: str | None,
    threads: int,
    runs: int,
    rounds: int,
    quick: bool,
    extra: tuple[Path, ...],
    save_measurements: Path | None,
    from_measurements: Path | None,
    validate: bool,
    force: bool,
    markdown: bool,
    as_json: bool,
) -> None:
    """Run a fixed set of models and per-op probes, fit the latency model, write a target.

    Each graph is timed (median of --runs) and profiled with ONNX Runtime's profiler; every
    kernel is matched to the nodes it runs. Per op class (conv, conv1x1, dwconv, matmul, pool,
    norm, resize, move, eltwise) and precision the fit finds the fraction of the base target's
    peak compute and bandwidth the device achieves and a cost per kernel; it learns which
    nodes the runtime fuses away and the fixed cost of a run. The TOML written
    (base = "<target>" + [calibration]) works with --target in inspect, optimize and compare;
    their projected latencies then say "calibrated" instead of "uncalibrated: a floor".

    \b
    Examples:
      onnxfit calibrate -o this-cpu.toml
      onnxfit calibrate --provider dml -o series-s-devkit.toml --validate
      onnxfit inspect model.onnx --target series-s-devkit.toml
    """
    from onnxfit.profiling.calib_measure import CalibrationRun
    from onnxfit.profiling.calibrate import calibrate as run_calibrate
    from onnxfit.report.calibrate import render_calibrate, to_markdown

    claim_outputs(
        {"-o": output, "--save-measurements": save_measurements},
        [*extra, from_measurements],
        force=force,
    )
    measurements = CalibrationRun.load(from_measurements) if from_measurements else None
    with progress(not as_json) as bar:
        result = run_calibrate(
            output,
            provider=provider,
            base=base,
            name=name,
            threads=threads,
            runs=runs,
            rounds=rounds,
            quick=quick,
            extra=extra,
            measurements=measurements,
            validate=validate,
            force=force,
            progress=_adapt(progress_callback(bar)),
        )
    if save_measurements is not None:
        result.run.save(save_measurements)
    print_result(
        result,
        as_json=as_json,
        markdown=markdown,
        to_markdown=lambda: to_markdown(result),
        render=lambda: render_calibrate(result),
    )


def _adapt(update):  # type: ignore[no-untyped-def]
    def on_progress(label: str, done: int, total: int) -> None:
        update(done, total, f"measuring {label}")

    return on_progress
