"""What every command shares: error handling, common options, the console and progress bars."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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

#: Results and tables go to stdout; progress, warnings and errors to stderr.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)


def guarded(func: F) -> F:
    """Turn an :class:`OnnxfitError` into one ``error:`` line (+ ``hint:``) and exit status 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except OnnxfitError as exc:
            click.echo(f"error: {exc.message}", err=True)
            if exc.hint:
                click.echo(f"hint: {exc.hint}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


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
