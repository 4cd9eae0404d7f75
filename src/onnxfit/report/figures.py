"""Figure plumbing shared by every picture of the report: a headless matplotlib figure, the
bound colours, checked and atomic writes (.png/.svg/.pdf), PNG bytes for HTML, and
:class:`Plot`, a named picture. No analysis and no measurement happens here.
"""

from __future__ import annotations

import io as _io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnxfit.atomic import atomic_open, write_bytes
from onnxfit.errors import InputError

_FORMATS = {".png": "png", ".svg": "svg", ".pdf": "pdf"}
BOUND_COLORS = {"compute": "tab:orange", "memory": "tab:blue", None: "0.6"}


def figure(w: float, h: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=110, layout="constrained")


def check_plot_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it ends in .png/.svg/.pdf and its folder exists, else InputError."""
    out = Path(path)
    if out.suffix.lower() not in _FORMATS:
        raise InputError(
            f"cannot write a plot to {out.name!r}", hint=f"use one of {', '.join(_FORMATS)}"
        )
    if not out.parent.is_dir():
        raise InputError(f"folder {str(out.parent)!r} does not exist", hint="create it first")
    return out


def save_figure(fig: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` to ``path`` (.png/.svg/.pdf) atomically; returns the path."""
    out = check_plot_path(path)
    with atomic_open(out) as f:
        fig.savefig(f, format=_FORMATS[out.suffix.lower()])
    return out


def png_bytes(fig: Any) -> bytes:
    """``fig`` as PNG bytes."""
    buf = _io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def sibling(path: str | os.PathLike[str], tag: str) -> Path:
    """``plots/x.png`` + ``ops`` -> ``plots/x-ops.png``."""
    p = Path(path)
    return p.with_name(f"{p.stem}-{tag}{p.suffix}")


@dataclass(frozen=True)
class Plot:
    """A named picture: ``tag`` (file-name suffix), caption, PNG bytes (and the figure)."""

    tag: str
    caption: str
    png: bytes
    figure: Any = None


def make_plot(tag: str, caption: str, fig: Any) -> Plot:
    return Plot(tag, caption, png_bytes(fig), fig)


def write_plots(plots: Sequence[Plot], path: str | os.PathLike[str]) -> list[Path]:
    """The first plot to ``path``, the others beside it as ``<stem>-<tag><suffix>``."""
    out = check_plot_path(path)
    written = []
    for i, p in enumerate(plots):
        dest = out if i == 0 else sibling(out, p.tag)
        if p.figure is not None:
            written.append(save_figure(p.figure, dest))
        elif dest.suffix.lower() == ".png":
            written.append(write_bytes(dest, p.png))
    return written
