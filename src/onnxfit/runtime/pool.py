"""MemoryPool: one preallocated arena handing out aligned sub-buffers by offset.

The arena is allocated once (``capacity`` bytes); :meth:`MemoryPool.alloc` returns a
:class:`Block` ``(offset, size)`` inside it, never a fresh allocation. Freed blocks go back to a
free list kept sorted by offset, and adjacent free ranges are coalesced, so released space is
reused by later requests (best fit: the smallest free range that holds the aligned request).
:meth:`MemoryPool.reset` frees everything at once. A request that does not fit raises
:class:`~onnxfit.errors.BudgetExceededError` with the sizes — it never returns None.

Alignment: every block's offset is a multiple of its alignment (the pool's default, 256 bytes,
or the one asked for); alignments must be powers of two. Reservations are rounded up to a
multiple of the pool's default alignment, so ``in_use`` counts whole alignment units. The arena
base address is aligned to :data:`BASE_ALIGNMENT` (4096) on the host, so addresses are aligned
too for any alignment up to that (device allocators align to at least 256).

Arenas are pluggable (:class:`Arena`): :class:`HostArena` is a numpy ``uint8`` buffer (the CPU
case, with :meth:`MemoryPool.view` giving numpy arrays into it); :class:`OrtValueArena` is one
ONNX Runtime ``OrtValue`` of ``uint8`` on a provider's device (``"cuda"``, ``"dml"``; ``"cpu"``
works too and is what the tests use), whose sub-buffers are bound by address with
``IOBinding.bind_input / bind_output(..., buffer_ptr=pool.address(block))``.
"""

from __future__ import annotations

import bisect
import ctypes
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from onnxfit.errors import BudgetExceededError, InputError

__all__ = ["Arena", "Block", "HostArena", "MemoryPool", "OrtValueArena", "PoolStats"]

DEFAULT_ALIGNMENT = 256
BASE_ALIGNMENT = 4096


def _is_pow2(n: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and n > 0 and n & (n - 1) == 0


def align_up(n: int, alignment: int) -> int:
    """``n`` rounded up to a multiple of ``alignment`` (a power of two)."""
    return (n + alignment - 1) & ~(alignment - 1)


@dataclass(frozen=True)
class Block:
    """A sub-buffer: ``size`` bytes (as requested) at ``offset`` in the arena of one generation
    (a :meth:`MemoryPool.reset` starts a new generation and invalidates older blocks)."""

    offset: int
    size: int
    generation: int = 0


@dataclass(frozen=True)
class PoolStats:
    """Sizes in reserved bytes; ``fragmentation`` = 1 - largest free range / total free."""

    capacity: int
    in_use: int
    high_water: int
    free: int
    largest_free: int
    fragmentation: float
    blocks: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "in_use": self.in_use,
            "high_water": self.high_water,
            "free": self.free,
            "largest_free": self.largest_free,
            "fragmentation": round(self.fragmentation, 6),
            "blocks": self.blocks,
        }


class Arena(Protocol):
    """Backing memory of a pool: ``capacity`` bytes at ``address(0)`` on ``device``."""

    device: str
    capacity: int

    def address(self, offset: int) -> int: ...

    def host_bytes(self, offset: int, nbytes: int) -> np.ndarray | None:
        """A uint8 numpy view of the range, or None when the memory is not host-visible."""
        ...

    def release(self) -> None: ...


class HostArena:
    """A numpy ``uint8`` arena whose first byte is aligned to :data:`BASE_ALIGNMENT`."""

    device = "cpu"

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        raw = np.zeros(capacity + BASE_ALIGNMENT, dtype=np.uint8)
        skip = (-raw.ctypes.data) % BASE_ALIGNMENT
        self._raw: np.ndarray | None = raw
        self._buf: np.ndarray | None = raw[skip : skip + capacity]
        self._base = raw.ctypes.data + skip

    def address(self, offset: int) -> int:
        return self._base + offset

    def host_bytes(self, offset: int, nbytes: int) -> np.ndarray | None:
        if self._buf is None:
            raise InputError("the pool's arena was released")
        return self._buf[offset : offset + nbytes]

    def release(self) -> None:
        self._buf = self._raw = None


