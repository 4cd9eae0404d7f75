"""Mutated image inputs for ``onnxfit run`` / ``eval``: one function per mutation class.

Each writes files (and links, FIFOs, odd names) into the case folder and returns a description
and the input arguments (paths, as ``bytes`` when a name is not valid UTF-8). ``eval_labels``
builds a labelled folder (``labels.tsv``) whose labels or images are broken.
"""

from __future__ import annotations

import io as pyio
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from fuzz.seeds import IMAGE_FORMATS, seed_images

Arg = str | bytes
ImageMutation = Callable[[Path, np.random.Generator], tuple[str, list[Arg]]]


def _pick(rng: np.random.Generator, items: list | tuple):  # type: ignore[no-untyped-def]
    return items[int(rng.integers(len(items)))]


def _seed(rng: np.random.Generator) -> tuple[str, bytes]:
    ext = _pick(rng, sorted(IMAGE_FORMATS))
    return ext, seed_images()[ext]


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png(w: int, h: int, body: bytes = b"\x00" * 16) -> bytes:
    """A PNG whose header claims ``w`` x ``h`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(body))
        + _png_chunk(b"IEND", b"")
    )


def _patch_jpeg_size(data: bytes, w: int, h: int) -> bytes:
    out = bytearray(data)
    i = out.find(b"\xff\xc0")
    if i < 0:
        return data
    out[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(out)


def truncated(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext, data = _seed(rng)
    cut = int(rng.integers(0, len(data)))
    return f"{ext} cut at {cut}", [str(_write(folder, f"t.{ext}", data[:cut]))]


def bitflip(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext, data = _seed(rng)
    buf = bytearray(data)
    k = int(rng.integers(1, 33))
    for pos in rng.integers(0, len(buf) * 8, size=k):
        buf[pos // 8] ^= 1 << (pos % 8)
    return f"{ext} {k} bits", [str(_write(folder, f"b.{ext}", bytes(buf)))]


def zero_byte(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext = _pick(rng, sorted(IMAGE_FORMATS))
    return ext, [str(_write(folder, f"z.{ext}", b""))]


def huge_dims(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    w, h = (
        int(v)
        for v in _pick(
            rng,
            [
                (100_000, 100_000),
                (2**31 - 1, 1),
                (65_500, 65_500),
                (1, 2**31 - 1),
                (0, 0),
                (10_000, 6_000),
            ],
        )
    )
    kind = _pick(rng, ["png", "jpg", "gif", "bmp"])
    if kind == "png":
        data = huge_png(w, h)
    elif kind == "jpg":
        data = _patch_jpeg_size(seed_images()["jpg"], min(w, 65535), min(h, 65535))
    elif kind == "gif":
        data = bytearray(seed_images()["gif"])
        data[6:10] = struct.pack("<HH", min(w, 65535), min(h, 65535))
        data = bytes(data)
    else:
        data = bytearray(seed_images()["bmp"])
        data[18:26] = struct.pack("<ii", min(w, 2**31 - 1), -min(h, 2**31 - 1))
        data = bytes(data)
    return f"{kind} {w}x{h}", [str(_write(folder, f"huge.{kind}", data))]


def bomb(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    """A PNG of zeros that really decodes to many pixels (just under / over the pixel limit)."""
    side = int(_pick(rng, [4000, 7000, 9000]))
    row = b"\x00" + b"\x00" * side  # filter byte + one grey row
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + b""
        + struct.pack(">I", len(body))
        + b"IDAT"
        + body
        + struct.pack(">I", zlib.crc32(b"IDAT" + body))
        + _png_chunk(b"IEND", b"")
    )
    return f"{side}x{side} grey PNG of zeros ({len(data)} bytes)", [
        str(_write(folder, "bomb.png", data))
    ]


def wrong_extension(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext, data = _seed(rng)
    choice = _pick(rng, ["other_format", "text", "onnx", "no_ext", "upper"])
    if choice == "other_format":
        other = _pick(rng, [e for e in IMAGE_FORMATS if e != ext])
        path = _write(folder, f"w.{other}", data)
    elif choice == "text":
        path = _write(folder, "w.jpg", b"this is not an image\n" * 3)
    elif choice == "onnx":
        path = _write(folder, "w.png", b"\x08\x08\x12\x07pytorch:\x0c")
    elif choice == "no_ext":
        path = _write(folder, "w", data)
    else:
        path = _write(folder, f"W.{ext.upper()}", data)
    return choice, [str(path) if rng.random() < 0.5 else str(folder)]


def bad_name(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    """File names that are not valid UTF-8 (passed as the folder or as the file itself)."""
    ext, data = _seed(rng)
    raw = _pick(rng, [b"\xff\xfe", b"caf\xe9", b"\x80abc", b"ok\xc3("]) + f".{ext}".encode()
    target = os.fsencode(folder) + b"/" + raw
    with open(target, "wb") as fh:
        fh.write(data)
    _write(folder, f"good.{ext}", data)
    as_file = rng.random() < 0.4
    return f"{raw!r} {'file' if as_file else 'folder'}", [target if as_file else str(folder)]


def links(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext, data = _seed(rng)
    _write(folder, f"real.{ext}", data)
    choice = _pick(rng, ["loop", "parent", "self_dir", "dangling", "file_link", "deep_parent"])
    if choice == "loop":
        os.symlink("b.jpg", folder / "a.jpg")
        os.symlink("a.jpg", folder / "b.jpg")
    elif choice == "parent":
        (folder / "sub").mkdir()
        os.symlink("..", folder / "sub" / "up")
    elif choice == "self_dir":
        os.symlink(".", folder / "here")
    elif choice == "dangling":
        os.symlink("missing.png", folder / "gone.png")
    elif choice == "file_link":
        os.symlink(f"real.{ext}", folder / f"alias.{ext}")
    else:
        deep = folder / "a" / "b" / "c"
        deep.mkdir(parents=True)
        os.symlink("../../..", deep / "top")
    args: list[Arg] = [str(folder)]
    if choice == "loop" and rng.random() < 0.5:
        args = [str(folder / "a.jpg")]
    return choice, args


def odd_files(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    ext, data = _seed(rng)
    _write(folder, f"ok.{ext}", data)
    choice = _pick(
        rng,
        ["fifo", "dir_named_jpg", "unreadable", "missing_arg", "empty_dir", "dot_file", "dup_arg"],
    )
    args: list[Arg] = [str(folder)]
    if choice == "fifo":
        os.mkfifo(folder / "pipe.jpg")
        if rng.random() < 0.5:
            args = [str(folder / "pipe.jpg")]
    elif choice == "dir_named_jpg":
        (folder / "d.jpg").mkdir()
    elif choice == "unreadable":
        path = _write(folder, f"locked.{ext}", data)
        path.chmod(0)
    elif choice == "missing_arg":
        args = [str(folder / "nope.jpg"), str(folder / f"ok.{ext}")]
    elif choice == "empty_dir":
        (folder / "empty").mkdir()
        args = [str(folder / "empty")]
    elif choice == "dot_file":
        _write(folder, f".hidden.{ext}", b"junk")
    else:
        args = [str(folder / f"ok.{ext}")] * 3
    return choice, args


def modes(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    """Valid images in unusual modes and shapes (CMYK, 16-bit, palette, 1 x N, animated...)."""
    choice = _pick(
        rng, ["CMYK", "I;16", "P", "1", "LA", "RGBA", "F", "tiny", "thin", "anim", "exif"]
    )
    px = (rng.integers(0, 255, (20, 24, 3))).astype(np.uint8)
    im = Image.fromarray(px)
    buf = pyio.BytesIO()
    name = "m.png"
    if choice in ("CMYK",):
        im.convert("CMYK").save(buf, "JPEG")
        name = "m.jpg"
    elif choice in ("I;16", "F"):
        im.convert("L").convert(choice).save(buf, "TIFF")
        name = "m.tif"
    elif choice in ("P", "1", "LA", "RGBA"):
        im.convert(choice).save(buf, "PNG")
    elif choice == "tiny":
        Image.new("RGB", (1, 1)).save(buf, "PNG")
    elif choice == "thin":
        Image.new("RGB", (1, 3000)).save(buf, "PNG")
    elif choice == "anim":
        frames = [im, im.rotate(90)]
        frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
        name = "m.gif"
    else:
        exif = Image.Exif()
        exif[0x0112] = int(rng.integers(0, 12))  # orientation, also invalid ones
        im.save(buf, "JPEG", exif=exif)
        name = "m.jpg"
    return choice, [str(_write(folder, name, buf.getvalue()))]


_LABEL_BREAKS = [
    "ok",
    "bad_class",
    "neg_class",
    "missing_file",
    "bad_utf8",
    "no_header",
    "empty",
    "dup",
    "extra_cols",
    "escape",
    "nan",
]


def eval_labels(folder: Path, rng: np.random.Generator) -> tuple[str, list[Arg]]:
    """A labelled classification folder with a broken labels.tsv and some broken images."""
    (folder / "images").mkdir()
    rows = ["file\tclass_index"]
    for i in range(3):
        ext, data = _seed(rng)
        if rng.random() < 0.3:
            data = data[: len(data) // 3]
        _write(folder / "images", f"{i}.{ext}", data)
        rows.append(f"images/{i}.{ext}\t{i % 3}")
    choice = _pick(rng, _LABEL_BREAKS)
    extra = {
        "bad_class": "images/0.jpg\t99999",
        "neg_class": "images/0.jpg\t-3",
        "missing_file": "images/none.png\t1",
        "dup": rows[-1],
        "extra_cols": "a\tb\tc\td",
        "escape": "../../etc/passwd\t0",
        "nan": f"{rows[1].split(chr(9))[0]}\tnan",
    }
    text = "\n".join(rows[1:] if choice == "no_header" else rows) + "\n"
    if choice in extra:
        text += extra[choice] + "\n"
    data = text.encode()
    if choice == "bad_utf8":
        data += b"images/\xff\xfe.png\t1\n"
    elif choice == "empty":
        data = b""
    (folder / "labels.tsv").write_bytes(data)
    return choice, [str(folder)]


#: Class -> (function, weight in the corpus).
CLASSES: dict[str, tuple[ImageMutation, int]] = {
    "img_truncated": (truncated, 6),
    "img_bitflip": (bitflip, 6),
    "img_zero_byte": (zero_byte, 2),
    "img_huge_dims": (huge_dims, 3),
    "img_bomb": (bomb, 1),
    "img_wrong_extension": (wrong_extension, 2),
    "img_bad_utf8_name": (bad_name, 2),
    "img_links": (links, 3),
    "img_odd_files": (odd_files, 3),
    "img_modes": (modes, 2),
    "eval_labels": (eval_labels, 3),
}
