"""Find the image files in a folder, and say what was skipped and why."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxfit.errors import InputError

log = logging.getLogger(__name__)

#: File extensions :func:`list_images` accepts (lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif"})


@dataclass
class ImageScan:
    """What :func:`scan_images` found: the image files (sorted) and what it skipped, with why."""

    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": [str(p) for p in self.images],
            "skipped": [{"path": str(p), "reason": r} for p, r in self.skipped],
        }


def scan_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> ImageScan:
    """Image files in ``folder`` by extension (:data:`IMAGE_EXTENSIONS`, any case), sorted.

    Every other entry is listed in ``skipped`` with a reason (hidden, not an image extension,
    unreadable sub-folder, a link that loops or leads back to a folder already scanned: each
    folder is scanned once). A missing or unreadable folder raises :class:`InputError`.
    """
    root = Path(folder)
    if not root.exists():
        raise InputError(f"{root}: no such folder")
    if not root.is_dir():
        raise InputError(f"{root}: not a folder", hint="give a folder of images, or image files")
    scan = ImageScan()
    _scan(root, scan, recursive=recursive, top=True, seen=set())
    scan.images.sort()
    scan.skipped.sort()
    return scan


def _scan(
    folder: Path, scan: ImageScan, *, recursive: bool, top: bool, seen: set[tuple[int, int]]
) -> None:
    try:
        st = folder.stat()
        entries = list(os.scandir(folder))
    except OSError as exc:
        if top:
            raise InputError(f"{folder}: cannot list folder ({exc.strerror})") from None
        scan.skipped.append((folder, f"cannot list folder ({exc.strerror})"))
        return
    if (st.st_dev, st.st_ino) in seen:  # a link back to a folder on the way down (or seen)
        scan.skipped.append((folder, "link to a folder already scanned (not recursing)"))
        return
    seen.add((st.st_dev, st.st_ino))
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()
        except OSError as exc:  # a symlink loop
            scan.skipped.append((path, f"cannot open it ({exc.strerror})"))
            continue
        if is_dir:
            if recursive and not entry.name.startswith("."):
                _scan(path, scan, recursive=True, top=False, seen=seen)
            else:
                scan.skipped.append((path, "folder (not recursing)"))
        elif path.suffix.lower() in IMAGE_EXTENSIONS and not entry.name.startswith("."):
            scan.images.append(path)
        else:
            why = "hidden file" if entry.name.startswith(".") else "not an image extension"
            scan.skipped.append((path, why))


def list_images(folder: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Sorted image files in ``folder``; the entries it skips are logged (WARNING), never dropped
    silently. Use :func:`scan_images` to get them as data."""
    scan = scan_images(folder, recursive=recursive)
    if scan.skipped:
        shown = ", ".join(f"{p.name} ({r})" for p, r in scan.skipped[:5])
        more = f" and {len(scan.skipped) - 5} more" if len(scan.skipped) > 5 else ""
        log.warning(
            "%s: skipped %d non-image entries: %s%s", folder, len(scan.skipped), shown, more
        )
    return scan.images
