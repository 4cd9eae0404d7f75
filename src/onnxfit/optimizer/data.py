"""The data an optimization runs on: calibration inputs, verification inputs and labels.

Sources, in order of preference:

* verification: ``eval`` (images + ``labels.tsv``: accuracy of both models) > ``calibrate``
  (the user's inputs, no labels) > seeded synthetic noise (then every report says so);
* calibration (INT8 ranges, FP16 activation ranges): ``calibrate`` > the first ``calib_count``
  ``eval`` images > the same synthetic noise.

Everything is read before any pass runs, so bad data fails fast and nothing is written.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit.data.calibration import CalibrationData, load_calibration, synthetic_inputs
from onnxfit.errors import InputError
from onnxfit.optimizer.options import OptimizeOptions

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """Inputs for calibration and verification, with where they came from."""

    calibration: CalibrationData
    verify_inputs: CalibrationData | np.ndarray
    labels: np.ndarray | None
    verify_source: str
    calibration_source: str
    synthetic: bool
    preset: str | None = None
    skipped: list[str] = field(default_factory=list)

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
            "labels": self.labels is not None,
            "calibration": self.calibration_source,
            "calibration_samples": self.calibration.samples,
            "synthetic": self.synthetic,
            "preset": self.preset,
            "skipped": list(self.skipped),
        }


def _first_input(model: ir.Model) -> tuple[str, int]:
    inits = set(model.graph.initializers)
    for v in model.graph.inputs:
        if v.name not in inits:
            dim = v.shape[0] if v.shape is not None and len(v.shape) else None
            return v.name or "", dim if isinstance(dim, int) and dim > 0 else 8
    raise InputError("the model has no inputs")


def _input_specs(model: ir.Model) -> list[ir.Value]:
    inits = set(model.graph.initializers)
    return [v for v in model.graph.inputs if v.name not in inits]


def _dims(value: ir.Value) -> list[int | str | None]:
    if value.shape is None:
        return []
    return [d if isinstance(d, int) else d.value for d in value.shape]


def num_classes(model: ir.Model) -> int | None:
    """C of the first output shaped [N, C] (or [N, C, 1, 1]) with a fixed C > 1, else None."""
    for out in model.graph.outputs:
        dims = _dims(out)
        c = dims[1] if len(dims) >= 2 else None
        if isinstance(c, int) and c > 1 and all(d == 1 for d in dims[2:]):
            return c
    return None


def guess_model_preset(model: ir.Model, preset: str | None) -> str:
    """The name of ``preset`` (checked), or of the model's own
    (:func:`onnxfit.data.model_info.model_preset` decides; readers resize it to the input)."""
    from onnxfit.data.model_info import model_preset

    return model_preset(model, preset).name


def load_run_data(model: ir.Model, options: OptimizeOptions, *, progress: Any = None) -> RunData:
    """Read the calibration / evaluation data the options name (see the module docstring).

    ``progress(label)`` is called before each read. Bad folders raise :class:`InputError`.
    """
    say = progress or (lambda label: None)
    skipped: list[str] = []
    preset = None
    eval_x: np.ndarray | None = None
    labels: np.ndarray | None = None
    if options.eval is not None:
        from onnxfit.verify import load_eval_set

        folder = Path(options.eval)
        if not folder.is_dir():
            raise InputError(f"{folder}: evaluation folder not found", hint="check --eval")
        classes = num_classes(model)
        if classes is None:
            raise InputError(
                "--eval needs a classifier (an output shaped [N, C]); this model has none",
                hint="use --calibrate DIR to verify a detector or other model on real inputs",
            )
        preset = guess_model_preset(model, options.preset)
        say(f"reading evaluation images ({folder})")
        eval_x, labels = load_eval_set(
            folder, preset, limit=options.eval_count, num_classes=classes
        )
    calibration: CalibrationData
    if options.calibrate is not None:
        src = Path(options.calibrate)
        if not src.exists():
            raise InputError(f"{src}: calibration data not found", hint="check --calibrate")
        say(f"reading calibration data ({src})")
        if src.is_dir() and not _has_arrays(src):
            from onnxfit.data.images import list_images

            if not list_images(src):
                raise InputError(
                    f"{src}: no image files in the calibration folder",
                    hint="put .jpg/.png images there, or give .npy/.npz inputs",
                )
        if preset is None and src.is_dir() and not _has_arrays(src):
            preset = guess_model_preset(model, options.preset)
        calibration = load_calibration(
            model, src, preset=preset or options.preset, limit=options.calib_count
        )
        skipped = [f"{s.path}: {s.reason}" for s in calibration.skipped]
        calib_source = f"{src} ({calibration.samples} samples"
        calib_source += f", {len(skipped)} skipped)" if skipped else ")"
    elif eval_x is not None:
        name, batch = _first_input(model)
        part = eval_x[: options.calib_count]
        feeds = [{name: part[i : i + batch]} for i in range(0, len(part), batch)]
        calibration = CalibrationData(feeds, f"{options.eval} (eval images)", False, [], preset)
        calib_source = f"{options.eval} (first {len(part)} evaluation images)"
    else:
        calibration = synthetic_inputs(model, options.synthetic_count, seed=options.seed)
        calib_source = (
            f"synthetic: {options.synthetic_count} samples of N(0, 1), seed {options.seed}"
        )
    if eval_x is not None:
        verify: CalibrationData | np.ndarray = eval_x
        verify_source = f"{options.eval} ({len(eval_x)} labelled images, preset {preset})"
    else:
        verify = calibration
        verify_source = calib_source
    return RunData(
        calibration=calibration,
        verify_inputs=verify,
        labels=labels,
        verify_source=verify_source,
        calibration_source=calib_source,
        synthetic=calibration.synthetic and eval_x is None,
        preset=preset,
        skipped=skipped,
    )


def _has_arrays(folder: Path) -> bool:
    return any(p.suffix.lower() in (".npy", ".npz") for p in folder.iterdir())
