"""``onnxfit inspect``: size, cost, memory plan and fit verdict of a model on a target."""

from __future__ import annotations

from pathlib import Path

import click

from onnxfit.cli._common import (
    allow_over_budget_option,
    budget_option,
    claim_outputs,
    console,
    exit_over_budget,
    force_option,
    guarded,
    input_shape_option,
    json_option,
    markdown_option,
    parse_shapes,
    print_result,
    progress,
    target_option,
)
from onnxfit.errors import InputError

_PLOT_SUFFIXES = (".png", ".svg", ".pdf")


@click.command("inspect")
@click.argument("model", type=click.Path(path_type=Path))
@target_option()
@click.option("--batch", "-b", type=int, default=1, show_default=True, help="Batch size.")
@click.option(
    "--top", "-k", type=int, default=10, show_default=True, help="Nodes listed by projected time."
)
@input_shape_option("Full shape of an input (repeatable); overrides --batch for that input.")
@budget_option
@allow_over_budget_option
@click.option(
    "--plot-memory",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also draw the memory plan (lifetime across, offset up) to this .png/.svg/.pdf.",
)
@force_option
@markdown_option
@json_option
@guarded
def inspect_cmd(
    model: Path,
    target: str,
    batch: int,
    top: int,
    input_shape: tuple[str, ...],
    budget: str | None,
    allow_over_budget: bool,
    plot_memory: Path | None,
    force: bool,
    markdown: bool,
    as_json: bool,
) -> None:
    """Inspect MODEL: parameters, size, GFLOPs, projected latency, memory plan, fit verdict.

    The latency is a roofline projection per node (FLOPs at the target's peak for the node's
    precision vs bytes at its bandwidth, plus a dispatch overhead); the activation arena comes
    from a greedy-by-size offset plan. The verdict judges two moments against the target's
    memory budget, or the --budget slice of it: load (weights as the execution provider holds
    them) and first run (+ inputs + activations as the provider's allocator holds them: the
    DirectML bucketized pool, ORT's BFC arena on CPU/CUDA). A model that does not fit makes the
    command exit with status 3 (unless --allow-over-budget). On a DirectML target (xbox-*) the
    DirectML pre-flight lists the nodes DirectML would not run (CPU fallbacks, from ONNX
    Runtime's DirectML operator table), whether DirectML graph capture is possible, and the
    dynamic dims to pin.

    Exit status: 0 when the model fits (or with --allow-over-budget), 3 when it does NOT FIT
    (the verdict names the next step, e.g. "INT8 would need 12.8 MiB"), 2 for a usage error.

    \b
    Examples:
      onnxfit inspect resnet18.onnx
      onnxfit inspect resnet18.onnx --target cpu --batch 8 --top 5
      onnxfit inspect detector.onnx --input-shape images=1x3x640x640 --json
      onnxfit inspect yolo.onnx --plot-memory yolo-memory.png
      onnxfit inspect net.onnx --target xbox-series-s --budget 256MB
    """
    from onnxfit.analysis.inspect import inspect
    from onnxfit.targets import get_target

    if batch <= 0:
        raise InputError(f"--batch must be a positive integer, got {batch}", hint="--batch 1")
    if top < 0:
        raise InputError(f"--top must be >= 0, got {top}", hint="--top 10")
    if plot_memory is not None and plot_memory.suffix.lower() not in _PLOT_SUFFIXES:
        raise InputError(
            f"--plot-memory {plot_memory}: unsupported image type",
            hint=f"give a file ending in {', '.join(_PLOT_SUFFIXES)}",
        )
    claim_outputs({"--plot-memory": plot_memory}, [model], force=force)
    shapes = parse_shapes(input_shape)
    tgt = get_target(target)
    with progress() as bar:
        bar.add_task(f"inspecting {model.name}", total=None)
        result = inspect(model, target=tgt, batch=batch, input_shapes=shapes or None, budget=budget)
    if plot_memory is not None:
        from onnxfit.report.memory import plot_memory_plan

        plot_memory.parent.mkdir(parents=True, exist_ok=True)
        plot_memory_plan(result.memory, plot_memory)
    from onnxfit.report.inspect import render_inspect, to_markdown

    print_result(
        result,
        as_json=as_json,
        markdown=markdown,
        to_markdown=lambda: to_markdown(result, top=top),
        render=lambda: render_inspect(result, top=top),
    )
    if plot_memory is not None and not as_json:
        console.print(f"memory plan drawn to {plot_memory}")
    if not result.fits and not allow_over_budget:
        import dataclasses

        exit_over_budget(dataclasses.replace(result.projection, target_arg=target))
