"""The ``onnxfit`` command line: a click group whose commands live one per module.

Commands are imported lazily (``_COMMANDS`` maps a name to ``module:attribute``) so that
``onnxfit --help`` answers at once and one command's heavy imports never slow another.
Each command is thin: parse, call the API, render with :mod:`onnxfit.report`.
"""

from __future__ import annotations

import importlib
import logging
import signal
import threading

import click

from onnxfit import __version__

#: The only name -> command table. Keep it sorted by the order a user meets the commands.
_COMMANDS: dict[str, str] = {
    "targets": "onnxfit.cli.targets_cmd:targets",
    "zoo": "onnxfit.cli.zoo_cmd:zoo",
    "inspect": "onnxfit.cli.inspect_cmd:inspect_cmd",
    "optimize": "onnxfit.cli.optimize_cmd:optimize",
    "bench": "onnxfit.cli.bench_cmd:bench",
    "compare": "onnxfit.cli.compare_cmd:compare",
    "calibrate": "onnxfit.cli.calibrate_cmd:calibrate",
    "run": "onnxfit.cli.run_cmd:run",
    "eval": "onnxfit.cli.eval_cmd:eval_cmd",
}


class LazyGroup(click.Group):
    """A group that imports a command's module only when that command is used or listed."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module, attr = spec.split(":")
        cmd: click.Command = getattr(importlib.import_module(module), attr)
        return cmd


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM: unwind like Ctrl-C (temporary files removed, outputs left as they were)."""
    raise KeyboardInterrupt


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="onnxfit")
@click.option("-v", "--verbose", count=True, help="More logging (-v: INFO, -vv: DEBUG).")
def main(verbose: int) -> None:
    """onnxfit: make an ONNX model fit, and run fast, on a console GPU, a CUDA GPU or a CPU.

    \b
    Examples:
      onnxfit targets
      onnxfit zoo resnet18 -o resnet18.onnx
      onnxfit inspect resnet18.onnx --target xbox-series-s
    """
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from onnxfit import atomic

    # leftovers of runs killed with kill -9 (their process is gone); a SIGTERM unwinds like
    # Ctrl-C, so every temporary file and folder of this run is removed on the way out
    for leftover in atomic.sweep_temp():
        logging.getLogger("onnxfit.cli").info("removed leftover %s", leftover)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
