"""What every command shares: error handling, common options, the console and progress bars."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from onnxfit.errors import OnnxfitError

F = TypeVar("F", bound=Callable[..., Any])
#: The longest ``error:`` line the CLI prints (the full text is in the log with -vv).
MAX_ERROR_CHARS = 500

#: Results and tables go to stdout; progress, warnings and errors to stderr.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def guarded(func: F) -> F:
    """Turn an :class:`OnnxfitError` into one ``error:`` line (+ ``hint:``) and exit status 2
    (or the error's ``exit_code``: 3 for a model that does not fit)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OnnxfitError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)
        except Exception as exc:
            if not type(exc).__module__.startswith("onnxruntime"):
                raise  # a bug in onnxfit: the traceback is wanted
            # a last net: ORT failures are translated where they happen; one that slips
            # through still gets one line
            from onnxfit.runtime.ort_errors import ort_failure

            _fail(ort_failure(exc, doing="while running the command"))

    return wrapper  # type: ignore[return-value]


def exit_over_budget(verdict: Any) -> None:
    """Say that the model does not fit (and the next step) on stderr; exit with status 3
    (:data:`onnxfit.analysis.fit.EXIT_DOES_NOT_FIT`)."""
    from onnxfit.analysis.fit import EXIT_DOES_NOT_FIT

    click.echo(f"error: {verdict.line()}", err=True)
    step = verdict.next_step()
    hint = f"{step}; " if step else ""
    click.echo(f"hint: {hint}or pass --allow-over-budget to accept it", err=True)
    sys.exit(EXIT_DOES_NOT_FIT)


def _fail(exc: OnnxfitError) -> None:
    """Print ``error: ...`` (one line, capped) and ``hint: ...`` on stderr; exit 2 (or the
    error's own ``exit_code``: 3 for a model that does not fit)."""
    message = " ".join(exc.message.split())
    if len(message) > MAX_ERROR_CHARS:
        logging.getLogger("onnxfit.cli").debug("full error: %s", exc.message)
        message = message[: MAX_ERROR_CHARS - 1] + "…"
    click.echo(f"error: {message}", err=True)
    if exc.hint:
        click.echo(f"hint: {' '.join(exc.hint.split())}", err=True)
    sys.exit(getattr(exc, "exit_code", 2))


def target_option(default: str = "xbox-series-s") -> Callable[[F], F]:
    """``--target T``: a built-in target name or a .toml file."""
    return click.option(
        "--target",
        "-t",
        default=default,
        show_default=True,
        help="Target: xbox-series-s, xbox-series-x, cpu, cuda, or a .toml file.",
    )


json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print the result as JSON instead of a table."
)
markdown_option = click.option("--markdown", is_flag=True, help="Print the result as Markdown.")
provider_option = click.option(
    "--provider", "-p", help="Execution provider(s), e.g. cpu, cuda, dml (comma list)."
)
threads_option = click.option(
    "--threads", type=int, help="Intra-op threads (default: the target's setting)."
)
io_binding_option = click.option(
    "--io-binding", is_flag=True, help="Bind inputs/outputs once (preallocated)."
)
budget_option = click.option(
    "--budget",
    metavar="SIZE",
    help="Memory the model may use (a slice of the target's), e.g. 256MB or 1.5GiB.",
)
allow_over_budget_option = click.option(
    "--allow-over-budget",
    is_flag=True,
    help="Exit 0 even when the model does not fit (default: exit 3).",
)
plot_option = click.option(
    "--plot", type=click.Path(dir_okay=False, path_type=Path), help="Plots (.png)."
)


def input_shape_option(help: str | None = None) -> Callable[[F], F]:
    """``--input-shape NAME=1x3x224x224`` (repeatable), read with :func:`parse_shapes`."""
    return click.option(
        "--input-shape", "input_shape", multiple=True, metavar="NAME=1x3x224x224", help=help
    )


def html_option(help: str) -> Callable[[F], F]:
    """``--html FILE``: one self-contained HTML page (parameter ``html_out``)."""
    return click.option(
        "--html", "html_out", type=click.Path(dir_okay=False, path_type=Path), help=help
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
        "webgpu": "WebGpuExecutionProvider",
    }
    return [short.get(p.strip().lower(), p.strip()) for p in text.split(",") if p.strip()]


def check_threads(threads: int | None) -> None:
    """``--threads`` must be >= 1 when given (InputError)."""
    from onnxfit.errors import InputError

    if threads is not None and threads < 1:
        raise InputError(f"--threads must be >= 1, got {threads}", hint="--threads 2")


force_option = click.option(
    "--force", is_flag=True, help="Overwrite output files that exist (never an input)."
)


