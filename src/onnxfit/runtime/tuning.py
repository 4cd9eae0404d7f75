"""Batch-size tuning: time a few batch sizes on this host and pick the best throughput.

:func:`tune_batch_size` runs one item repeated to each batch size: one warm-up run, then runs for
about ``seconds`` (at least 3, at most 200), and keeps the median and 90th-percentile latency. The
chosen size has the highest items/s among those whose median latency is within
``latency_cap_ms`` (batch 1 when none is); sizes stop growing once one exceeds the cap, since
latency only grows with the batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

AUTO_SIZES: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


@dataclass(frozen=True)
class BatchMeasurement:
    """One batch size timed by the auto-tuner (median over ``runs`` runs after one warm-up)."""

    batch: int
    runs: int
    median_ms: float
    p90_ms: float
    items_per_s: float
    within_cap: bool


@dataclass(frozen=True)
class TuningResult:
    """What ``batch_size="auto"`` measured and chose."""

    chosen: int
    latency_cap_ms: float | None
    measurements: tuple[BatchMeasurement, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "latency_cap_ms": self.latency_cap_ms,
            "measurements": [asdict(m) for m in self.measurements],
        }


def tune_batch_size(
    run: Callable[[dict[str, np.ndarray]], Any],
    item: Mapping[str, np.ndarray],
    *,
    sizes: Sequence[int] = AUTO_SIZES,
    latency_cap_ms: float | None = None,
    seconds: float = 0.3,
) -> TuningResult:
    """Measure ``run`` on ``item`` (leading dim 1) repeated to each of ``sizes``; see module doc."""
    measured: list[BatchMeasurement] = []
    for b in sizes:
        feeds = {k: np.repeat(v, b, axis=0) for k, v in item.items()}
        run(feeds)  # warm-up (allocations, kernel selection)
        times: list[float] = []
        t_end = time.perf_counter() + seconds
        while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 200):
            t0 = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times)) * 1e3
        p90 = float(np.percentile(times, 90)) * 1e3
        ok = latency_cap_ms is None or med <= latency_cap_ms
        measured.append(
            BatchMeasurement(b, len(times), round(med, 4), round(p90, 4), b / med * 1e3, ok)
        )
        logger.debug("tune batch %d: %.3f ms median, %.1f items/s", b, med, b / med * 1e3)
        if not ok:
            break
    fits = [m for m in measured if m.within_cap]
    chosen = max(fits, key=lambda m: m.items_per_s).batch if fits else 1
    logger.info("auto batch size: %d (cap %s ms)", chosen, latency_cap_ms)
    return TuningResult(chosen, latency_cap_ms, tuple(measured))
