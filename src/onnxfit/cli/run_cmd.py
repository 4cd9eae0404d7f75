"""``onnxfit run``: a model on image files and folders, one JSON line per image."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from onnxfit.cli._common import (
    claim_outputs,
    console,
    echo_json,
    err_console,
    force_option,
    guarded,
    json_option,
    progress,
    target_option,
)

PRESET_NAMES = ("imagenet", "yolox", "yolov3-tiny", "darknet")


def parse_batch(ctx: click.Context | None, param: Any, value: str) -> int | str:
    """``--batch``: a positive integer or ``auto``."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise click.BadParameter(f"{value!r} is not a positive integer or 'auto'")
    return n


def batch_option(f: Any) -> Any:
    return click.option(
        "--batch",
        "-b",
        default="8",
        show_default=True,
        callback=parse_batch,
        metavar="N|auto",
        help="Images per inference run; auto = measured on this host. A model whose batch is "
        "fixed at 1 runs image by image (N images are still prepared together).",
    )(f)


def model_options(f: Any) -> Any:
    """Options shared by run and eval: task, preset, batch, target, threads, workers."""
    options: list[Any] = [
        click.option(
            "--task",
            type=click.Choice(["classify", "detect"]),
            help="Task [default: from the model's outputs].",
        ),
        click.option(
            "--preset",
            type=click.Choice(PRESET_NAMES),
            help="Preprocessing [default: from the input shape and the task].",
        ),
        batch_option,
        target_option(default="cpu"),
        click.option(
            "--threads",
            type=int,
            help="Inference threads [default: half the cores when the CPU runs the model].",
        ),
        click.option(
            "--workers",
            type=int,
            help="Preprocessing threads [default: the other half; all worker cores on a GPU].",
        ),
    ]
    for opt in reversed(options):
        f = opt(f)
    return f


class ProgressHook:
    """``on_start`` / ``on_result`` callbacks that drive a rich progress bar with images/s."""

    def __init__(self, bar: Any, label: str) -> None:
        self.bar, self.label = bar, label
        self.task: Any = None
        self.t0 = 0.0
        self.done = 0

    def start(self, pipe: Any, total: int) -> None:
        self.task = self.bar.add_task(self.label, total=total)
        self.t0 = time.perf_counter()

    def step(self) -> None:
        self.done += 1
        dt = time.perf_counter() - self.t0
        rate = f"{self.label} {self.done / dt:6.1f} img/s" if dt > 0 else self.label
        self.bar.update(self.task, advance=1, description=rate)


@click.command("run")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@model_options
@click.option("--labels", type=click.Path(path_type=Path), help="Class names, one per line.")
@click.option("--top-k", "-k", type=int, default=5, show_default=True, help="Classes per image.")
@click.option(
    "--score-threshold", type=float, default=0.25, show_default=True, help="Detection score."
)
@click.option("--iou-threshold", type=float, default=0.45, show_default=True, help="NMS IoU.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON lines here (atomically) instead of stdout.",
)
@click.option(
    "--draw",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save each image with its boxes / top-1 label drawn into this folder.",
)
@force_option
@json_option
@guarded
def run(
    model: Path,
    inputs: tuple[Path, ...],
    task: str | None,
    preset: str | None,
    batch: int | str,
    target: str,
    threads: int | None,
    workers: int | None,
    labels: Path | None,
    top_k: int,
    score_threshold: float,
    iou_threshold: float,
    output: Path | None,
    draw: Path | None,
    force: bool,
    as_json: bool,
) -> None:
    """Run MODEL on image files and folders (folders recursed, sorted).

    One JSON line per image, in order: {"path", "width", "height", "top_k": [{"class", "name",
    "probability"}...]} for classifiers, {"path", ..., "boxes": [[x1, y1, x2, y2, score, class,
    name]...]} (original-image pixels) for detectors, {"path", "error"} for a file that cannot
    be used. The task and preprocessing come from the model unless --task / --preset say.
    Loading and preprocessing overlap with inference. Files that are not images, unreadable,
    corrupt or too large are counted and listed at the end (and in --json), never dropped.

    -o never writes over the model, an input image or the labels file, nor over an existing
    file without --force; --draw never over an input, and picks a free name (stem-1.jpg) for
    a file it did not write unless --force.

    Without -o the lines go to stdout and the summary to stderr; with --json and no -o, one
    JSON document (summary + results) goes to stdout.

    \b
    Examples:
      onnxfit run shufflenet-v2-12-qdq.onnx photos/ --labels synset.txt -o results.jsonl
      onnxfit run yolox_nano.onnx street.jpg --labels coco80_names.txt --draw drawn/
      onnxfit run model.onnx a.jpg b.png --task classify --preset imagenet --top-k 3
      onnxfit run yolov3-tiny.onnx images/ --batch auto --score-threshold 0.4 -o out.jsonl
    """
    from onnxfit.apps.pipeline import run_images
    from onnxfit.report.run import Drawer, JsonlWriter, render_run

    claim_outputs({"-o": output}, [model, *inputs, labels], force=force)
    stdout_lines = output is None and not as_json
    state: dict[str, Any] = {"writer": None, "drawer": None}
    with progress(not as_json) as bar:
        hook = ProgressHook(bar, "run")

        def on_start(pipe: Any, total: int) -> None:
            # created only once the model loaded and the inputs were found: an early error
            # leaves nothing behind
            if output is not None:
                state["writer"] = JsonlWriter(output)
            if draw is not None:
                state["drawer"] = Drawer(draw, force=force, inputs=(model, *inputs))
            hook.start(pipe, total)

        def on_result(res: Any) -> None:
            if state["writer"] is not None:
                state["writer"].write(res.to_dict())
            elif stdout_lines:
                click.echo(json.dumps(res.to_dict(), ensure_ascii=False))
            if state["drawer"] is not None:
                state["drawer"].draw(res)
            hook.step()

        try:
            result = run_images(
                model,
                inputs,
                task=task,
                preset=preset,
                labels=labels,
                batch=batch,  # type: ignore[arg-type]
                target=target,
                threads=threads,
                workers=workers,
                top_k=top_k,
                score_threshold=score_threshold,
                iou_threshold=iou_threshold,
                on_start=on_start,
                on_result=on_result,
                keep_results=as_json and output is None,
            )
        except BaseException:
            if state["writer"] is not None:
                state["writer"].abort()
            raise
    if state["writer"] is not None:
        state["writer"].commit()
    if as_json:
        d = result.to_dict(include_results=output is None)
        d["output"] = str(output) if output else None
        d["drawn"] = [str(p) for p in state["drawer"].written] if state["drawer"] else []
        echo_json(d)
        return
    shown = str(output) if output else None
    if draw is not None:
        shown = f"{shown or 'stdout'}; drawings in {draw}/"
    (err_console if stdout_lines else console).print(render_run(result, output=shown))
