"""MemoryPool: aligned sub-allocation, free list with coalescing, reset, stats, exhaustion."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxfit.errors import BudgetExceededError, InputError
from onnxfit.runtime.pool import BASE_ALIGNMENT, Block, MemoryPool, OrtValueArena, align_up


def test_alloc_is_aligned_and_inside_the_arena() -> None:
    pool = MemoryPool(4096)
    a = pool.alloc(10)
    b = pool.alloc(300)
    c = pool.alloc(1, alignment=1024)
    for blk in (a, b, c):
        assert blk.offset % 256 == 0
        assert pool.address(blk) % 256 == 0
    assert c.offset % 1024 == 0 and pool.address(c) % 1024 == 0
    assert (a.size, b.size, c.size) == (10, 300, 1)
    assert pool.stats().in_use == 256 + 512 + 256


@pytest.mark.parametrize("bad", [0, 3, 100, -256, 1.5, True])
def test_alignment_must_be_a_power_of_two(bad: object) -> None:
    with pytest.raises(InputError, match="power of two"):
        MemoryPool(1024, alignment=bad)  # type: ignore[arg-type]
    pool = MemoryPool(1024)
    with pytest.raises(InputError, match="power of two"):
        pool.alloc(8, alignment=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, 2.0, "1024"])
def test_capacity_must_be_positive_int(bad: object) -> None:
    with pytest.raises(InputError, match="capacity"):
        MemoryPool(bad)  # type: ignore[arg-type]


def test_exhaustion_raises_with_the_sizes_never_none() -> None:
    pool = MemoryPool(1024)
    pool.alloc(700)
    with pytest.raises(BudgetExceededError) as info:
        pool.alloc(300)
    msg = str(info.value)
    assert "requested 300 bytes" in msg and "free 256 bytes" in msg and "capacity 1024" in msg
    assert info.value.hint
    with pytest.raises(BudgetExceededError, match="requested 5000 bytes"):
        MemoryPool(4096).alloc(5000)


def test_freed_block_is_reused() -> None:
    pool = MemoryPool(1024)
    a = pool.alloc(512)
    pool.alloc(512)
    with pytest.raises(BudgetExceededError):
        pool.alloc(1)
    pool.free(a)
    c = pool.alloc(400)
    assert c.offset == a.offset


def test_adjacent_free_blocks_coalesce() -> None:
    pool = MemoryPool(1024)
    a, b, c, d = (pool.alloc(256) for _ in range(4))
    pool.free(a)
    pool.free(c)
    assert pool.free_ranges() == [(0, 256), (512, 256)]
    assert pool.stats().fragmentation == pytest.approx(0.5)
    with pytest.raises(BudgetExceededError, match="largest free range 256"):
        pool.alloc(512)
    pool.free(b)  # joins a and c
    assert pool.free_ranges() == [(0, 768)]
    assert pool.stats().fragmentation == 0.0
    assert pool.alloc(768).offset == 0
    pool.free(d)
    assert pool.free_ranges() == [(768, 256)]


def test_best_fit_keeps_the_large_range() -> None:
    pool = MemoryPool(4096)
    blocks = [pool.alloc(256) for _ in range(16)]
    pool.free(blocks[1])  # a 256 hole
    for blk in blocks[4:]:
        pool.free(blk)  # a 3072 tail
    got = pool.alloc(200)
    assert got.offset == 256  # the small hole, not the tail
    assert pool.stats().largest_free == 3072


def test_double_free_and_foreign_blocks_are_refused() -> None:
    pool = MemoryPool(1024)
    a = pool.alloc(64)
    pool.free(a)
    with pytest.raises(InputError, match="not live"):
        pool.free(a)
    with pytest.raises(InputError):
        pool.free(Block(512, 64))


def test_reset_frees_everything_and_invalidates_old_blocks() -> None:
    pool = MemoryPool(2048)
    old = [pool.alloc(500) for _ in range(3)]
    assert pool.stats().high_water == 3 * 512
    pool.reset()
    s = pool.stats()
    assert (s.in_use, s.free, s.largest_free, s.blocks) == (0, 2048, 2048, 0)
    assert s.high_water == 3 * 512  # the high-water mark survives a reset
    with pytest.raises(InputError, match="before a reset"):
        pool.free(old[0])
    with pytest.raises(InputError):
        pool.view(old[1], (4,), np.float32)
    new = pool.alloc(500)
    assert new.offset == old[0].offset and new != old[0]


def test_views_are_typed_windows_that_do_not_alias() -> None:
    pool = MemoryPool(4096)
    a, b = pool.alloc(4 * 12), pool.alloc(8 * 6)
    va = pool.view(a, (3, 4), np.float32)
    vb = pool.view(b, (6,), np.int64)
    va[:] = 1.5
    vb[:] = -7
    assert va.shape == (3, 4) and va.dtype == np.float32 and np.all(va == 1.5)
    assert np.all(vb == -7)
    assert not np.shares_memory(va, vb)
    assert va.ctypes.data == pool.address(a)
    with pytest.raises(InputError, match="needs 64 bytes"):
        pool.view(a, (16,), np.float32)


def test_stats_to_dict() -> None:
    pool = MemoryPool(1024)
    pool.alloc(100)
    d = pool.stats().to_dict()
    assert d == {
        "capacity": 1024,
        "in_use": 256,
        "high_water": 256,
        "free": 768,
        "largest_free": 768,
        "fragmentation": 0.0,
        "blocks": 1,
    }


def test_ortvalue_arena_on_cpu_hands_out_addresses_inside_the_ortvalue() -> None:
    arena = OrtValueArena(8192, device="cpu")
    pool = MemoryPool(8192, arena=arena)
    assert pool.device == "cpu" and pool.capacity == 8192
    blk = pool.alloc(4 * 10, alignment=512)
    assert pool.address(blk) == arena.address(0) + blk.offset
    v = pool.view(blk, (10,), np.float32)
    v[:] = np.arange(10, dtype=np.float32)
    assert np.array_equal(pool.view(blk, (10,), np.float32), np.arange(10, dtype=np.float32))


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this host has CUDA"
)
def test_device_arena_without_the_device_is_an_input_error() -> None:
    with pytest.raises(InputError, match="cannot allocate"):
        MemoryPool(1024, device="cuda")


# -- invariants under random operation sequences ---------------------------------------------

CAP = 1 << 14
_op = st.one_of(
    st.tuples(st.just("alloc"), st.integers(0, 3000), st.integers(0, 13)),
    st.tuples(st.just("free"), st.integers(0, 1000), st.just(0)),
    st.tuples(st.just("reset"), st.just(0), st.just(0)),
)


def _check_invariants(pool: MemoryPool, live: dict[Block, tuple[int, int]]) -> None:
    blocks = pool.live_blocks()
    assert {b for b, _ in blocks} == set(live)
    # live reserved ranges and free ranges tile [0, capacity) exactly: no overlap, no leak
    spans = sorted(
        [(b.offset, r, "live") for b, r in blocks] + [(o, s, "free") for o, s in pool.free_ranges()]
    )
    pos = 0
    prev_kind = None
    for off, size, kind in spans:
        assert off == pos, f"gap or overlap at {pos}: next span starts at {off}"
        assert size > 0
        assert not (kind == "free" and prev_kind == "free"), "adjacent free ranges not coalesced"
        pos, prev_kind = off + size, kind
    assert pos == CAP
    for b, r in blocks:
        align, tag = live[b]
        assert b.offset % align == 0
        if align <= BASE_ALIGNMENT:
            assert pool.address(b) % align == 0
        assert r >= b.size and r % pool.alignment == 0
        if b.size:  # the block's bytes still hold its own tag: nobody else wrote over them
            assert np.all(pool.view(b, (b.size,), np.uint8) == tag)
    s = pool.stats()
    assert s.in_use == sum(r for _, r in blocks) and s.high_water >= s.in_use
    assert s.free == CAP - s.in_use and 0.0 <= s.fragmentation < 1.0


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(_op, max_size=60))
def test_pool_invariants_hold_for_any_operation_sequence(ops: list[tuple[str, int, int]]) -> None:
    pool = MemoryPool(CAP)
    live: dict[Block, tuple[int, int]] = {}
    tag = 0
    for kind, n, k in ops:
        if kind == "alloc":
            align = 1 << k
            fits = any(
                align_up(o, align) + align_up(max(n, 1), 256) <= o + s
                for o, s in pool.free_ranges()
            )
            try:
                blk = pool.alloc(n, alignment=align)
            except BudgetExceededError:
                assert not fits, "refused although a free range could hold it"
                continue
            assert fits
            tag = tag % 255 + 1
            live[blk] = (align, tag)
            if n:
                pool.view(blk, (n,), np.uint8)[:] = tag
        elif kind == "free" and live:
            blk = list(live)[n % len(live)]
            pool.free(blk)
            del live[blk]
        elif kind == "reset":
            pool.reset()
            live.clear()
        _check_invariants(pool, live)
    for blk in list(live):  # releasing everything coalesces back to one range
        pool.free(blk)
    assert pool.free_ranges() == [(0, CAP)]
