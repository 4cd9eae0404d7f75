"""Order statistics of timing samples.

Percentile definition (stated because tools differ): **linear interpolation between closest
ranks**, the default of ``numpy.percentile`` (``method="linear"``, Hyndman & Fan 1996 type 7).
For sorted samples ``x[0] <= ... <= x[n-1]`` and ``p`` in [0, 100]::

    h = (n - 1) * p / 100
    percentile(p) = x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)])

so the 0th percentile is the minimum, the 100th the maximum and the 50th the usual median (the
mean of the two middle samples for even ``n``). With few samples the high percentiles sit between
the largest samples: p99 of 10 samples is ``x[8] + 0.91 * (x[9] - x[8])``; read p99 only when
there are ~100 samples or more.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from onnxfit.errors import InputError


def percentile(samples: Sequence[float], p: float, *, presorted: bool = False) -> float:
    """The ``p``-th percentile (0-100) of ``samples`` by linear interpolation (numpy's default).

    Raises :class:`InputError` for no samples or ``p`` outside [0, 100].
    """
    if not 0.0 <= p <= 100.0 or math.isnan(p):
        raise InputError(f"percentile {p!r} is outside [0, 100]")
    if len(samples) == 0:
        raise InputError("percentile of no samples")
    xs = samples if presorted else sorted(samples)
    h = (len(xs) - 1) * p / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return float(xs[lo] + (h - lo) * (xs[hi] - xs[lo]))


@dataclass(frozen=True)
class Summary:
    """count / total / min / median / mean / p90 / p99 / max / stdev of samples (seconds)."""

    count: int
    total: float
    min: float
    median: float
    mean: float
    p90: float
    p99: float
    max: float
    stdev: float

    @property
    def cv(self) -> float:
        """Coefficient of variation (stdev / mean); 0 when the mean is 0."""
        return self.stdev / self.mean if self.mean else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def summarize(samples: Iterable[float]) -> Summary:
    """The :class:`Summary` of ``samples`` (at least one); stdev is the sample stdev (n - 1)."""
    xs = sorted(float(x) for x in samples)
    n = len(xs)
    if n == 0:
        raise InputError("no samples to summarize")
    total = math.fsum(xs)
    mean = total / n
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1) if n > 1 else 0.0
    return Summary(
        count=n,
        total=total,
        min=xs[0],
        median=percentile(xs, 50, presorted=True),
        mean=mean,
        p90=percentile(xs, 90, presorted=True),
        p99=percentile(xs, 99, presorted=True),
        max=xs[-1],
        stdev=math.sqrt(var),
    )
