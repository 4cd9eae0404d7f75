"""Activation ranges from calibration data: the statistics half of INT8 quantization.

:func:`collect_ranges` runs onnxruntime's calibrator (MinMax, Entropy or Percentile) over
:class:`~onnxfit.data.calibration.CalibrationData` and returns :class:`Ranges`, keyed by tensor
name of the model it ran on. :func:`onnxfit.passes.int8.quantize_with_ranges` hands them to
``quantize_static`` through ORT's public calibration cache (``calibration_cache_path``, ORT >=
1.32), so calibration and quantization stay separate and ranges are reused while backing off.
Ranges are valid only for the very model they were collected on (tensor names): collect them on
the output of :func:`onnxfit.passes.int8.prepare_for_quantization`.

The edge to ORT: ``create_calibrator`` wants a model *file*, so the model is written with
:func:`onnxfit.io.save` into a temporary folder that is removed on success or failure.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, InvalidArgument
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod
from onnxruntime.quantization.calibrate import TensorsData, create_calibrator, save_tensors_data
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry

from onnxfit import atomic, io
from onnxfit.data.calibration import CalibrationData, model_inputs
from onnxfit.errors import InputError
from onnxfit.runtime.ort_errors import one_line, quiet_ort

logger = logging.getLogger(__name__)

Method = Literal["minmax", "entropy", "percentile"]
METHODS: dict[str, CalibrationMethod] = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


def default_op_types() -> list[str]:
    """Every op type ORT's static quantizer handles (what ``quantize_static`` uses by default)."""
    return sorted(set(QLinearOpsRegistry) | set(QDQRegistry))


@dataclass
class Ranges:
    """Activation ranges per tensor name, from one calibration run on one model.

    ``samples``: how many input samples (batch sizes summed) the ranges come from;
    ``synthetic``: True when those were made-up inputs. ``data`` is ORT's ``TensorsData``.
    """

    method: Method
    samples: int
    data: TensorsData = field(repr=False)
    synthetic: bool = False

    @property
    def tensors(self) -> dict[str, tuple[float, float]]:
        """tensor name -> (lowest, highest)."""
        out = {}
        for name, td in self.data.items():
            lo, hi = td.range_value
            out[name] = (float(np.min(lo)), float(np.max(hi)))
        return out

    def write_cache(self, path: str | os.PathLike[str]) -> None:
        """Write onnxruntime's calibration cache JSON (``quantize_static`` reads it)."""
        save_tensors_data(self.data, Path(path))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "samples": self.samples,
            "synthetic": self.synthetic,
            "tensors": len(self.data.data),
        }


class _LogWriter:
    """A text stream that sends ORT's ``print`` progress lines to the log (DEBUG), not stdout."""

    def write(self, text: str) -> int:
        for line in text.splitlines():
            if line.strip():
                logger.debug("ort: %s", line.strip())
        return len(text)

    def flush(self) -> None:
        pass


def _check_names(data: CalibrationData, names: Sequence[str]) -> None:
    for feed in data.feeds:
        if set(feed) != set(names):
            raise InputError(
                f"calibration feeds name {sorted(feed)}, the model's inputs are {sorted(names)}",
                hint="name the arrays after the model's inputs",
            )


class _Chunk(CalibrationDataReader):
    """At most ``size`` feeds of a reader, so ORT's calibrator holds few outputs at once."""

    def __init__(self, source: Iterator[dict[str, np.ndarray]], size: int) -> None:
        self._source, self._left = source, size
        self.count = 0  # feeds handed out
        self.samples = 0  # their batch sizes summed

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self._left <= 0:
            return None
        self._left -= 1
        feed = next(self._source, None)
        if feed is not None:
            self.count += 1
            self.samples += next(iter(feed.values())).shape[0] if feed else 0
        return feed


def _feed_iter(reader: CalibrationDataReader) -> Iterator[dict[str, np.ndarray]]:
    while (feed := reader.get_next()) is not None:
        yield feed


def collect_ranges(
    model: ir.Model,
    data: CalibrationData | CalibrationDataReader,
    *,
    method: Method = "minmax",
    op_types: Sequence[str] | None = None,
    percentile: float = 99.999,
    symmetric: bool | None = None,
    chunk: int = 16,
) -> Ranges:
    """Run the calibrator over ``data`` and return the activation ranges of ``model``.

    ``op_types``: the op types whose tensors are calibrated (default: every type onnxruntime
    can quantize, as ``quantize_static`` does). ``percentile`` applies to ``"percentile"``;
    ``symmetric`` forces symmetric ranges (default: ORT's per-method default, except
    asymmetric for percentile, which suits uint8 activations). Feeds go to the calibrator
    ``chunk`` at a time so memory stays bounded. All scratch files live in a temporary folder
    that is removed, on success or failure.
    """
    if method not in METHODS:
        raise InputError(
            f"unknown calibration method {method!r}", hint=f"use one of {', '.join(METHODS)}"
        )
    quiet_ort()  # ORT's calibrator makes its own sessions, on the default logger
    reader = data.reader() if isinstance(data, CalibrationData) else data
    synthetic = data.synthetic if isinstance(data, CalibrationData) else False
    if isinstance(data, CalibrationData):
        _check_names(data, [s.name for s in model_inputs(model)])
    extra: dict[str, Any] = {}
    if method == "percentile":
        extra["percentile"] = percentile
        extra["symmetric"] = False if symmetric is None else symmetric
    elif symmetric is not None:
        extra["symmetric"] = symmetric
    # ORT's histogram calibrators print progress to stdout, which must stay clean for --json
    with (
        atomic.temp_dir("calib") as tmp,
        contextlib.redirect_stdout(_LogWriter()),
    ):
        model_path = Path(tmp) / "model.onnx"
        io.save(model, model_path, force=True)
        calibrator = create_calibrator(
            model_path,
            list(op_types) if op_types is not None else default_op_types(),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=METHODS[method],
            extra_options=extra,
        )
        feeds = _feed_iter(reader)
        size, total = max(1, chunk), 0
        while True:  # ORT's calibrators merge the ranges/histograms of successive calls
            part = _Chunk(feeds, size)
            first = part.get_next()
            if first is None:  # they refuse an empty call
                break
            try:
                calibrator.collect_data(_Prepend(first, part))
            except (InvalidArgument, Fail) as exc:  # shapes/dtypes the model refuses
                raise InputError(
                    one_line(f"the model cannot run on the calibration data: {exc}"),
                    hint="check the data's shape and dtype against the model's inputs",
                ) from None
            total += part.samples
            if part.count < size:
                break
        if total == 0:
            raise InputError("the calibration data is empty", hint="give at least one input")
        tensors = calibrator.compute_data()
    logger.info(
        "calibration (%s): ranges of %d tensors from %d samples", method, len(tensors.data), total
    )
    return Ranges(method, total, tensors, synthetic)


class _Prepend(CalibrationDataReader):
    def __init__(self, first: dict[str, np.ndarray], rest: _Chunk) -> None:
        self._first: dict[str, np.ndarray] | None = first
        self._rest = rest

    def get_next(self) -> dict[str, np.ndarray] | None:  # type: ignore[override]
        if self._first is not None:
            feed, self._first = self._first, None
            return feed
        return self._rest.get_next()
