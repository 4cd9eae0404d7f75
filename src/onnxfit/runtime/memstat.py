"""Process memory measurements used by the runtime: RSS now, peak RSS over a block, free RAM.

Linux only (``/proc``); elsewhere the readings are 0 and :class:`PeakRSS` reports nothing.
The peak comes from the kernel's high-water mark ``VmHWM`` of ``/proc/self/status``, reset by
writing ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0, Documentation/filesystems/proc.rst);
when that file cannot be written, the peak is sampled every ``interval`` seconds instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

_LIBC: Any = None


def malloc_trim() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim(0)``; no-op elsewhere).

    ONNX Runtime copies initializers while it builds a session; without a trim the freed copies
    stay in the process's RSS.
    """
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


def rss_bytes() -> int:
    """This process's resident set size now (0 where /proc is missing)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """This process's peak resident set size: ``VmHWM`` of ``/proc/self/status`` (Linux), else
    ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    hwm = _status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    import resource
    import sys

    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_memory(default: int = 8 * 1024**3) -> int:
    """MemAvailable of this host in bytes (``default`` when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return default


class PeakRSS:
    """``with PeakRSS() as p: ...`` then ``p.start_bytes``, ``p.peak_bytes``, ``p.growth_bytes``
    (peak minus start): the process's RSS high-water mark over the block."""

    def __init__(self, *, interval: float = 0.002) -> None:
        self.interval = interval
        self.start_bytes = 0
        self.peak_bytes = 0
        self.method = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def growth_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)

    def __enter__(self) -> PeakRSS:
        self.start_bytes = rss_bytes()
        self.peak_bytes = self.start_bytes
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.method = "VmHWM" if _status_kib("VmHWM") is not None else "none"
        except OSError:
            self.method = "sampled"
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, rss_bytes())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._thread is not None:
            self._stop.set()
            with contextlib.suppress(RuntimeError):
                self._thread.join(1.0)
        if self.method == "VmHWM":
            self.peak_bytes = max(self.peak_bytes, (_status_kib("VmHWM") or 0) * 1024)
        self.peak_bytes = max(self.peak_bytes, rss_bytes())
