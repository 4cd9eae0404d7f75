"""``onnxfit zoo``: build a reference model (ResNet-18, Tiny-YOLOv3) as ONNX, or list them."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from onnxfit.cli._common import console, echo_json, guarded, json_option, progress
from onnxfit.errors import InputError
from onnxfit.report.common import fmt_count
from onnxfit.zoo import ZOO_SPECS, build_and_save, canonical_name


@click.command("zoo")
@click.argument("name", required=False)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--list", "list_only", is_flag=True, help="List the models (also without NAME).")
@json_option
@guarded
def zoo(
    name: str | None, output: Path | None, seed: int, force: bool, list_only: bool, as_json: bool
) -> None:
    """Build reference model NAME with seeded random (BN-calibrated) weights and save it.

    The layout is exact (torchvision ResNet-18, darknet yolov3-tiny.cfg), the weights are not
    pretrained: use the files to measure size, speed and memory, not accuracy.

    \b
    Examples:
      onnxfit zoo --list
      onnxfit zoo resnet18 -o resnet18.onnx
      onnxfit zoo yolov3-tiny -o yolo.onnx --seed 1 --force --json
    """
    if list_only or name is None:
        specs = list(ZOO_SPECS.values())
        if as_json:
            echo_json([s.to_dict() for s in specs])
            return
        table = Table(title="Zoo models")
        for col in ("name", "task", "input", "outputs", "parameters", "description"):
            table.add_column(col)
        for s in specs:
            outputs = ", ".join(f"{k} {list(v)}" for k, v in s.outputs.items())
            table.add_row(s.name, s.task, str(list(s.input_shape)), outputs,
                          fmt_count(s.parameters), s.description)  # fmt: skip
        console.print(table)
        return
    key = canonical_name(name)
    if output is None:
        raise InputError("no output file given", hint=f"add -o {key}.onnx")
    with progress() as bar:
        bar.add_task(f"building {key}", total=None)
        result = build_and_save(key, output, seed=seed, force=force)
    if as_json:
        echo_json(result.to_dict())
        return
    p = result.params
    console.print(f"[bold]{result.name}[/bold] (seed {result.seed}) -> {result.file.path}")
    console.print(
        f"parameters {fmt_count(p.parameters)}; BN running statistics "
        f"{fmt_count(p.bn_statistics)}; other constants {fmt_count(p.other)}"
    )
    console.print(f"file {fmt_count(result.file.bytes)} bytes ({result.file.mib:.2f} MiB)")
