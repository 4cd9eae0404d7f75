"""``fold-batchnorm``: BatchNormalization folded into the Conv / ConvTranspose / Gemm before it.

Rewrite (pattern / check / rewrite, the onnxscript rules in
``onnxscript.rewriter.rules.common``)::

    BatchNormalization(Conv(x, W, B), gamma, beta, mean, var)
      -> Conv(x, W * s, (B - mean) * s + beta)        with s = gamma / sqrt(var + epsilon)

``s`` scales W along its output-channel axis: axis 0 for Conv and for Gemm with ``transB=1``,
axis 1 for Gemm with ``transB=0`` (Gemm's ``beta`` attribute is folded into the new bias), and
per group for ConvTranspose. The check refuses (and the BatchNormalization stays) when the
conv output has another consumer or is a graph output, when W, B or a BatchNormalization
parameter is not a constant initializer (or is a graph input), or when W or B is shared with
another node. New weights and biases are float initializers of the original dtype.

Portable: the output is plain ONNX Conv/Gemm, which every execution provider runs (DirectML
included). Stats: ``folded`` per producer op, ``batchnorm_left`` (names of those that stay).
"""

from __future__ import annotations

import logging

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

from onnxfit.passes.base import OnnxfitPass

logger = logging.getLogger(__name__)

_RULES: dict[str, pattern.RewriteRule] = {
    "Conv": fuse_batchnorm_into_conv_rule,
    "ConvTranspose": fuse_batchnorm_into_conv_transpose_rule,
    "Gemm": fuse_batchnorm_into_gemm_rule,
}


class FoldBatchNormPass(OnnxfitPass):
    """Fold every foldable BatchNormalization into its producer; stats count them by producer."""

    name = "fold-batchnorm"
    portable = True

    def run(self, model: ir.Model) -> bool:
        folded: dict[str, int] = {}
        for op_type, rule in _RULES.items():
            count = pattern.RewriteRuleSet([rule]).apply_to_model(model)
            if count:
                folded[op_type] = count
        if folded:
            ir.passes.common.RemoveUnusedNodesPass()(model)
        left = [n.name or "(unnamed)" for n in model.graph if n.op_type == "BatchNormalization"]
        for name in left:
            logger.debug("BatchNormalization %s stays (no foldable producer)", name)
        self.stats["folded"] = folded
        self.stats["batchnorm_left"] = left
        return bool(folded)
