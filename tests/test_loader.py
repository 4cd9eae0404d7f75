"""AsyncLoader: ordering, bounded prefetch, concurrency, timeouts, failures, cancellation."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from pathlib import Path

import pytest

from onnxfit.data.loader import AsyncLoader, FileLoadError, Item
from onnxfit.errors import InputError

pytestmark = pytest.mark.timeout(30)


def _loader_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("onnxfit-loader")]


@pytest.fixture(autouse=True)
def _no_threads_left():
    yield
    deadline = time.monotonic() + 5
    while _loader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _loader_threads() == []


def _paths(n: int) -> list[str]:
    return [f"f{i:03d}.bin" for i in range(n)]


def _jittery(seed: int):
    rng = random.Random(seed)
    delays = [rng.uniform(0, 0.004) for _ in range(1000)]

    def load(p: Path) -> str:
        time.sleep(delays[int(p.stem[1:])])
        return p.stem.upper()

    return load


def test_ordered_yields_in_path_order() -> None:
    paths = _paths(40)
    with AsyncLoader(paths, load=_jittery(0), max_concurrent=3, prefetch=4) as loader:
        items = list(loader)
    assert [it.path.name for it in items] == paths
    assert [it.position for it in items] == list(range(40))
    assert all(it.value == Path(p).stem.upper() for it, p in zip(items, paths, strict=True))
    assert isinstance(items[0], Item)
    assert loader.errors == []


def test_unordered_yields_each_once_and_out_of_order() -> None:
    gate = threading.Event()

    def load(p: Path) -> str:
        if p.name == "f000.bin":
            assert gate.wait(10)
        return p.name

    paths = _paths(6)
    with AsyncLoader(paths, load=load, max_concurrent=2, prefetch=3, ordered=False) as loader:
        first = loader.next(timeout=5)
        gate.set()
        rest = list(loader)
    assert first.path.name != "f000.bin"  # f000 was blocked, another file came first
    names = [first.value] + [it.value for it in rest]
    assert sorted(names) == paths


def test_prefetch_bound_and_concurrency_bound() -> None:
    lock = threading.Lock()
    started: set[int] = set()
    consumed: set[int] = set()
    running = 0
    peak_running = 0
    peak_outstanding = 0

    def load(p: Path) -> int:
        nonlocal running, peak_running, peak_outstanding
        i = int(p.stem[1:])
        with lock:
            started.add(i)
            running += 1
            peak_running = max(peak_running, running)
            peak_outstanding = max(peak_outstanding, len(started - consumed))
        time.sleep(0.001)
        with lock:
            running -= 1
        return i

    paths = _paths(30)
    with AsyncLoader(paths, load=load, max_concurrent=3, prefetch=4) as loader:
        for it in loader:
            time.sleep(0.003)  # a slow consumer: workers must wait, not pile results up
            assert loader.held <= 4
            with lock:
                consumed.add(it.value)
    assert len(consumed) == 30
    # independent count: started - consumed also includes the one item in the consumer's hand
    # (its slot is freed when handed over, before the test marks it consumed)
    assert peak_outstanding <= 4 + 1
    assert loader.peak_held <= 4
    assert peak_running <= 3
    assert loader.peak_held >= 2  # it did prefetch


def test_timeout_names_the_file_and_can_be_retried() -> None:
    gate = threading.Event()

    def load(p: Path) -> str:
        if p.name == "f001.bin":
            assert gate.wait(10)
        return p.name

    with AsyncLoader(_paths(3), load=load, max_concurrent=2, prefetch=2) as loader:
        assert loader.next(timeout=5).value == "f000.bin"
        with pytest.raises(TimeoutError, match=r"f001\.bin"):
            loader.next(timeout=0.05)
        gate.set()
        assert loader.next(timeout=5).value == "f001.bin"
        assert loader.next(timeout=5).value == "f002.bin"
        with pytest.raises(StopIteration):
            loader.next(timeout=1)


def test_constructor_timeout_applies_to_iteration() -> None:
    gate = threading.Event()

    def load(p: Path) -> str:
        assert gate.wait(10)
        return p.name

    loader = AsyncLoader(_paths(2), load=load, timeout=0.05)
    try:
        with pytest.raises(TimeoutError, match=r"f000\.bin"):
            next(iter(loader))
    finally:
        gate.set()
        assert loader.close(timeout=5)


@pytest.mark.parametrize("ordered", [True, False])
def test_failing_files_are_skipped_and_reported(ordered: bool) -> None:
    def load(p: Path) -> str:
        if p.name in ("f000.bin", "f003.bin"):
            raise ValueError(f"broken data in {p.name}")
        return p.name

    paths = _paths(6)
    with AsyncLoader(paths, load=load, prefetch=1, max_concurrent=1, ordered=ordered) as loader:
        got = sorted(it.value for it in loader)
    assert got == ["f001.bin", "f002.bin", "f004.bin", "f005.bin"]
    assert sorted(e.path.name for e in loader.errors) == ["f000.bin", "f003.bin"]
    assert all("ValueError: broken data" in e.reason for e in loader.errors)
    assert loader.errors[0].to_dict()["path"].endswith(".bin")


def test_failing_file_raises_then_stream_continues() -> None:
    def load(p: Path) -> str:
        if p.name == "f001.bin":
            raise OSError("disk on fire")
        return p.name

    with AsyncLoader(_paths(4), load=load, on_error="raise") as loader:
        it = iter(loader)
        assert next(it).value == "f000.bin"
        with pytest.raises(FileLoadError, match=r"f001\.bin: OSError: disk on fire"):
            next(it)
        assert [x.value for x in it] == ["f002.bin", "f003.bin"]
    assert [e.path.name for e in loader.errors] == ["f001.bin"]


def test_real_files_with_default_loader(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "c.bin").write_bytes(b"")
    paths = [tmp_path / "a.bin", tmp_path / "missing.bin", tmp_path / "c.bin"]
    with AsyncLoader(paths) as loader:
        items = list(loader)
    assert [it.value for it in items] == [b"abc", b""]
    assert len(loader.errors) == 1
    assert loader.errors[0].path.name == "missing.bin"
    assert "FileNotFoundError" in loader.errors[0].reason


def test_close_mid_stream_stops_all_workers() -> None:
    loader = AsyncLoader(_paths(200), load=_jittery(1), max_concurrent=2, prefetch=3)
    it = iter(loader)
    for _ in range(5):
        next(it)
    assert _loader_threads()  # workers are running
    assert loader.close(timeout=5)
    assert _loader_threads() == []
    with pytest.raises(StopIteration):
        next(it)


def test_break_out_of_with_block_stops_workers() -> None:
    with AsyncLoader(_paths(100), load=_jittery(2)) as loader:
        for it in loader:
            if it.position == 3:
                break
    assert loader.closed
    assert _loader_threads() == []


def test_close_does_not_hang_on_blocked_consumer_slots() -> None:
    # prefetch full and nobody consuming: workers wait on the slot condition; close wakes them
    loader = AsyncLoader(_paths(50), load=lambda p: p.name, max_concurrent=2, prefetch=2).start()
    deadline = time.monotonic() + 5
    while loader.held < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert loader.held == 2
    assert loader.close(timeout=5)


def test_async_iteration_ordered_and_closes() -> None:
    async def main() -> list[str]:
        async with AsyncLoader(_paths(20), load=_jittery(3), prefetch=3) as loader:
            return [it.value async for it in loader]

    assert asyncio.run(main()) == [p.split(".")[0].upper() for p in _paths(20)]


def test_async_timeout_names_the_file() -> None:
    gate = threading.Event()

    def load(p: Path) -> str:
        assert gate.wait(10)
        return p.name

    async def main() -> None:
        loader = AsyncLoader(_paths(2), load=load, timeout=0.05)
        try:
            with pytest.raises(TimeoutError, match=r"f000\.bin"):
                await loader.__anext__()
        finally:
            gate.set()
            await loader.aclose()

    asyncio.run(main())


def test_async_skips_failures() -> None:
    def load(p: Path) -> str:
        if p.name == "f002.bin":
            raise RuntimeError("nope")
        return p.name

    async def main() -> list[str]:
        async with AsyncLoader(_paths(5), load=load, ordered=False) as loader:
            return sorted([it.value async for it in loader])

    assert asyncio.run(main()) == ["f000.bin", "f001.bin", "f003.bin", "f004.bin"]


def test_empty_paths() -> None:
    with AsyncLoader([]) as loader:
        assert list(loader) == []


@pytest.mark.parametrize(
    "kwargs",
    [{"max_concurrent": 0}, {"prefetch": 0}, {"on_error": "ignore"}, {"timeout": 0}],
)
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(InputError):
        AsyncLoader(_paths(1), **kwargs)


def test_loader_with_image_preprocessing(tmp_path: Path) -> None:
    import functools

    import numpy as np
    from PIL import Image

    from onnxfit.data.images import preprocess_with_meta

    rng = np.random.default_rng(0)
    paths = []
    for i in range(5):
        p = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (60 + i, 80, 3), np.uint8)).save(p)
        paths.append(p)
    paths[2].write_bytes(paths[2].read_bytes()[:50])  # truncated PNG
    load = functools.partial(preprocess_with_meta, preset="yolox")
    with AsyncLoader(paths, load=load, max_concurrent=2, prefetch=2) as loader:
        items = list(loader)
    assert [it.path.name for it in items] == ["img0.png", "img1.png", "img3.png", "img4.png"]
    x, meta = items[0].value
    assert x.shape == (3, 416, 416) and meta.size == (80, 60)
    assert [e.path.name for e in loader.errors] == ["img2.png"]
    assert loader.errors[0].reason.startswith("cannot decode")


def test_async_cancel_then_continue() -> None:
    gate = threading.Event()

    def load(p: Path) -> str:
        if p.name == "f000.bin":
            assert gate.wait(10)
        return p.name

    async def main() -> list[str]:
        async with AsyncLoader(_paths(3), load=load) as loader:
            task = asyncio.ensure_future(loader.__anext__())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert loader._waiters == []  # the cancelled wait left nothing behind
            gate.set()
            return [it.value async for it in loader]

    assert asyncio.run(main()) == ["f000.bin", "f001.bin", "f002.bin"]


def test_load_raising_base_exception_does_not_stall() -> None:
    def load(p: Path) -> str:
        if p.name == "f001.bin":
            raise SystemExit("worker asked to exit")
        return p.name

    with AsyncLoader(_paths(3), load=load, timeout=10) as loader:
        assert [it.value for it in loader] == ["f000.bin", "f002.bin"]
    assert loader.errors[0].reason == "SystemExit: worker asked to exit"
