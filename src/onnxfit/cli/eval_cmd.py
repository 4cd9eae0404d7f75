"""``onnxfit eval``: accuracy of a model on a labelled dataset (top-1/top-5 or mAP)."""

from __future__ import annotations

from pathlib import Path

import click

from onnxfit.cli._common import console, echo_json, guarded, json_option, progress
from onnxfit.cli.run_cmd import ProgressHook, model_options


@click.command("eval")
@click.argument("model", type=click.Path(path_type=Path))
@click.argument("dataset", type=click.Path(path_type=Path))
@model_options
@click.option("--limit", type=int, metavar="N", help="Evaluate the first N usable images only.")
@json_option
@guarded
def eval_cmd(
    model: Path,
    dataset: Path,
    task: str | None,
    preset: str | None,
    batch: int | str,
    target: str,
    threads: int | None,
    workers: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Accuracy of MODEL on DATASET.

    \b
    DATASET layouts:
      classification  a folder with labels.tsv (file, class_index columns) and the images;
                      class names from synset.txt there. Prints top-1 / top-5.
      detection       images/<split>/*.jpg + labels/<split>/*.txt (YOLO: class cx cy w h);
                      class names from *names*.txt. Prints mAP@0.5 and mAP@0.5:0.95
                      (score >= 0.01, per-class NMS IoU 0.45, all-point AP over the
                      classes present).

    Images without labels, labels without images, labels outside the model's classes and
    unreadable files are counted and listed (all of them with --json), never dropped silently.

    \b
    Examples:
      onnxfit eval shufflenet-v2-12-qdq.onnx ../shared/data/imagenet-sample
      onnxfit eval yolox_nano.onnx ../shared/data/coco-sample --json > coco.json
      onnxfit eval model.onnx my-set/ --limit 100 --batch auto --target cpu
    """
    from onnxfit.apps.evaluation import evaluate
    from onnxfit.report.run import render_eval

    with progress(not as_json) as bar:
        hook = ProgressHook(bar, "eval")
        result = evaluate(
            model,
            dataset,
            task=task,
            preset=preset,
            batch=batch,  # type: ignore[arg-type]
            target=target,
            threads=threads,
            workers=workers,
            limit=limit,
            on_start=hook.start,
            on_result=lambda _res: hook.step(),
        )
    if as_json:
        echo_json(result.to_dict())
    else:
        console.print(render_eval(result))
