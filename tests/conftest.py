"""Shared fixtures: the real data in ../shared/data and the zoo reference models.

Tests that read ../shared/data take the ``shared_data`` fixture. When the folder is absent such a
test *fails*, unless it is marked ``@pytest.mark.needs_data``, in which case it is skipped with
the reason. Set ONNXFIT_SHARED_DATA to point elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("ONNXFIT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    return SHARED_DATA


@pytest.fixture
def shared_data(request: pytest.FixtureRequest) -> Path:
    """Path of ../shared/data; a missing folder fails the test unless it is marked needs_data."""
    if not (SHARED_DATA / "models").is_dir():
        msg = f"real data not found at {SHARED_DATA} (set ONNXFIT_SHARED_DATA)"
        if request.node.get_closest_marker("needs_data"):
            pytest.skip(msg)
        pytest.fail(msg)
    return SHARED_DATA


def shufflenet_qdq_top1() -> float:
    """Top-1 (%) of the zoo's ShuffleNetV2 QDQ model on the 500-image sample *on this CPU*.

    SOURCES.md's 77.80 % was measured on a CPU with AVX-512 VNNI. Without VNNI (AVX2 only),
    onnxruntime's fused U8S8 QLinearConv kernels saturate their int16 accumulation
    (``vpmaddubsw``): the same model, same images, gives 71.40 % at ORT_ENABLE_ALL and 77.80 %
    with the QDQ graph left unfused (ORT_ENABLE_BASIC). Measured on an AVX2 AMD EPYC, ORT 1.32.
    """
    from onnxfit.targets import cpu_features, has_vnni

    return 77.80 if has_vnni(cpu_features()) else 71.40


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def zoo_resnet18(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 from :mod:`onnxfit.zoo` (seed 0), built once per session and saved; its path."""
    from onnxfit import io, zoo

    path = tmp_path_factory.mktemp("zoo") / "resnet18.onnx"
    io.save(zoo.resnet18(seed=0), path)
    return path


@pytest.fixture(scope="session")
def zoo_yolov3_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny-YOLOv3 from :mod:`onnxfit.zoo` (seed 0), built once per session and saved; its path."""
    from onnxfit import io, zoo

    path = tmp_path_factory.mktemp("zoo") / "yolov3-tiny.onnx"
    io.save(zoo.yolov3_tiny(seed=0), path)
    return path
