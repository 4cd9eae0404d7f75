"""``onnxfit targets``: list the built-in target profiles (or show one, or a .toml file)."""

from __future__ import annotations

import click

from onnxfit.cli._common import console, echo_json, guarded, json_option
from onnxfit.report.targets import targets_table
from onnxfit.targets import builtin_targets, get_target


@click.command("targets")
@click.argument("name", required=False)
@json_option
@guarded
def targets(name: str | None, as_json: bool) -> None:
    """List the target profiles: peak throughput, bandwidth, memory budget, providers.

    \b
    Examples:
      onnxfit targets
      onnxfit targets xbox-series-s --json
      onnxfit targets my-console.toml
    """
    items = [get_target(name)] if name else builtin_targets()
    if as_json:
        echo_json([t.to_dict() for t in items])
    else:
        console.print(targets_table(items))
