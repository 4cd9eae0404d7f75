"""``onnxfit compare``: models measured interleaved, and the before/after table."""

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


@click.command("compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@target_option()
@provider_option
@click.option("--batch", "-b", default="1", show_default=True, help="Batch size.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per model.")
@click.option("--rounds", type=int, default=10, show_default=True, help="Interleaved rounds.")
@click.option("--per-round", type=int, default=10, show_default=True, help="Runs per model/round.")
@threads_option
@io_binding_option
@click.option(
    "--runtime",
    default="onnxfit",
    show_default=True,
    help="onnxfit or ort (plain onnxruntime defaults); one, or a comma list, one per model.",
)
@click.option("--names", help="Comma list of names for the models (default: file names).")
@click.option(
    "--eval",
    "eval_data",
    type=click.Path(path_type=Path),
    help="Evaluation folder: labels.tsv (top-1/5) or images/ + labels/ (mAP).",
)
@click.option("--eval-limit", type=int, help="Use at most this many evaluation images.")
@click.option(
    "--layers",
    type=int,
    default=0,
    show_default=True,
    metavar="K",
    help="Also list, per model after the first, the K nodes adding the most error against it.",
)
@input_shape_option()
@click.option("--in-process", is_flag=True, help="Measure in this process (no fresh children).")
@click.option("--no-pin", is_flag=True, help="Do not pin the children to the cores they use.")
@plot_option
@force_option
@html_option("One self-contained HTML page with the table and plots.")
@markdown_option
@json_option
@guarded
def compare(
    models: tuple[Path, ...],
    target: str,
    provider: str | None,
    batch: str,
    warmup: int,
    rounds: int,
    per_round: int,
    threads: int | None,
    io_binding: bool,
    runtime: str,
    names: str | None,
    eval_data: Path | None,
    eval_limit: int | None,
    layers: int,
    input_shape: tuple[str, ...],
    in_process: bool,
    no_pin: bool,
    plot: Path | None,
    html_out: Path | None,
    force: bool,
    markdown: bool,
    as_json: bool,
) -> None:
    """Compare MODELS (e.g. the original and its optimized versions): file size, parameters,
    runtime memory (planned and measured), latency, throughput and, with --eval, accuracy,
    each with its ratio against the first model.

    The models run interleaved (A x k, B x k, A x k, ...), each in its own fresh process, so
    machine noise hits them alike and memory figures do not mix.

    \b
    Examples:
      onnxfit compare resnet18.onnx resnet18-fp16.onnx resnet18-int8.onnx --target cpu
      onnxfit compare a.onnx b.onnx --eval ../shared/data/imagenet-sample --html cmp.html
      onnxfit compare base.onnx opt.onnx --runtime ort,onnxfit --rounds 20 --json
      onnxfit compare fp32.onnx int8.onnx --layers 10   (nodes adding the most error)
    """
    from onnxfit import io
    from onnxfit.errors import InputError
    from onnxfit.profiling.bench import parse_batches
    from onnxfit.profiling.compare import compare as run_compare

    batches = parse_batches(batch)
    if len(batches) != 1:
        raise InputError(f"compare takes one batch size, given {batch!r}", hint="--batch 8")
    for opt, val in (("--rounds", rounds), ("--per-round", per_round)):
        if val < 1:
            raise InputError(f"{opt} must be >= 1, got {val}")
    if warmup < 0:
        raise InputError(f"--warmup must be >= 0, got {warmup}")
    check_threads(threads)
    if eval_limit is not None and eval_limit < 1:
        raise InputError(f"--eval-limit must be >= 1, got {eval_limit}")
    if layers < 0:
        raise InputError(f"--layers must be >= 0, got {layers}")
    runtimes = [r.strip() for r in runtime.split(",")]
    if len(runtimes) == 1:
        runtimes *= len(models)
    if len(runtimes) != len(models) or any(r not in ("onnxfit", "ort") for r in runtimes):
        raise InputError(
            f"--runtime {runtime!r}: give onnxfit or ort, once or once per model",
            hint="--runtime ort,onnxfit",
        )
    labels = [n.strip() for n in names.split(",")] if names else None
    if labels is not None and len(labels) != len(models):
        raise InputError(f"--names gives {len(labels)} names for {len(models)} models")
    check_report_paths(plot, html_out, inputs=[*models, eval_data], force=force)
    irs = [io.load(m) for m in models]  # a bad file fails here, before anything runs
    with progress() as bar:
        result = run_compare(
            models,
            target=target,
            providers=parse_providers(provider),
            batch=batches[0],
            warmup=warmup,
            rounds=rounds,
            per_round=per_round,
            threads=threads,
            io_binding=io_binding,
            isolated=not in_process,
            runtime=runtimes,
            names=labels,
            eval_data=eval_data,
            eval_limit=eval_limit,
            input_shapes=parse_shapes(input_shape) or None,
            pin=not no_pin,
            layers=layers,
            on_progress=progress_callback(bar),
        )
    from onnxfit.report.bench import compare_markdown, render_compare
    from onnxfit.report.html import compare_page
    from onnxfit.report.plots import compare_plots

    written = write_reports(
        plot,
        html_out,
        lambda: compare_plots(
            result,
            models=[
                model_figures(m, batch=result.batch, target=result.target, name=r.name)
                for m, r in zip(irs, result.models, strict=False)
            ],
        ),
        lambda plots: compare_page(result, plots),
    )
    print_result(
        result,
        as_json=as_json,
        markdown=markdown,
        to_markdown=lambda: compare_markdown(result),
        render=lambda: render_compare(result),
        written=written,
    )
