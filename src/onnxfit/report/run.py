"""Rendering of ``onnxfit run`` and ``onnxfit eval``: summary tables, bad inputs, JSON lines
written atomically, and images with the predictions drawn on them (``--draw``).
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from PIL import ImageDraw, ImageFont
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from onnxfit import atomic
from onnxfit.apps.evaluation import EvalResult
from onnxfit.apps.results import BadInput, ImageResult, PipelineStats, RunResult, count_kinds

__all__ = ["Drawer", "JsonlWriter", "bad_table", "render_eval", "render_run"]

#: bad inputs listed one by one in a table; the rest are counted (all of them are in --json)
SHOW_BAD = 20


def _rate(n: int, seconds: float) -> str:
    return f"{n / seconds:.1f}" if seconds > 0 else "-"


def _stage_rows(stats: PipelineStats) -> list[tuple[str, str]]:
    n = stats.images - stats.failed
    return [
        ("wall time", f"{stats.wall_s:.2f} s ({_rate(stats.images, stats.wall_s)} images/s)"),
        (
            "preprocessing (busy, per worker)",
            f"{stats.preprocess_s:.2f} s ({_rate(n, stats.preprocess_s)}/s)",
        ),
        ("inference (busy)", f"{stats.inference_s:.2f} s ({_rate(n, stats.inference_s)}/s)"),
        ("post-processing", f"{stats.postprocess_s:.2f} s"),
        ("inference waited for images", f"{stats.infer_wait_s:.2f} s"),
    ]


def _common_folder(paths: Sequence[str]) -> str | None:
    """The deepest folder holding every path (None when they share none, e.g. mixed drives)."""
    try:
        root = os.path.commonpath([os.path.dirname(p) or "." for p in paths])
    except ValueError:
        return None
    return root if root not in ("", ".") else None


def bad_table(bad: Sequence[BadInput], *, limit: int = SHOW_BAD) -> RenderableType:
    """The bad inputs: counts by kind, then the first ``limit`` with path and reason.

    Paths are shown relative to the folder that holds them all (named above the table) and are
    never wrapped, so that each can be copied whole whatever the terminal's width."""
    if not bad:
        return Text("no bad inputs", style="green")
    counts = ", ".join(f"{n} {k}" for k, n in count_kinds(bad).items())
    root = _common_folder([b.path for b in bad])
    table = Table(title=f"{len(bad)} input(s) not used: {counts}", title_justify="left")
    table.add_column("kind", no_wrap=True)
    table.add_column("path" if root is None else "path (under the folder above)", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=1)
    for b in bad[:limit]:
        path = b.path if root is None else os.path.relpath(b.path, root)
        table.add_row(b.kind, path, b.reason)
    if len(bad) > limit:
        table.caption = f"... and {len(bad) - limit} more (all listed with --json)"
    if root is None:
        return table
    return Group(Text(f"in {root}{os.sep}", no_wrap=True, overflow="ignore"), table)


