"""Random edits of any protobuf field: the mutation that knows nothing about ONNX.

:func:`mutate_fields` picks set fields anywhere in a message tree and gives each a hostile
value for its type: 0, -1, the type's extremes, NaN, an empty or 1,000-character string, a
truncated byte string; a repeated field loses, duplicates or clears its items; a message field
is cleared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from google.protobuf.descriptor import FieldDescriptor as FD
from google.protobuf.message import Message

_INTS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
    FD.TYPE_ENUM: (-(2**31), 2**31 - 1),
}


def _repeated(fd: FD) -> bool:
    flag = getattr(fd, "is_repeated", None)
    return bool(fd.label == FD.LABEL_REPEATED if flag is None else flag)


def _fields(msg: Message, out: list[tuple[Message, FD]]) -> None:
    for fd, value in msg.ListFields():
        out.append((msg, fd))
        if fd.type == FD.TYPE_MESSAGE:
            for item in value if _repeated(fd) else [value]:
                _fields(item, out)


def _scalar(fd: FD, old: Any, rng: np.random.Generator) -> Any:
    pick = int(rng.integers(6))
    if fd.type in _INTS:
        lo, hi = _INTS[fd.type]
        choices = [0, -1, 1, lo, hi, int(old) * 1000 + 1, int(rng.integers(-5, 70))]
        return min(hi, max(lo, choices[int(rng.integers(len(choices)))]))
    if fd.type in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
        return [float("nan"), float("inf"), -0.0, 1e30, -1.0, 0.0][pick]
    if fd.type == FD.TYPE_BOOL:
        return not old
    if fd.type == FD.TYPE_STRING:
        return ["", "x" * 1000, "../../etc/passwd", "\u202e\u0000", "y", str(old) * 2][pick]
    if fd.type == FD.TYPE_BYTES:
        data = bytes(old)
        return [b"", data[: len(data) // 2], data + b"\x00", b"\xff" * 7, data[1:], data][pick]
    return old


def _mutate_one(msg: Message, fd: FD, rng: np.random.Generator) -> str:
    name = f"{msg.DESCRIPTOR.name}.{fd.name}"
    if _repeated(fd):
        items = getattr(msg, fd.name)
        n = len(items)
        op = int(rng.integers(4)) if n else 0
        if op == 0 or n == 0:
            msg.ClearField(fd.name)
            return f"{name} cleared"
        i = int(rng.integers(n))
        if op == 1:
            del items[i]
            return f"{name}[{i}] deleted"
        if op == 2:
            if fd.type == FD.TYPE_MESSAGE:
                items.add().CopyFrom(items[i])
            else:
                items.append(items[i])
            return f"{name}[{i}] duplicated"
        if fd.type == FD.TYPE_MESSAGE:
            sub: list[tuple[Message, FD]] = []
            _fields(items[i], sub)
            if sub:
                m, f = sub[int(rng.integers(len(sub)))]
                return _mutate_one(m, f, rng)
            return f"{name}[{i}] left"
        items[i] = _scalar(fd, items[i], rng)
        return f"{name}[{i}] changed"
    if fd.type == FD.TYPE_MESSAGE:
        msg.ClearField(fd.name)
        return f"{name} cleared"
    setattr(msg, fd.name, _scalar(fd, getattr(msg, fd.name), rng))
    return f"{name} changed"


def mutate_fields(msg: Message, rng: np.random.Generator, count: int) -> list[str]:
    """Apply ``count`` random field edits to ``msg`` in place; return what each did."""
    done: list[str] = []
    for _ in range(count):
        fields: list[tuple[Message, FD]] = []
        _fields(msg, fields)
        if not fields:
            break
        m, fd = fields[int(rng.integers(len(fields)))]
        try:
            done.append(_mutate_one(m, fd, rng))
        except (ValueError, TypeError) as exc:  # a closed enum or a type protobuf refuses
            done.append(f"{m.DESCRIPTOR.name}.{fd.name} kept ({type(exc).__name__})")
    return done
