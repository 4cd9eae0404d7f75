"""The data an optimization runs on: calibration inputs, verification inputs, labelled images.

Sources, in order of preference:

* labelled evaluation (``eval``): a classification folder (``labels.tsv``) or a YOLO detection
  folder (``images/`` + ``labels/``), read by the one evaluator (:mod:`onnxfit.verify`);
  the gate then measures the accuracy drop (top-1, or mAP@0.5);
* unlabelled verification: real inputs from ``calibrate`` — the images *after* the first
  ``calib_count`` (up to ``verify_count``), so that the gate does not judge on the images the
  ranges were taken from; when the folder holds no more, the calibration inputs themselves
  (and a note says so) — else seeded synthetic noise (every report says so);
* calibration (INT8 ranges, FP16 activation ranges): ``calibrate`` > the first half of the
  ``eval`` images (at most ``calib_count``; evaluation then uses the other images only) > the
  same synthetic noise.

Calibration and evaluation images never overlap: files used for calibration are left out of the
evaluation set. Everything is read before any pass runs, so bad data fails fast and nothing is
written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.data.calibration import CalibrationData, load_calibration, synthetic_inputs
from onnxfit.data.model_info import ModelInfo, describe_model
from onnxfit.errors import InputError
from onnxfit.optimizer.options import OptimizeOptions
from onnxfit.verify.evalset import EvalSet, dataset_task, load_labelled
from onnxfit.verify.evaluator import Evaluator

logger = logging.getLogger(__name__)
#: Synthetic samples x largest tensor kept at most while verifying (see synthetic_count).
SAMPLE_BYTES = 128 * 2**20


@dataclass
class RunData:
    """Inputs for calibration and verification, with where they came from."""

    calibration: CalibrationData
    verify_inputs: CalibrationData | np.ndarray
    verify_source: str
    calibration_source: str
    synthetic: bool
    evaluator: Evaluator | None = None
    info: ModelInfo | None = None
    preset: str | None = None
    skipped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray | None:
        """Class labels of the verification images (labelled classification only)."""
        return self.evaluator.data.labels if self.evaluator is not None else None

    @property
    def verify_samples(self) -> int:
        if isinstance(self.verify_inputs, np.ndarray):
            return int(self.verify_inputs.shape[0])
        return self.verify_inputs.samples

    def verify_feeds(self, model: ir.Model, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Verification inputs as feed dicts sized for ``model``'s batch dimension."""
        if not isinstance(self.verify_inputs, np.ndarray):
            feeds = [dict(f) for f in self.verify_inputs.feeds]
            return feeds[:limit] if limit is not None else feeds
        name, batch = _first_input(model)
        arr = self.verify_inputs if limit is None else self.verify_inputs[:limit]
        return [{name: arr[i : i + batch]} for i in range(0, len(arr), batch)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "verification": self.verify_source,
            "verification_samples": self.verify_samples,
            "labels": self.evaluator is not None,
            "task": self.info.task if self.info is not None else None,
            "calibration": self.calibration_source,
            "calibration_samples": self.calibration.samples,
            "synthetic": self.synthetic,
            "preset": self.preset,
            "skipped": list(self.skipped),
            "notes": list(self.notes),
        }


def _first_input(model: ir.Model) -> tuple[str, int]:
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name not in inits:
            dim = v.shape[0] if v.shape is not None and len(v.shape) else None
            return v.name or "", dim if isinstance(dim, int) and dim > 0 else 8
    raise InputError("the model has no inputs")


