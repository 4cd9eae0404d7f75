"""``onnxfit zoo``: build a reference model (ResNet-18, Tiny-YOLOv3) as ONNX, or list them;
Tiny-YOLOv3 optionally with Darknet's trained weights (``--weights``)."""

from __future__ import annotations

from pathlib import Path

import click
from rich.table import Table

from onnxfit.cli._common import (
    claim_outputs,
    console,
    echo_json,
    guarded,
    json_option,
    progress,
)
from onnxfit.errors import InputError
from onnxfit.report.common import fmt_count
from onnxfit.zoo import ZOO_SPECS, build_and_save, canonical_name


@click.command("zoo")
@click.argument("name", required=False)
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="File to write."
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights.")
@click.option(
    "--weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet .weights file to load (yolov3-tiny only): trained instead of random weights.",
)
@click.option(
    "--cfg",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Its Darknet .cfg (checked to be the yolov3-tiny layout; gives classes and anchors).",
)
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--list", "list_only", is_flag=True, help="List the models (also without NAME).")
@json_option
@guarded
def zoo(
    name: str | None,
    output: Path | None,
    seed: int,
    weights: Path | None,
    cfg: Path | None,
    force: bool,
    list_only: bool,
    as_json: bool,
) -> None:
    """Build reference model NAME and save it.

    The layout is exact (torchvision ResNet-18, darknet yolov3-tiny.cfg). By default the
    weights are seeded random (BN-calibrated), not trained: use such files to measure size,
    speed and memory, not accuracy. yolov3-tiny can instead load Darknet's trained weights
    (--weights, the file must match the cfg byte for byte); the model then defaults to the
    darknet preprocessing preset in run and eval.

    \b
    Examples:
      onnxfit zoo --list
      onnxfit zoo resnet18 -o resnet18.onnx
      onnxfit zoo yolov3-tiny -o yolo.onnx --seed 1 --force --json
      onnxfit zoo yolov3-tiny --weights yolov3-tiny.weights --cfg yolov3-tiny.cfg -o y.onnx
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
    claim_outputs({"-o": output}, [weights, cfg], force=force)
    with progress() as bar:
        bar.add_task(f"building {key}", total=None)
        result = build_and_save(key, output, seed=seed, force=force, weights=weights, cfg=cfg)
    if as_json:
        echo_json(result.to_dict())
        return
    p = result.params
    what = (
        f"trained weights from {result.weights}"
        if result.weights is not None
        else f"seed {result.seed}, random weights: untrained"
    )
    console.print(f"[bold]{result.name}[/bold] ({what}) -> {result.file.path}")
    console.print(
        f"parameters {fmt_count(p.parameters)}; BN running statistics "
        f"{fmt_count(p.bn_statistics)}; other constants {fmt_count(p.other)}"
    )
    console.print(f"file {fmt_count(result.file.bytes)} bytes ({result.file.mib:.2f} MiB)")
