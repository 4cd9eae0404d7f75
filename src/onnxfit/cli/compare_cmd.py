"""``onnxfit compare``: models measured interleaved, and the before/after table."""

from __future__ import annotations

from pathlib import Path

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


@click.command("compare")
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=Path))
@target_option()
@click.option("--provider", "-p", help="Execution provider(s), e.g. cpu, cuda, dml (comma list).")
@click.option("--batch", "-b", default="1", show_default=True, help="Batch size.")
@click.option("--warmup", type=int, default=10, show_default=True, help="Untimed runs per model.")
@click.option("--rounds", type=int, default=10, show_default=True, help="Interleaved rounds.")
@click.option("--per-round", type=int, default=10, show_default=True, help="Runs per model/round.")
@click.option("--threads", type=int, help="Intra-op threads (default: the target's setting).")
@click.option("--io-binding", is_flag=True, help="Bind inputs/outputs once (preallocated).")
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
@click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=1x3x224x224")
@click.option("--in-process", is_flag=True, help="Measure in this process (no fresh children).")
@click.option("--no-pin", is_flag=True, help="Do not pin the children to the cores they use.")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), help="Plots (.png).")
@click.option(
    "--html",
    "html_out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="One self-contained HTML page with the table and plots.",
)
@click.option("--markdown", is_flag=True, help="Print the result as Markdown.")
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
    input_shape: tuple[str, ...],
    in_process: bool,
    no_pin: bool,
    plot: Path | None,
    html_out: Path | None,
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
    """
    from onnxfit import io
    from onnxfit.cli.bench_cmd import parse_providers, progress_callback
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
    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}", hint="--threads 2")
    if eval_limit is not None and eval_limit < 1:
        raise InputError(f"--eval-limit must be >= 1, got {eval_limit}")
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
    if plot is not None:
        from onnxfit.report.plots import check_plot_path

        check_plot_path(plot)
    if html_out is not None:
        from onnxfit.report.html import check_html_path

        check_html_path(html_out)
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
            on_progress=progress_callback(bar),
        )
    plots = []
    if plot is not None or html_out is not None:
        from onnxfit.report.plots import compare_plots

        plots = compare_plots(result, models=irs)
    written = []
    if plot is not None:
        from onnxfit.report.plots import write_plots

        written = write_plots(plots, plot)
    if html_out is not None:
        from onnxfit.report.html import compare_page

        written.append(compare_page(result, plots).write(html_out))
    if as_json:
        echo_json(result.to_dict())
    elif markdown:
        from onnxfit.report.bench import compare_markdown

        click.echo(compare_markdown(result))
    else:
        from onnxfit.report.bench import render_compare

        console.print(render_compare(result))
    for p in written:
        click.echo(f"wrote {p}", err=True)
