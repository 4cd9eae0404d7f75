"""``optimize()`` on the real models in ../shared/data (small subsets; the full runs are in
``benchmarks/bench_optimize.py --real``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxfit.optimizer import optimize

pytestmark = [pytest.mark.needs_data, pytest.mark.slow]


def test_shufflenet_int8_retargeted_to_fp16(shared_data: Path, tmp_path: Path) -> None:
    """The zoo's INT8 QDQ ShuffleNetV2 -> dequantize -> FP16 for the console, on 40 labelled
    images: accuracy judged against the INT8 original."""
    src = shared_data / "models" / "shufflenet-v2-12-qdq.onnx"
    out = tmp_path / "shufflenet-xbox.onnx"
    result = optimize(
        src,
        out,
        target="xbox-series-s",
        eval=shared_data / "imagenet-sample",
        eval_count=40,
        measure_runs=0,
    )
    assert result.plan.pass_names[:2] == ["cleanup", "dequantize"]
    assert result.plan.precision == "fp16" and result.plan.model_precision == "int8"
    dq = next(p for p in result.passes if p.name == "dequantize")
    assert dq.stats["relu_inserted"] == 37  # the hidden ReLUs of the INT8 model
    assert result.gate.measure == "top1_drop" and result.gate.passed
    assert "candidate_top1" in result.gate.details
    v = result.verification
    assert v.samples == 40 and "top1" in v.candidate_accuracy
    # calibrated on the first 100 labelled images, evaluated on 40 others
    assert "first 100 evaluation images" in result.data["calibration"]
    assert result.after.file_bytes < 0.6 * result.before.file_bytes * 4  # fp16 of an int8 file
    assert out.exists()


def test_yolox_fp16_boxes_agree(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "models" / "yolox_nano.onnx"
    result = optimize(
        src,
        tmp_path / "yolox-fp16.onnx",
        target="xbox-series-s",
        calibrate=shared_data / "coco-sample" / "images" / "val2017",
        calib_count=8,
        measure_runs=0,
    )
    v = result.verification
    assert v.task == "detect" and v.samples == 56  # the images after the 8 calibration ones
    assert v.agreement is not None and v.agreement >= 0.875
    assert result.gate.measure == "box_disagreement" and result.gate.passed
    assert result.after.file_bytes <= 0.51 * result.before.file_bytes
