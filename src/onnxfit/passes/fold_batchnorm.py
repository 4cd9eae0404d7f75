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

Names: the folded Conv / Gemm keeps the original Conv's (or Gemm's) name, and its metadata
(``onnxfit:from``) names both, e.g. ``conv1 + bn1``, so that reports speak the model's own names.

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

from onnxfit.passes.base import OnnxfitPass, name_after

logger = logging.getLogger(__name__)

_RULES: dict[str, pattern.RewriteRule] = {
    "Conv": fuse_batchnorm_into_conv_rule,
    "ConvTranspose": fuse_batchnorm_into_conv_transpose_rule,
    "Gemm": fuse_batchnorm_into_gemm_rule,
}


def _origins(model: ir.Model) -> dict[str, tuple[str, str]]:
    """BatchNormalization output name -> (producer name, BatchNormalization name)."""
    out = {}
    for node in model.graph:
        if node.op_type != "BatchNormalization" or not node.inputs or node.inputs[0] is None:
            continue
        producer = node.inputs[0].producer()
        if producer is not None and producer.op_type in _RULES and node.outputs[0].name:
            out[node.outputs[0].name] = (producer.name or "", node.name or "")
    return out


def _restore_names(model: ir.Model, origins: dict[str, tuple[str, str]]) -> None:
    """Give each folded node its producer's name (the rewrite makes a new, unnamed node)."""
    used = {n.name for n in model.graph}
    for node in model.graph:
        out = node.outputs[0].name if node.outputs else None
        if node.op_type not in _RULES or out not in origins:
            continue
        conv, bn = origins[out]
        if conv and node.name != conv and conv not in used:
            used.discard(node.name)
            name_after(node, conv, source=f"{conv} + {bn}")
            used.add(conv)


class FoldBatchNormPass(OnnxfitPass):
    """Fold every foldable BatchNormalization into its producer; stats count them by producer."""

    name = "fold-batchnorm"
    portable = True

    def run(self, model: ir.Model) -> bool:
        origins = _origins(model)
        folded: dict[str, int] = {}
        for op_type, rule in _RULES.items():
            count = pattern.RewriteRuleSet([rule]).apply_to_model(model)
            if count:
                folded[op_type] = count
        if folded:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            _restore_names(model, origins)
        left = [n.name or "(unnamed)" for n in model.graph if n.op_type == "BatchNormalization"]
        for name in left:
            logger.debug("BatchNormalization %s stays (no foldable producer)", name)
        self.stats["folded"] = folded
        self.stats["batchnorm_left"] = left
        return bool(folded)
