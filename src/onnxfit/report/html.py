"""One self-contained HTML page: tables and plots (PNG inlined as base64), no external files.

:class:`HtmlPage` collects headings, notes, tables (:class:`onnxfit.report.bench.Rows`) and
images; :meth:`HtmlPage.write` writes it atomically. :func:`bench_page` and
:func:`compare_page` assemble the pages of ``onnxfit bench --html`` and ``compare --html``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from onnxfit import __version__
from onnxfit.atomic import write_text
from onnxfit.errors import InputError
from onnxfit.report.bench import (
    Rows,
    bench_tables,
    compare_rows,
    machine_rows,
)
from onnxfit.report.figures import Plot

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;
max-width:1400px}
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:13px;margin:8px 0}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right;white-space:nowrap}
th{background:#f3f3f3;white-space:normal;vertical-align:bottom}td:first-child,th:first-child{text-align:left}
tr:nth-child(even) td{background:#fafafa}
caption{caption-side:bottom;text-align:left;font-size:12px;color:#555;padding-top:4px}
figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}.note{color:#8a5a00}
.wrap{overflow-x:auto}
"""


class HtmlPage:
    """A page built piece by piece; :meth:`render` gives the HTML text."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._parts: list[str] = []

    def heading(self, text: str) -> None:
        self._parts.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, *, cls: str | None = None) -> None:
        attr = f' class="{cls}"' if cls else ""
        self._parts.append(f"<p{attr}>{html.escape(text)}</p>")

    def notes(self, notes: Sequence[str]) -> None:
        for n in notes:
            self.text(f"note: {n}", cls="note")

    def table(self, t: Rows, *, title: bool = True) -> None:
        head = "".join(f"<th>{html.escape(h)}</th>" for h in t.headers)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in t.rows
        )
        cap = f"<caption>{html.escape(t.caption)}</caption>" if t.caption else ""
        if title:
            self.heading(t.title)
        self._parts.append(
            f'<div class="wrap"><table>{cap}<thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>"
        )

    def image(self, png: bytes, *, caption: str = "") -> None:
        data = base64.b64encode(png).decode("ascii")
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self._parts.append(
            f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"{cap}</figure>"
        )

    def plots(self, plots: Sequence[Plot]) -> None:
        for p in plots:
            self.image(p.png, caption=p.caption)

    def render(self) -> str:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(self.title)}</h1>"
            f"<p>onnxfit {__version__}, {stamp}</p>" + "\n".join(self._parts) + "</body></html>\n"
        )

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write the page atomically (temporary file in the same folder, then rename)."""
        out = Path(path)
        if out.is_dir():
            raise InputError(f"--html {out}: is a folder", hint="give a file name ending in .html")
        if not out.parent.is_dir():
            raise InputError(f"folder {str(out.parent)!r} does not exist", hint="create it first")
        write_text(out, self.render())
        return out


def check_html_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it ends in .html/.htm and its folder exists, else InputError (before work)."""
    out = Path(path)
    if out.suffix.lower() not in (".html", ".htm"):
        raise InputError(f"--html {out}: give a file ending in .html")
    if not out.parent.is_dir():
        raise InputError(f"folder {str(out.parent)!r} does not exist", hint="create it first")
    return out


def bench_page(result: Any, plots: Sequence[Plot] = (), *, top: int = 15) -> HtmlPage:
    """The bench page: result tables, notes, plots, machine."""
    page = HtmlPage(f"onnxfit bench: {Path(result.model).name}")
    for t in bench_tables(result, top=top):
        page.table(t)
    page.notes(result.notes)
    if plots:
        page.heading("plots")
        page.plots(plots)
    page.table(machine_rows(result.machine))
    return page


def compare_page(result: Any, plots: Sequence[Plot] = ()) -> HtmlPage:
    """The compare page: the before/after table, notes, plots, machine."""
    names = ", ".join(m.name for m in result.models)
    page = HtmlPage(f"onnxfit compare: {names}")
    page.table(compare_rows(result))
    page.notes(result.notes)
    if plots:
        page.heading("plots")
        page.plots(plots)
    page.table(machine_rows(result.machine))
    return page