def synthetic_count(model: ir.Model, wanted: int) -> int:
    """How many synthetic samples to verify on: ``wanted``, fewer (at least one) when the
    model's largest tensor times the count would pass :data:`SAMPLE_BYTES` (verification keeps
    every sample's outputs, and the per-layer error pass every intermediate, in memory)."""
    from onnxfit.analysis.lifetimes import value_bytes
    from onnxfit.analysis.shapes import infer_shapes
    from onnxfit.errors import OnnxfitError

    try:
        shaped = infer_shapes(model, batch=1)
    except OnnxfitError:  # shapes unknown: nothing to go by
        return wanted
    largest = 0
    for node in shaped.graph:
        for value in node.outputs:
            try:
                largest = max(largest, value_bytes(value) or 0)
            except OnnxfitError:
                continue
    count = max(1, min(wanted, SAMPLE_BYTES // largest)) if largest else wanted
    if count < wanted:
        logger.warning(
            "verifying on %d synthetic samples instead of %d: the largest tensor takes %.0f MiB",
            count, wanted, largest / 2**20,
        )  # fmt: skip
    return count


def _dims(value: ir.Value) -> list[int | str | None]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else d.value for d in value.shape]


def _spec(value: ir.Value) -> SimpleNamespace:
    try:
        dtype = np.dtype(value.dtype.numpy())  # type: ignore[union-attr]
    except (AttributeError, TypeError):  # no dtype, or UNDEFINED (declared outputs may say 0)
        dtype = np.dtype(np.float32)
    return SimpleNamespace(name=value.name or "", shape=_dims(value), dtype=dtype)


def image_model_info(
    model: ir.Model, *, preset: str | None = None, task: str | None = None
) -> ModelInfo | None:
    """What the model is (task, decoder, preset: :func:`describe_model`), or None when it is
    not a one-input image classifier / detector the evaluator can read."""
    inits = set(model.graph.initializers)
    inputs = [_spec(v) for v in model.graph.inputs if v.name not in inits]
    try:
        return describe_model(
            inputs,
            [_spec(v) for v in model.graph.outputs],
            preset=preset,
            task=task,
            metadata=model.metadata_props,
        )
    except InputError:
        if task is not None:
            raise
        return None


def _feeds(model: ir.Model, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    name, batch = _first_input(model)
    return [{name: x[i : i + batch]} for i in range(0, len(x), batch)]


def _split(data: CalibrationData, samples: int) -> tuple[CalibrationData, CalibrationData | None]:
    """(first ``samples`` samples, the rest or None) of ``data``, feed by feed."""
    head: list[dict[str, np.ndarray]] = []
    tail: list[dict[str, np.ndarray]] = []
    n = 0
    for f in data.feeds:
        size = next(iter(f.values())).shape[0]
        if n + size <= samples:
            head.append(f)
        elif n >= samples:
            tail.append(f)
        else:
            k = samples - n
            head.append({key: v[:k] for key, v in f.items()})
            tail.append({key: v[k:] for key, v in f.items()})
        n += size
    first = CalibrationData(head, data.source, data.synthetic, data.skipped, data.preset)
    rest = CalibrationData(tail, data.source, data.synthetic, [], data.preset) if tail else None
    return first, rest


def _calibration_files(src: Path, used: int, skipped: list[str]) -> list[Path]:
    """The image files :func:`load_calibration` read from folder ``src`` (sorted, minus the
    unreadable ones), the first ``used``."""
    from onnxfit.data.images import list_images

    bad = {s.split(": ", 1)[0] for s in skipped}
    return [p for p in list_images(src) if str(p) not in bad][:used]


def _read_eval(model: ir.Model, options: OptimizeOptions, say: Any) -> tuple[EvalSet, ModelInfo]:
    folder = Path(options.eval or "")
    if not folder.is_dir():
        raise InputError(f"{folder}: evaluation folder not found", hint="check --eval")
    task = dataset_task(folder)
    info = image_model_info(model, preset=options.preset, task=task)
    assert info is not None
    say(f"reading evaluation images ({folder})")
    return load_labelled(folder, info.preset, num_classes=info.num_classes), info


def load_run_data(model: ir.Model, options: OptimizeOptions, *, progress: Any = None) -> RunData:
    """Read the calibration / evaluation data the options name (see the module docstring).

    ``progress(label)`` is called before each read. Bad folders raise :class:`InputError`.
    """
    say = progress or (lambda label: None)
    notes: list[str] = []
    evalset, info = (None, None)
    if options.eval is not None:
        evalset, info = _read_eval(model, options, say)
    else:
        info = image_model_info(model, preset=options.preset)
    preset = info.preset.name if info is not None else options.preset
    calibration: CalibrationData
    verify: CalibrationData | np.ndarray | None = None
    skipped: list[str] = []
    if options.calibrate is not None:
        src = Path(options.calibrate)
        if not src.exists():
            raise InputError(f"{src}: calibration data not found", hint="check --calibrate")
        say(f"reading calibration data ({src})")
        is_images = src.is_dir() and not _has_arrays(src)
        if is_images:
            from onnxfit.data.images import list_images

            if not list_images(src):
                raise InputError(
                    f"{src}: no image files in the calibration folder",
                    hint="put .jpg/.png images there, or give .npy/.npz inputs",
                )
        extra = options.verify_count if evalset is None else 0
        loaded = load_calibration(
            model,
            src,
            preset=info.preset if info is not None and is_images else options.preset,
            limit=options.calib_count + extra,
        )
        skipped = [f"{s.path}: {s.reason}" for s in loaded.skipped]
        calibration, verify = _split(loaded, options.calib_count)
        calib_source = f"{src} ({calibration.samples} samples"
        calib_source += f", {len(skipped)} skipped)" if skipped else ")"
        if evalset is not None and is_images:
            used = _calibration_files(src, calibration.samples, skipped)
            evalset = evalset.without(used)
    elif evalset is not None:
        n_cal = min(options.calib_count, max(1, len(evalset) // 2))
        head, evalset = evalset.split(n_cal)
        assert info is not None
        calibration = CalibrationData(_feeds(model, head.x), f"{options.eval}", False, [], preset)
        calib_source = f"{options.eval} (first {n_cal} evaluation images; evaluated on the rest)"
    else:
        count = synthetic_count(model, options.synthetic_count)
        calibration = synthetic_inputs(
            model, count, seed=options.seed, input_shapes=options.input_shapes
        )
        calib_source = f"synthetic: {count} samples of N(0, 1), seed {options.seed}"
    evaluator = None
    if evalset is not None:
        assert info is not None
        if options.eval_count is not None:
            evalset = evalset.take(options.eval_count)
        if not len(evalset):
            raise InputError(
                f"{options.eval}: no evaluation image left after leaving out the calibration ones",
                hint="give --calibrate another folder, or more labelled images",
            )
        evaluator = Evaluator(evalset, info)
        verify = evalset.x
        verify_source = evalset.describe()
    elif isinstance(verify, CalibrationData):
        verify_source = f"{options.calibrate} ({verify.samples} held-out samples after the "
        verify_source += f"{calibration.samples} calibration ones, unlabelled)"
    else:
        verify = calibration
        verify_source = calib_source
        if options.calibrate is not None:
            notes.append(
                "verified on the calibration inputs themselves (no held-out inputs in "
                f"{options.calibrate} beyond --calib-count {options.calib_count}): optimistic"
            )
    return RunData(
        calibration=calibration,
        verify_inputs=verify,
        verify_source=verify_source,
        calibration_source=calib_source,
        synthetic=calibration.synthetic and evaluator is None,
        evaluator=evaluator,
        info=info,
        preset=preset,
        skipped=skipped,
        notes=notes,
    )


def _has_arrays(folder: Path) -> bool:
    return any(p.suffix.lower() in (".npy", ".npz") for p in folder.iterdir())