def claim_outputs(
    outputs: dict[str, Path | None],
    inputs: Sequence[Path | None],
    *,
    force: bool,
) -> None:
    """The write guard of every command, before any work: each output (option -> path) may not
    be one of ``inputs`` (a model also protects its ``.data`` file; a folder protects the images
    in it), nor an existing file without ``force`` (:func:`onnxfit.atomic.guard_output`)."""
    from onnxfit import atomic
    from onnxfit.data.files import IMAGE_EXTENSIONS

    protected: list[Path | None] = list(inputs)
    protected += [p.with_name(p.name + ".data") for p in inputs if p is not None and p.is_file()]
    for option, path in outputs.items():
        if path is not None:
            atomic.guard_output(
                path,
                inputs=protected,
                force=force,
                option=option,
                protect_in_folders=lambda p: p.suffix.lower() in IMAGE_EXTENSIONS,
            )


def check_report_paths(
    plot: Path | None,
    html_out: Path | None,
    *,
    inputs: Sequence[Path | None] = (),
    force: bool = False,
) -> None:
    """Fail early (InputError) on a ``--plot`` / ``--html`` path that cannot be written, is an
    input, or exists without ``force`` (:func:`claim_outputs`)."""
    claim_outputs({"--plot": plot, "--html": html_out}, inputs, force=force)
    if plot is not None:
        from onnxfit.report.figures import check_plot_path

        check_plot_path(plot)
    if html_out is not None:
        from onnxfit.report.html import check_html_path

        check_html_path(html_out)


def write_reports(
    plot: Path | None,
    html_out: Path | None,
    make_plots: Callable[[], list[Any]],
    make_page: Callable[[list[Any]], Any],
) -> list[Path]:
    """Make the plots (only if ``--plot`` or ``--html`` asks), write them and the HTML page.

    Returns the files written, the plots first.
    """
    plots = make_plots() if plot is not None or html_out is not None else []
    written: list[Path] = []
    if plot is not None:
        from onnxfit.report.figures import write_plots

        written = write_plots(plots, plot)
    if html_out is not None:
        written.append(make_page(plots).write(html_out))
    return written


def model_figures(model: Any, *, batch: int, target: str, name: str = "") -> Any:
    """The analysis the report's model pictures need (report/ never analyses): the cost of
    ``model`` (an ``onnx_ir.Model``) on ``target`` and its memory plan at ``batch``; a part that
    cannot be computed (a shape left unresolved) is None and its picture is left out."""
    from onnxfit.analysis.cost import analyze_cost
    from onnxfit.analysis.memory import plan_memory
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.errors import InputError
    from onnxfit.report.plots import ModelFigures

    try:
        shaped = infer_shapes(model, batch=batch)
    except InputError:
        return ModelFigures(None, None, batch, target, name)
    try:
        cost = analyze_cost(shaped, target=target)
    except InputError:
        cost = None
    try:
        plan = plan_memory(shaped, batch=batch)
    except InputError:
        plan = None
    return ModelFigures(cost, plan, batch, target, name)


def print_result(
    result: Any,
    *,
    as_json: bool,
    markdown: bool,
    to_markdown: Callable[[], str],
    render: Callable[[], Any],
    written: Sequence[Path] = (),
) -> None:
    """``--json``, else ``--markdown``, else the rich table on stdout; then ``wrote F`` lines."""
    if as_json:
        echo_json(result.to_dict())
    elif markdown:
        click.echo(to_markdown())
    else:
        console.print(render())
    for p in written:
        click.echo(f"wrote {p}", err=True)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented JSON on stdout."""
    click.echo(json.dumps(data, indent=2, default=_json_default))


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


@contextmanager
def progress(enabled: bool = True, *, transient: bool = True) -> Iterator[Progress]:
    """A rich progress bar on stderr; disabled (but still usable) when ``enabled`` is False."""
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=transient,
        disable=not enabled or not err_console.is_terminal,
    )
    with bar:
        yield bar


def parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    """``name=1x3x224x224`` strings -> {name: [1, 3, 224, 224]}; bad ones raise InputError."""
    from onnxfit.errors import InputError

    out: dict[str, list[int]] = {}
    for item in values:
        name, sep, dims = item.partition("=")
        try:
            shape = [int(d) for d in dims.lower().split("x")] if sep else []
        except ValueError:
            shape = []
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InputError(
                f"bad --input-shape {item!r}", hint="write it as name=1x3x224x224 (positive dims)"
            )
        out[name] = shape
    return out


def progress_callback(bar: Any) -> Any:
    """An ``on_progress`` function driving one rich progress task."""
    task = bar.add_task("starting", total=None)

    def update(done: int, total: int | None, label: str) -> None:
        bar.update(task, completed=done, total=total, description=label)

    return update
