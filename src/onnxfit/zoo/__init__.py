"""Reference architectures built directly as ONNX (no PyTorch): ResNet-18 and Tiny-YOLOv3.

The layouts are exact; the weights are random but deterministic (``numpy.random.default_rng(seed)``)
and *calibrated*: while a model is built, the same operators run eagerly in numpy on one
N(0, 1) input (from the same generator), and every BatchNormalization gets that input's
per-channel mean and (biased) variance as its running statistics, so each BN output has about
unit variance and activations stay finite and of sane size through the whole net. The
statistics are rounded to 10 significant bits so that other BLAS builds almost always reproduce
the same bytes; on one machine the same seed always gives byte-identical files.

Every model: opset 17, IR version 8 (loads in onnxruntime >= 1.12), input ``"input"`` float32
with a dynamic batch dimension ``"batch"``, BN left as BatchNormalization nodes (folding them is
a pass), node names like ``layer1.0.conv1`` and initializer names like torchvision state_dict
keys (``layer1.0.conv1.weight``, ``bn1.running_mean``).

* :func:`resnet18`: torchvision's ``resnet18`` layout (He et al. 2015, "Deep Residual Learning",
  arXiv:1512.03385; torchvision/models/resnet.py). Input [batch, 3, 224, 224], output
  ``"logits"`` [batch, num_classes]. 11,689,512 parameters (torchvision's count: every weight
  and bias, not BN running statistics), 11,699,112 stored values with the 9,600 running
  statistics; 46,815,926 bytes (44.65 MiB) saved with seed 0.
* :func:`yolov3_tiny`: Darknet's ``cfg/yolov3-tiny.cfg`` (Redmon & Farhadi 2018,
  arXiv:1804.02767), input [batch, 3, 416, 416], raw head outputs ``"out13"``
  [batch, 255, 13, 13] and ``"out26"`` [batch, 255, 26, 26] (255 = 3 anchors x (5 + 80)),
  no YOLO decoding in the graph. Initializers are named ``layers.<darknet index>.conv.weight``,
  ``layers.<i>.bn.running_var`` .... 8,852,366 parameters, 8,858,734 values with the 6,368 BN
  running statistics; 35,447,242 bytes (33.81 MiB) saved with seed 0.

Trained weights: :func:`load_darknet` puts Darknet's official ``yolov3-tiny.weights`` (checked
byte for byte against ``yolov3-tiny.cfg``) into the :func:`yolov3_tiny` graph and marks the model
(``metadata_props``) for the YOLOv3 decode and the ``darknet`` preprocessing preset. ResNet-18
has no trained weights here: it is always seeded random (untrained).

Modules: :mod:`~onnxfit.zoo._builder` (the calibrating tape builder), :mod:`~onnxfit.zoo.resnet`,
:mod:`~onnxfit.zoo.yolo`, :mod:`~onnxfit.zoo.darknet` (cfg and weights reader),
:mod:`~onnxfit.zoo.catalog` (specs, build by name, parameter counts, build-and-save); every
public name is re-exported here.
"""

from __future__ import annotations

from onnxfit.zoo._builder import BN_EPSILON, IR_VERSION, OPSET
from onnxfit.zoo.catalog import (
    ZOO_MODELS,
    ZOO_SPECS,
    ParamCount,
    ZooBuild,
    ZooSpec,
    build,
    build_and_save,
    canonical_name,
    count_parameters,
)
from onnxfit.zoo.darknet import load_darknet, parse_cfg, read_weights, yolov3_tiny_layout
from onnxfit.zoo.resnet import resnet18
from onnxfit.zoo.yolo import yolov3_tiny

__all__ = [
    "BN_EPSILON",
    "IR_VERSION",
    "OPSET",
    "ZOO_MODELS",
    "ZOO_SPECS",
    "ParamCount",
    "ZooBuild",
    "ZooSpec",
    "build",
    "build_and_save",
    "canonical_name",
    "count_parameters",
    "load_darknet",
    "parse_cfg",
    "read_weights",
    "resnet18",
    "yolov3_tiny",
    "yolov3_tiny_layout",
]
