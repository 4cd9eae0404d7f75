"""Helpers for the runtime tests (session, batching, resources, progressive): bounded thread
runs and output comparison against a plain ONNX Runtime reference."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence

import numpy as np


def start_and_join(threads: Sequence[threading.Thread], *, timeout: float) -> None:
    """Start every thread, then join each for at most ``timeout`` s; fail if one still runs."""
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s: {alive}"


def assert_outputs_close(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> None:
    """Same output names and shapes; values within rtol 1e-5 (absolute 1e-6 of the largest
    reference magnitude, for values near zero)."""
    assert set(got) == set(ref)
    for k, r in ref.items():
        assert got[k].shape == r.shape, k
        scale = max(1.0, float(np.abs(r).max()))
        np.testing.assert_allclose(got[k], r, rtol=1e-5, atol=1e-6 * scale)