class OrtValueArena:
    """One ``uint8`` OrtValue of ``capacity`` bytes on an ONNX Runtime device.

    ``device`` is ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"dml"`` ...; creating it on a device
    the installed onnxruntime lacks raises :class:`InputError`. Only ``"cpu"`` memory has a host
    view; device memory is reached by address (IO binding ``buffer_ptr``).
    """

    def __init__(self, capacity: int, *, device: str = "cpu") -> None:
        import onnxruntime as ort

        kind, _, index = device.partition(":")
        self.device = device
        self.capacity = capacity
        try:
            self._value: Any = ort.OrtValue.ortvalue_from_shape_and_type(
                [capacity], np.uint8, kind, int(index or 0)
            )
        except Exception as exc:  # ORT raises RuntimeError/Fail for unknown devices
            raise InputError(
                f"cannot allocate a {capacity}-byte arena on {device!r}: {exc}",
                hint="use device='cpu', or install the onnxruntime build for that device",
            ) from None
        self._base = int(self._value.data_ptr())
        self._host = kind == "cpu"

    def address(self, offset: int) -> int:
        return self._base + offset

    def host_bytes(self, offset: int, nbytes: int) -> np.ndarray | None:
        if not self._host:
            return None
        if self._value is None:
            raise InputError("the pool's arena was released")
        raw = (ctypes.c_uint8 * nbytes).from_address(self._base + offset)
        return np.ctypeslib.as_array(raw)

    def release(self) -> None:
        self._value = None


