"""``onnxfit optimize``: verified FP16 / INT8 / fusion passes, chosen per target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from onnxfit.cli._common import (
    allow_over_budget_option,
    budget_option,
    check_report_paths,
    err_console,
    guarded,
    input_shape_option,
    json_option,
    markdown_option,
    parse_shapes,
    plot_option,
    print_result,
    progress,
    target_option,
)


@click.command("optimize")
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(path_type=Path),
    help="Optimized model file; OUT.report.json and OUT.deploy.json go beside it.",
)
@target_option()
@click.option(
    "--precision",
    type=click.Choice(["auto", "fp32", "fp16", "int8"]),
    default="auto",
    show_default=True,
    help="auto: FP16 for GPUs (xbox-*, cuda), INT8 for CPUs with VNNI, else FP32.",
)
@click.option(
    "--calibrate",
    type=click.Path(path_type=Path),
    help="Image folder or .npy/.npz inputs: INT8 calibration, FP16 ranges, verification.",
)
@click.option(
    "--eval",
    "eval_dir",
    type=click.Path(path_type=Path),
    help="Labelled folder (labels.tsv, or YOLO images/ + labels/): budget on the top-1 or "
    "mAP@0.5 drop.",
)
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=1.0,
    show_default=True,
    metavar="PTS",
    help="Budget in points; over it, the worst layers stay in higher precision and it retries.",
)
@click.option("--passes", help="Comma-separated pass list replacing the default pipeline.")
@click.option(
    "--preset", help="Image preprocessing preset (imagenet, yolox, yolov3-tiny, darknet)."
)
@click.option(
    "--calib-count",
    type=int,
    default=100,
    show_default=True,
    metavar="N",
    help="Calibration images used at most.",
)
@click.option("--eval-count", type=int, metavar="N", help="Evaluation images used at most.")
@click.option(
    "--method",
    type=click.Choice(["minmax", "entropy", "percentile"]),
    default="minmax",
    show_default=True,
    help="INT8 calibration method.",
)
@click.option(
    "--max-rounds",
    type=int,
    default=8,
    show_default=True,
    help="Back-off rounds at most after the first (best round, then bisection).",
)
@click.option(
    "--max-kept-share",
    type=float,
    default=0.25,
    show_default=True,
    metavar="F",
    help="Back-off keeps at most this share of Conv/Gemm/MatMul nodes in higher precision.",
)
@click.option(
    "--measure-runs",
    type=int,
    default=20,
    show_default=True,
    metavar="N",
    help="Timed runs for the measured latency on this host (0: skip).",
)
@click.option(
    "--prune",
    metavar="S|auto[:MAX]",
    help="Unstructured pruning to exactly sparsity S (0-1), one-shot (see --prune-method), "
    "or refused with its accuracy cost; auto: the budget picks per-layer ratios (up to 0.9, "
    "or MAX). Stored compactly at >= 0.7.",
)
@click.option(
    "--prune-scope",
    type=click.Choice(["global", "layer"]),
    default="global",
    show_default=True,
    help="--prune: one threshold over all layers (capped per layer) or S in every layer.",
)
@click.option(
    "--prune-channels",
    metavar="R|auto[:MAX]",
    help="Remove exactly ratio R of the prunable Conv output channels (smaller dense model), "
    "one-shot, or refuse; auto: the budget picks per-layer ratios (up to 0.5, or MAX).",
)
@click.option(
    "--prune-method",
    type=click.Choice(["auto", "reconstruct", "magnitude"]),
    default="auto",
    show_default=True,
    help="--prune: reconstruct = layer-wise OBS weight updates on the calibration images "
    "(at most 128), magnitude = zero the smallest weights; auto = reconstruct when real "
    "images are given (--calibrate / --eval), else magnitude.",
)
@click.option(
    "--prune-channels-method",
    type=click.Choice(["auto", "reconstruct", "magnitude"]),
    default="auto",
    show_default=True,
    help="--prune-channels: reconstruct = choose channels by their effect on the next layer "
    "and refit it by least squares; magnitude = filter norms (with mean compensation when "
    "images are given); auto = reconstruct with real images, else magnitude.",
)
@click.option(
    "--channel-multiple",
    default="8",
    show_default=True,
    metavar="N|wave",
    help="--prune-channels: kept channel counts are rounded to multiples of N (1: exact; "
    "wave: the target's GPU wave size, 32 on the Xbox Series).",
)
@click.option(
    "--search-channels",
    metavar="R1,R2",
    help="The candidate search also tries these channel-pruning ratios (e.g. 0.125,0.25) with "
    "the target's preferred precision; each costs a full build and verification.",
)
@click.option(
    "--no-search",
    is_flag=True,
    help="With --precision auto, take the target's preferred precision instead of trying "
    "each candidate (INT8 / FP32 on CPUs) and keeping the fastest that fits and passes.",
)
@input_shape_option(
    "Full shape of an input with dynamic dims (repeatable): synthetic inputs and the analysis "
    "use it; the written model keeps its dynamic dims."
)
@budget_option
@allow_over_budget_option
@click.option("--force", is_flag=True, help="Overwrite OUT and its sidecars (never the input).")
@plot_option
@markdown_option
@json_option
@guarded
def optimize(
    model: Path,
    output: Path,
    target: str,
    precision: str,
    calibrate: Path | None,
    eval_dir: Path | None,
    max_accuracy_drop: float,
    passes: str | None,
    preset: str | None,
    calib_count: int,
    eval_count: int | None,
    method: str,
    max_rounds: int,
    max_kept_share: float,
    measure_runs: int,
    prune: str | None,
    prune_scope: str,
    prune_channels: str | None,
    prune_method: str,
    prune_channels_method: str,
    channel_multiple: str,
    search_channels: str | None,
    no_search: bool,
    input_shape: tuple[str, ...],
    budget: str | None,
    force: bool,
    allow_over_budget: bool,
    plot: Path | None,
    markdown: bool,
    as_json: bool,
) -> None:
    """Optimize MODEL for a target, verify it against the original, and write OUT.

    The plan (precision and passes) is printed first. The optimized model is compared with the
    original on --eval data (accuracy), else --calibrate data (top-1 / top-box agreement), else
    seeded synthetic inputs (worst cosine >= 1 - PTS/100; the report says so). If it loses
    more than --max-accuracy-drop, the layers hurting most stay in higher precision and it
    retries; if no round is good enough, it stops with an error and writes nothing.

    Writes OUT (atomically; never over the input, nor over an existing file without --force),
    OUT.report.json (plan, pass stats, before/after, verification, blocked layers, data used)
    and OUT.deploy.json (the session settings the target's runtime must use, the memory verdict
    and, for DirectML targets, the DirectML pre-flight), where OUT.onnx gives OUT.report.json.

    The optimized model is judged against the target's memory budget or the --budget slice of
    it, at load and at its first run (see `onnxfit inspect --help`); when it does not fit the
    files are still written and the command exits with status 3 (0 with --allow-over-budget).

    Exit status: 0 written; 2 a usage error or no round met the accuracy budget (nothing
    written); 3 the optimized model does NOT FIT the target's memory budget (nothing written;
    the table and the next step are printed; --allow-over-budget writes it and exits 0).

    \b
    Examples:
      onnxfit optimize resnet18.onnx -o resnet18-xbox.onnx --target xbox-series-s
      onnxfit optimize resnet18.onnx -o r18-int8.onnx --target cpu --calibrate images/
      onnxfit optimize yolo.onnx -o yolo-cpu.onnx --target cpu --eval coco/ --plot cands.png
      onnxfit optimize yolo.onnx -o y.onnx --target cpu --eval coco/ --search-channels 0.125,0.25
      onnxfit optimize net.onnx -o net-fp16.onnx --precision fp16 --eval imagenet-sample/
      onnxfit optimize int8.onnx -o fp16.onnx --target xbox-series-s   (dequantize -> fp16)
      onnxfit optimize net.onnx -o net-clean.onnx --passes cleanup,fold-batchnorm --json
      onnxfit optimize r18.onnx -o r18-small.onnx --prune-channels 0.3 --eval imagenet-sample/
      onnxfit optimize yolo.onnx -o yolo-tiny.onnx --precision fp16 --prune auto:0.7
      onnxfit optimize yolo.onnx -o y50.onnx --precision fp16 --prune 0.5 --eval coco-sample/
      onnxfit optimize net.onnx -o net-xbox.onnx --target xbox-series-s --budget 256MB
      onnxfit optimize ocr-det.onnx -o det-fp16.onnx --precision fp16 --input-shape x=1x3x640x640
    """
    from onnxfit.analysis.budget import parse_size
    from onnxfit.errors import DoesNotFitError
    from onnxfit.optimizer.options import OptimizeOptions
    from onnxfit.optimizer.plan import build_plan
    from onnxfit.optimizer.run import check_output, searches
    from onnxfit.optimizer.run import optimize as run_optimize
    from onnxfit.report.optimize import render_plan
    from onnxfit.targets import get_target

    if budget is not None:
        parse_size(budget)  # a bad size fails before any work
    values: dict[str, Any] = {
        "precision": precision,
        "calibrate": calibrate,
        "eval": eval_dir,
        "max_accuracy_drop": max_accuracy_drop,
        "passes": passes,
        "preset": preset,
        "calib_count": calib_count,
        "eval_count": eval_count,
        "method": method,
        "max_rounds": max_rounds,
        "max_kept_share": max_kept_share,
        "measure_runs": measure_runs,
        "prune": prune,
        "prune_scope": prune_scope,
        "prune_channels": prune_channels,
        "prune_method": prune_method,
        "prune_channels_method": prune_channels_method,
        "channel_multiple": _channel_multiple(channel_multiple, target),
        "search": not no_search,
        "search_channels": search_channels,
        "input_shapes": parse_shapes(input_shape) or None,
    }
    opts = OptimizeOptions.build(**values)
    tgt = get_target(target)
    data_dirs = tuple(Path(d) for d in (calibrate, eval_dir) if d)
    check_output(model, output, force=force, inputs=data_dirs)
    check_report_paths(plot, None, inputs=[model, *data_dirs], force=force)
    from onnxfit import io

    loaded = io.load(model)
    the_plan = build_plan(loaded, tgt, opts)
    searching = searches(opts)
    if not as_json:
        if searching:
            from onnxfit.optimizer.plan import model_precision
            from onnxfit.optimizer.search import candidate_precisions

            tried = candidate_precisions(tgt, model_precision(loaded))
            err_console.print(
                f"candidate search on {tgt.name}: " + "; ".join(f"{p} ({why})" for p, why in tried)
            )
        err_console.print(render_plan(the_plan))
    with progress(not as_json) as bar:
        task = bar.add_task("optimizing", total=None)

        def on_progress(label: str, done: int, total: int | None) -> None:
            bar.update(task, description=label, completed=done, total=total)

        try:
            result = run_optimize(
                model,
                output,
                target=target,
                force=force,
                allow_over_budget=allow_over_budget,
                progress=on_progress,
                plan=None if searching else the_plan,
                budget=budget,
                **values,
            )
        except DoesNotFitError as exc:
            if exc.result is not None:  # show what was measured, then the error (exit 3)
                bar.stop()
                _show(exc.result, as_json=as_json, markdown=markdown)
                _plot(exc.result, plot, as_json=as_json)
            raise
    _show(result, as_json=as_json, markdown=markdown)
    _plot(result, plot, as_json=as_json)


def _plot(result: Any, plot: Path | None, *, as_json: bool) -> None:
    """``--plot``: the candidate table as a figure (speed vs the accuracy measure)."""
    if plot is None:
        return
    from onnxfit.report.figures import write_plots
    from onnxfit.report.pareto import optimize_plots

    written = write_plots(optimize_plots(result), plot)
    if not as_json:
        err_console.print("candidates plotted to " + ", ".join(map(str, written)))


def _show(result: Any, *, as_json: bool, markdown: bool) -> None:
    from onnxfit.report.optimize import render_optimize, to_markdown

    print_result(
        result,
        as_json=as_json,
        markdown=markdown,
        to_markdown=lambda: to_markdown(result),
        render=lambda: render_optimize(result),
    )


def _channel_multiple(text: str, target: str) -> int:
    """``--channel-multiple``: an integer, or ``wave`` (the target's wave size)."""
    from onnxfit.errors import InputError
    from onnxfit.targets import get_target

    if text.strip().lower() == "wave":
        wave = get_target(target).wave_size
        if wave <= 0:
            raise InputError(
                f"--channel-multiple wave: target {target!r} names no GPU wave size",
                hint="give a number (8 is the default), or a GPU target such as xbox-series-s",
            )
        return wave
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"--channel-multiple {text!r}: give an integer >= 1 or 'wave'", hint="8"
        ) from None
