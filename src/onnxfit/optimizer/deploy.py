"""The deploy bundle: what a console's C++ runtime needs to run the optimized model as is.

``OUT.deploy.json`` (schema :data:`SCHEMA_VERSION`) holds:

* ``model``: file name, bytes, sha256, precision, opset and IR version;
* ``versions``: onnxfit and onnxruntime (the runtime that verified it);
* ``inputs`` / ``outputs``: names, shapes (free dimensions fixed where overridden), dtypes;
* ``preprocessing``: for an image model the preset (size, layout NCHW, crop or letterbox and
  its placement and pad value, channel order, scale, mean, std, and the formula);
  ``postprocessing``: task, decoder, classes, thresholds;
* ``memory``: weights, activation arena, inputs/outputs and their sum (the plan), the budget;
* ``session``: the ORT settings the target needs (:func:`onnxfit.runtime.session.deploy_settings`)
  with console-sane threads — the game owns the cores: 1 intra-op thread on a GPU target (the
  work is on the GPU; FINDINGS: 8 threads collapsed throughput on the console, about 6 are
  usable by a game), the target's worker cores on a CPU target — and thread spinning off
  through session config entries (``session.intra_op.allow_spinning``,
  ``session.inter_op.allow_spinning`` = ``"0"``, ORT's documented keys);
* ``directml``: for a DirectML target, the C++ that hands the game's own ``ID3D12Device`` and
  ``ID3D12CommandQueue`` to ORT (``OrtDmlApi::SessionOptionsAppendExecutionProvider_DML1``
  with an ``IDMLDevice`` from ``DMLCreateDevice``), so ORT records on the game's queue instead
  of creating its own device;
* ``golden``: ``OUT.golden.npz`` beside it — up to :data:`GOLDEN_SAMPLES` real (or, without
  data, synthetic) inputs as ``input:<name>`` and the written model's outputs on onnxruntime's
  CPU provider here as ``output:<name>``, with the tolerance a dev-kit parity test should use.
"""

from __future__ import annotations

import hashlib
import io as _io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from onnxfit import atomic
from onnxfit.data.model_info import ModelInfo
from onnxfit.targets import Target

SCHEMA_VERSION = 1
GOLDEN_SAMPLES = 4
#: Parity tolerance per precision, relative to the largest golden output magnitude: a device
#: computes in its own order (and FP16 / INT8 kernels round differently from ORT's CPU).
TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2, "int8": 5e-2}
SPIN_OFF = {"session.intra_op.allow_spinning": "0", "session.inter_op.allow_spinning": "0"}

DML_CPP = [
    "// The game's own D3D12 device and queue run the model (no second device, no extra queue).",
    "#include <DirectML.h>",
    "#include <dml_provider_factory.h>  // d3d12_xs.h on Xbox Series (_GAMING_XBOX_SCARLETT)",
    "Microsoft::WRL::ComPtr<IDMLDevice> dml_device;",
    "THROW_IF_FAILED(DMLCreateDevice(d3d12_device, DML_CREATE_DEVICE_FLAG_NONE,",
    "                                IID_PPV_ARGS(&dml_device)));",
    "const OrtDmlApi* dml_api = nullptr;",
    "Ort::ThrowOnError(Ort::GetApi().GetExecutionProviderApi(",
    '    "DML", ORT_API_VERSION, reinterpret_cast<const void**>(&dml_api)));',
    "Ort::SessionOptions session_options;",
    "session_options.DisableMemPattern();                      // DirectML requires it",
    "session_options.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);  // DirectML requires it",
    "session_options.SetIntraOpNumThreads(1);                  // the game owns the cores",
    'session_options.AddConfigEntry("session.intra_op.allow_spinning", "0");',
    'session_options.AddConfigEntry("session.inter_op.allow_spinning", "0");',
    "Ort::ThrowOnError(dml_api->SessionOptionsAppendExecutionProvider_DML1(",
    "    session_options, dml_device.Get(), command_queue));  // the game's ID3D12CommandQueue*",
    "Ort::Session session(env, model_path, session_options);   // one Run at a time per session",
]