class MemoryPool:
    """One arena of ``capacity`` bytes; aligned sub-allocations by offset. Thread-safe.

    ``device="cpu"`` uses a numpy arena; another device (``"cuda"``, ``"dml"``) an
    :class:`OrtValueArena`; ``arena=`` plugs in any :class:`Arena` (its capacity wins).
    """

    def __init__(
        self,
        capacity: int,
        *,
        alignment: int = DEFAULT_ALIGNMENT,
        device: str = "cpu",
        arena: Arena | None = None,
    ) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise InputError(f"pool capacity must be a positive int of bytes, given {capacity!r}")
        if not _is_pow2(alignment):
            raise InputError(
                f"alignment must be a power of two, given {alignment!r}", hint="e.g. 64, 256, 4096"
            )
        self.alignment = alignment
        if arena is None:
            arena = (
                HostArena(capacity) if device == "cpu" else OrtValueArena(capacity, device=device)
            )
        self.arena: Arena = arena
        self.capacity = arena.capacity
        self.device = arena.device
        self._lock = threading.Lock()
        self._generation = 0
        self._high_water = 0
        self._reset_state()

    def _reset_state(self) -> None:
        self._free_offsets: list[int] = [0]  # sorted starts of free ranges
        self._free_sizes: dict[int, int] = {0: self.capacity}
        self._live: dict[int, tuple[int, Block]] = {}  # offset -> (reserved bytes, block)
        self._in_use = 0

    # -- allocation -------------------------------------------------------------------------
    def alloc(self, nbytes: int, alignment: int | None = None) -> Block:
        """A block of ``nbytes`` at an offset aligned to ``alignment`` (default: the pool's).

        Raises :class:`BudgetExceededError` (requested / free / capacity) when nothing fits.
        """
        align = self.alignment if alignment is None else alignment
        if not _is_pow2(align):
            raise InputError(f"alignment must be a power of two, given {align!r}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int | np.integer) or nbytes < 0:
            raise InputError(f"nbytes must be an int >= 0, given {nbytes!r}")
        nbytes = int(nbytes)
        reserve = align_up(max(nbytes, 1), self.alignment)
        with self._lock:
            best: tuple[int, int, int] | None = None  # (leftover, range start, aligned start)
            for start in self._free_offsets:
                size = self._free_sizes[start]
                at = align_up(start, align)
                leftover = start + size - (at + reserve)
                if leftover >= 0 and (best is None or leftover < best[0]):
                    best = (leftover, start, at)
                    if leftover == 0:
                        break
            if best is None:
                free = self.capacity - self._in_use
                largest = max(self._free_sizes.values(), default=0)
                raise BudgetExceededError(
                    f"memory pool exhausted: requested {nbytes} bytes (reserving {reserve}, "
                    f"alignment {align}); free {free} bytes, largest free range {largest}, "
                    f"capacity {self.capacity}",
                    hint="free blocks, reset() the pool, or create it with a larger capacity",
                )
            _, start, at = best
            size = self._free_sizes.pop(start)
            self._free_offsets.remove(start)
            if at > start:  # the alignment gap stays free
                self._insert_free(start, at - start)
            end = at + reserve
            if end < start + size:
                self._insert_free(end, start + size - end)
            block = Block(at, nbytes, self._generation)
            self._live[at] = (reserve, block)
            self._in_use += reserve
            self._high_water = max(self._high_water, self._in_use)
            return block

    def _insert_free(self, start: int, size: int) -> None:
        bisect.insort(self._free_offsets, start)
        self._free_sizes[start] = size

    def free(self, block: Block) -> None:
        """Return ``block`` to the free list, merging it with free neighbours."""
        with self._lock:
            reserve = self._check_live(block)
            del self._live[block.offset]
            self._in_use -= reserve
            start, size = block.offset, reserve
            i = bisect.bisect_left(self._free_offsets, start)
            if i < len(self._free_offsets) and self._free_offsets[i] == start + size:
                nxt = self._free_offsets.pop(i)
                size += self._free_sizes.pop(nxt)
            if i > 0:
                prev = self._free_offsets[i - 1]
                if prev + self._free_sizes[prev] == start:
                    self._free_sizes[prev] += size
                    return
            self._insert_free(start, size)

    def reset(self) -> None:
        """Free every block at once (older blocks become invalid); the high-water mark stays."""
        with self._lock:
            self._generation += 1
            self._reset_state()

    def _check_live(self, block: Block) -> int:
        entry = self._live.get(block.offset)
        if entry is None or entry[1] != block:
            state = "from before a reset()" if block.generation != self._generation else "not live"
            raise InputError(
                f"block at offset {block.offset} ({block.size} bytes) is {state} in this pool",
                hint="free each block once, and only blocks this pool handed out",
            )
        return entry[0]

    # -- access -----------------------------------------------------------------------------
    def address(self, block: Block) -> int:
        """The block's address (for ``IOBinding.bind_input/bind_output(buffer_ptr=...)``)."""
        with self._lock:
            self._check_live(block)
        return self.arena.address(block.offset)

    def view(self, block: Block, shape: tuple[int, ...] | list[int], dtype: Any) -> np.ndarray:
        """A numpy array of ``shape`` / ``dtype`` over the block (host arenas only)."""
        dt = np.dtype(dtype)
        shp = tuple(int(d) for d in shape)
        need = int(np.prod(shp, dtype=np.int64)) * dt.itemsize
        with self._lock:
            self._check_live(block)
        if need > block.size:
            raise InputError(
                f"a {shp} {dt} view needs {need} bytes; the block has {block.size}",
                hint="allocate a block of at least that size",
            )
        raw = self.arena.host_bytes(block.offset, need)
        if raw is None:
            raise InputError(
                f"the pool's memory is on {self.device!r}, not host-visible",
                hint="bind it by address: pool.address(block)",
            )
        return raw.view(dt).reshape(shp)

    def stats(self) -> PoolStats:
        with self._lock:
            free = self.capacity - self._in_use
            largest = max(self._free_sizes.values(), default=0)
            frag = 0.0 if free == 0 else 1.0 - largest / free
            return PoolStats(
                capacity=self.capacity,
                in_use=self._in_use,
                high_water=self._high_water,
                free=free,
                largest_free=largest,
                fragmentation=frag,
                blocks=len(self._live),
            )

    def free_ranges(self) -> list[tuple[int, int]]:
        """The free list as sorted ``(offset, size)`` pairs (for tests and reports)."""
        with self._lock:
            return [(o, self._free_sizes[o]) for o in self._free_offsets]

    def live_blocks(self) -> list[tuple[Block, int]]:
        """Live blocks with their reserved sizes, sorted by offset."""
        with self._lock:
            return [(b, r) for _, (r, b) in sorted(self._live.items())]

    def release(self) -> None:
        """Drop the arena's memory; the pool is unusable afterwards."""
        with self._lock:
            self.arena.release()
            self._generation += 1
            self._reset_state()

    def __repr__(self) -> str:
        s = self.stats()
        return f"MemoryPool(capacity={s.capacity}, in_use={s.in_use}, device={self.device!r})"
