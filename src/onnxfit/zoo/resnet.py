"""ResNet-18 in torchvision's layout (He et al. 2015, arXiv:1512.03385), built as ONNX."""

from __future__ import annotations

import logging
import time

import numpy as np
import onnx_ir as ir

from onnxfit.zoo._builder import Net, Traced, check_args

logger = logging.getLogger(__name__)


def _basic_block(net: Net, x: Traced, name: str, planes: int, stride: int) -> Traced:
    """torchvision BasicBlock: conv3x3-BN-ReLU-conv3x3-BN, + identity (or 1x1 conv-BN), ReLU."""

    def he(cout: int, k: int) -> float:  # torchvision: kaiming_normal_(mode="fan_out")
        return float(np.sqrt(2.0 / (cout * k * k)))

    y = net.conv(x, f"{name}.conv1", planes, 3, stride=stride, std=he(planes, 3))
    y = net.relu(net.bn(y, f"{name}.bn1"), f"{name}.relu1")
    y = net.bn(net.conv(y, f"{name}.conv2", planes, 3, std=he(planes, 3)), f"{name}.bn2")
    identity = x
    if stride != 1 or x.data.shape[1] != planes:
        d = net.conv(x, f"{name}.downsample.0", planes, 1, stride=stride, std=he(planes, 1))
        identity = net.bn(d, f"{name}.downsample.1")
    return net.relu(net.add(y, identity, f"{name}.add"), f"{name}.relu2")


def resnet18(*, seed: int = 0, num_classes: int = 1000) -> ir.Model:
    """ResNet-18 exactly as torchvision lays it out, with seeded, BN-calibrated random weights.

    conv1 7x7/2 (64, no bias) - bn1 - relu - maxpool 3x3/2 pad 1 - layer1..layer4 (two
    BasicBlocks each; 64, 128, 256, 512 channels; the first block of layers 2-4 has stride 2 and
    a 1x1 conv + BN ``downsample``) - GlobalAveragePool - Flatten - Gemm ``fc`` (512 ->
    num_classes, with bias). Conv weights: Kaiming normal (fan_out, ReLU gain), as torchvision;
    fc: U(+-1/sqrt(512)) as ``nn.Linear``. With 1000 classes: 11,689,512 parameters
    (+ 9,600 BN running statistics). Input ``input`` [batch, 3, 224, 224]; output ``logits``.
    """
    check_args(seed, num_classes)
    start = time.perf_counter()
    net = Net(np.random.default_rng(seed), (3, 224, 224))
    x = net.conv(net.input, "conv1", 64, 7, stride=2, std=float(np.sqrt(2.0 / (64 * 49))))
    x = net.relu(net.bn(x, "bn1"), "relu")
    x = net.maxpool(x, "maxpool", 3, 2, (1, 1, 1, 1))
    for i, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            stride = 2 if (i > 1 and j == 0) else 1
            x = _basic_block(net, x, f"layer{i}.{j}", planes, stride)
    x = net.op("GlobalAveragePool", "avgpool", [x.value], x.data.mean(axis=(2, 3), keepdims=True))
    x = net.op("Flatten", "flatten", [x.value], x.data.reshape(x.data.shape[0], -1), axis=1)
    bound = 1.0 / np.sqrt(512)
    w = net.rng.uniform(-bound, bound, (num_classes, 512)).astype(np.float32)
    b = net.rng.uniform(-bound, bound, num_classes).astype(np.float32)
    inputs = [x.value, net.param("fc.weight", w), net.param("fc.bias", b)]
    logits = net.op("Gemm", "fc", inputs, x.data @ w.T + b, out="logits", transB=1)
    model = net.model([logits], name="resnet18", doc="ResNet-18 (torchvision layout)", seed=seed)
    logger.info("built resnet18 (seed %d) in %.2f s", seed, time.perf_counter() - start)
    return model