def sha256_of(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _dims(value: ir.Value, free: Mapping[str, int]) -> list[int | str | None]:
    if value.shape is None:
        return []
    out: list[int | str | None] = []
    for d in value.shape:
        name = d if isinstance(d, int) else d.value
        out.append(free.get(name, name) if isinstance(name, str) else name)
    return out


def io_specs(model: ir.Model, free: Mapping[str, int]) -> tuple[list[dict], list[dict]]:
    """(inputs, outputs) as ``{"name", "shape", "dtype"}`` dicts (free dims fixed)."""
    inits = set(model.graph.initializers)

    def spec(v: ir.Value) -> dict[str, Any]:
        dtype = str(np.dtype(v.dtype.numpy())) if v.dtype is not None else None
        return {"name": v.name, "shape": _dims(v, free), "dtype": dtype}

    ins = [spec(v) for v in model.graph.inputs if v.name not in inits]
    return ins, [spec(v) for v in model.graph.outputs]


def preprocessing(info: ModelInfo | None) -> dict[str, Any] | None:
    """The preprocessing of an image model (None for a model the preset authority does not
    read)."""
    if info is None:
        return None
    p = info.preset
    return {
        "preset": p.name,
        "size_hw": list(p.size),
        "layout": "NCHW",
        "dtype": str(info.input_dtype),
        "mode": p.mode,
        "resize_shorter_side_to": p.resize_to if p.mode == "crop" else None,
        "letterbox_placement": p.placement if p.mode == "letterbox" else None,
        "pad_value": p.pad_value if p.mode == "letterbox" else None,
        "channel_order": p.channel_order,
        "scale": p.scale,
        "mean": list(p.mean),
        "std": list(p.std),
        "formula": "value[c] = (pixel[c] * scale - mean[c]) / std[c], pixel 0-255",
    }


def golden(
    model: ir.Model, feeds: list[dict[str, np.ndarray]], *, samples: int = GOLDEN_SAMPLES
) -> dict[str, np.ndarray]:
    """``input:<name>`` / ``output:<name>`` arrays: the first ``samples`` of ``feeds`` and the
    model's outputs on them (ORT CPU)."""
    from onnxfit.verify.runner import first_samples, merge_feeds, run_all

    inputs = merge_feeds(first_samples(feeds, samples))
    outputs = run_all(model, [inputs])
    return {**{f"input:{k}": v for k, v in inputs.items()},
            **{f"output:{k}": v for k, v in outputs.items()}}  # fmt: skip


def write_golden(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``.npz`` of ``arrays``, written atomically."""
    buf = _io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic.write_bytes(path, buf.getvalue())


def bundle(
    *,
    model: ir.Model,
    model_file: Path,
    golden_file: Path,
    golden_arrays: Mapping[str, np.ndarray],
    target: Target,
    precision: str,
    info: ModelInfo | None,
    session: dict[str, Any],
    memory: dict[str, Any],
    free_dims: Mapping[str, int],
    postprocessing: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The deploy.json content (module docstring)."""
    import onnxruntime as ort

    from onnxfit import __version__

    ins, outs = io_specs(model, free_dims)
    is_dml = "DmlExecutionProvider" in target.providers[:1]
    threads = 1 if target.is_gpu else session.get("intra_op_num_threads")
    session = {
        **session,
        "intra_op_num_threads": threads,
        "inter_op_num_threads": 1,
        "session_config_entries": dict(SPIN_OFF),
    }
    scale = max((float(np.max(np.abs(v))) for k, v in golden_arrays.items()
                 if k.startswith("output:") and v.size), default=0.0)  # fmt: skip
    rel = TOLERANCE.get(precision, 1e-4)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": {
            "file": model_file.name,
            "bytes": model_file.stat().st_size,
            "sha256": sha256_of(model_file),
            "precision": precision,
            "opset": model.opset_imports.get("", model.opset_imports.get("ai.onnx")),
            "ir_version": model.ir_version,
        },
        "versions": {"onnxfit": __version__, "onnxruntime": ort.__version__},
        "target": target.name,
        "inputs": ins,
        "outputs": outs,
        "preprocessing": preprocessing(info),
        "postprocessing": postprocessing,
        "memory": memory,
        "session": session,
        # the C++ that takes the game's device and queue, plus the pre-flight (which nodes run
        # on DirectML, graph capture, dims to pin) the optimizer recorded in the session
        "directml": {"cpp": list(DML_CPP), **dict(session.get("directml") or {})}
        if is_dml
        else None,
        "golden": {
            "file": golden_file.name,
            "samples": int(next(iter(golden_arrays.values())).shape[0]) if golden_arrays else 0,
            "arrays": sorted(golden_arrays),
            "computed_with": f"onnxruntime {ort.__version__} CPUExecutionProvider",
            "tolerance_abs": rel * scale,
            "tolerance_rule": f"max |device - golden| <= {rel:g} x the largest golden output "
            f"magnitude ({precision})",
        },
    }