def render_run(result: RunResult, *, output: str | None = None) -> RenderableType:
    """Summary of a run: model, task, settings, counts, stage times, bad inputs."""
    info = result.info
    t = Table(show_header=False, title="onnxfit run", title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", result.model)
    t.add_row("task", f"{info.task} ({info.decoder}), {info.num_classes} classes")
    t.add_row("preprocessing", f"{info.preset.name} {info.preset.size[1]}x{info.preset.size[0]}")
    t.add_row(
        "batch",
        f"{result.batch} per run, prepared {result.chunk} at a time by {result.workers} worker(s)",
    )
    t.add_row("runs on", f"{result.provider} (target {result.target})")
    t.add_row("images", f"{result.ok} done, {result.stats.failed} unreadable, of {result.images}")
    for k, v in _stage_rows(result.stats):
        t.add_row(k, v)
    if output:
        t.add_row("results", output)
    return Group(t, bad_table(result.bad))


def render_eval(result: EvalResult) -> RenderableType:
    """Accuracy of an eval run, its settings, and the bad inputs."""
    t = Table(show_header=False, title="onnxfit eval", title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    t.add_row("model", result.model)
    t.add_row("dataset", f"{result.dataset} ({result.task})")
    t.add_row("preprocessing", result.info.preset.name)
    t.add_row("runs on", f"{result.provider}, batch {result.batch}")
    limit = f" (--limit {result.limit})" if result.limit else ""
    t.add_row("images evaluated", f"{result.evaluated}{limit}")
    if result.task == "classify":
        t.add_row("top-1", f"[bold]{100 * result.metrics['top1']:.2f} %[/]")
        t.add_row("top-5", f"{100 * result.metrics['top5']:.2f} %")
    else:
        det = result.detection
        t.add_row("mAP@0.5", f"[bold]{100 * result.metrics['map50']:.2f} %[/]")
        t.add_row("mAP@0.5:0.95", f"{100 * result.metrics['map50_95']:.2f} %")
        if det is not None:
            t.add_row(
                "counted",
                f"{det.classes_present} classes present, {det.ground_truth} boxes, "
                f"{det.detections} detections (score >= 0.01, NMS IoU 0.45)",
            )
    for k, v in _stage_rows(result.stats):
        t.add_row(k, v)
    return Group(t, bad_table(result.bad))


class JsonlWriter:
    """JSON lines streamed to ``<path>.onnxfit-PID.partial`` in the same folder, renamed to
    ``path`` by :meth:`commit` (after flush + fsync); :meth:`abort` removes the partial file. A
    crash or an interrupted run leaves ``path`` as it was; the next run removes a killed run's
    partial file (:func:`onnxfit.atomic.sweep_beside`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            from onnxfit.errors import InputError

            raise InputError(f"-o {self.path}: is a folder", hint="give a file name")
        self.partial = atomic.partial_path(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh: IO[str] | None = self.partial.open("w", encoding="utf-8")
        except OSError as exc:
            from onnxfit.errors import InputError

            raise InputError(f"cannot write {self.partial} ({exc.strerror})") from None
        self.lines = 0

    def write(self, record: dict[str, Any]) -> None:
        assert self._fh is not None
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.lines += 1

    def commit(self) -> Path:
        assert self._fh is not None
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        self._fh = None
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        with contextlib.suppress(FileNotFoundError):
            self.partial.unlink()


def _color(c: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (golden-ratio hue steps)."""
    r, g, b = colorsys.hsv_to_rgb((c * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


class Drawer:
    """Saves each image with its predictions drawn: boxes + ``name score`` labels (detection) or
    the top-1 ``name probability`` in a banner (classification). Files go to ``folder`` as
    ``<stem>.jpg`` (``<stem>-1.jpg``... when two inputs share a name, or when the name is taken
    by a file this run did not write: an existing file is overwritten only with ``force``, and
    one of the run's ``inputs`` never). Each file is written atomically."""

    def __init__(
        self,
        folder: str | os.PathLike[str],
        *,
        max_side: int = 1280,
        force: bool = False,
        inputs: tuple[str | os.PathLike[str], ...] = (),
    ) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            from onnxfit.errors import InputError

            raise InputError(f"--draw {self.folder}: not a folder")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_side = max_side
        self._used: set[str] = set()
        self.written: list[Path] = []
        self.force = force
        given = [Path(p) for p in inputs]
        self.inputs = {p.resolve() for p in given if p.is_file()}
        self.input_dirs = [p.resolve() for p in given if p.is_dir()]

    def _taken(self, path: Path) -> bool:
        """A name this drawer may not use: an input of the run, or (without force) any file."""
        if not path.exists():
            return False
        real = path.resolve()
        in_folder = any(real.is_relative_to(d) for d in self.input_dirs)
        return not self.force or real in self.inputs or in_folder

    def _target(self, path: str) -> Path:
        stem = Path(path).stem or "image"
        name, k = f"{stem}.jpg", 0
        while name in self._used or self._taken(self.folder / name):
            k += 1
            name = f"{stem}-{k}.jpg"
        self._used.add(name)
        return self.folder / name

    def draw(self, result: ImageResult) -> Path | None:
        """Draw one result (nothing for an image that could not be read); the file written."""
        if result.error is not None:
            return None
        from onnxfit.data.images import open_image

        im = open_image(result.path)
        scale = min(1.0, self.max_side / max(im.size))
        if scale < 1.0:
            im = im.resize((round(im.width * scale), round(im.height * scale)))
        canvas = ImageDraw.Draw(im)
        font = ImageFont.load_default(size=max(12, round(min(im.size) / 32)))
        if result.detections is not None:
            det = result.detections
            width = max(2, round(min(im.size) / 200))
            rows = list(zip(det.boxes, det.scores, det.classes.tolist(), strict=True))
            for box, score, c in reversed(rows):  # the best box's label ends on top
                x1, y1, x2, y2 = (float(v) * scale for v in box)
                col = _color(int(c))
                canvas.rectangle((x1, y1, x2, y2), outline=col, width=width)
                label = f"{result.name_of(int(c)) or c} {score:.2f}"
                _label(canvas, (x1, y1), label, col, font)
        elif result.classification is not None:
            c = result.classification
            name = result.name_of(c.indices[0]) or f"class {c.indices[0]}"
            _label(canvas, (0, 0), f"{name} {c.probabilities[0]:.2f}", (0, 0, 0), font, below=True)
        out = self._target(result.path)
        with atomic.atomic_open(out) as fh:
            im.convert("RGB").save(fh, format="JPEG", quality=90)
        self.written.append(out)
        return out


def _label(
    canvas: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    color: tuple[int, int, int],
    font: Any,
    *,
    below: bool = False,
) -> None:
    """``text`` on a filled box at ``xy`` (above the point, or below it when there is no room)."""
    left, top, right, bottom = canvas.textbbox((0, 0), text, font=font)
    w, h = right - left + 6, bottom - top + 4
    x, y = xy
    y0 = y if below or y - h < 0 else y - h
    canvas.rectangle((x, y0, x + w, y0 + h), fill=color)
    light = sum(color) > 382
    canvas.text(
        (x + 3 - left, y0 + 2 - top), text, fill=(0, 0, 0) if light else (255, 255, 255), font=font
    )
