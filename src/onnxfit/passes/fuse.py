"""``fuse``: Conv / Gemm followed by an activation, counted, and optionally fused for ORT.

Pattern / check / rewrite (onnxscript rewriter rules, one per producer and activation)::

    Act(Conv(x, W, B))  ->  com.microsoft.FusedConv(x, W, B, activation="Act", activation_params)
    Act(Gemm(A, B, C))  ->  com.microsoft.FusedGemm(A, B, C, activation="Act", activation_<attr>)

The check refuses when the Conv/Gemm output has another consumer or is a graph output, when
the weight is not float32 (ORT's CPU FusedConv/FusedGemm kernels are float32 only:
``contrib_ops/cpu/fused_conv.cc``), or when Clip's min/max are not constants.

* ``emit="none"`` (default, portable): the graph is left as it is and ``stats["fusable"]``
  counts the pairs. DirectML fuses these itself at session creation, and onnxruntime's own
  EXTENDED optimization level makes the same FusedConv on CPU/CUDA.
* ``emit="fusedconv"``: writes the com.microsoft ops, which only the CPU and CUDA execution
  providers run. Activations follow ORT's own fusions (``core/optimizer/conv_activation_fusion.cc``,
  ``gemm_activation_fusion.cc``): on ``provider="cpu"`` Conv + Relu, Tanh, Sigmoid, LeakyRelu,
  Clip, HardSigmoid (the MLAS activations of ``contrib_ops/cpu/fused_activation.cc``) and Gemm +
  Relu, Tanh, Sigmoid, LeakyRelu, HardSigmoid, Elu, Selu, Softplus, Softsign, ThresholdedRelu;
  on ``provider="cuda"`` only Conv + Relu (the CUDA FusedConv kernel).

Measured (``benchmarks/fusedconv.py``: zoo ResNet-18 with BN folded, batch 1, ORT 1.32 CPU, 2
threads, on the project's busy 2-core host, 3 runs): FusedConv written offline ran no faster
than the unfused graph at ORT's BASIC or EXTENDED level (all within +-3 %, i.e. noise), and
ORT's default ALL level (NCHWc layouts) beat all of them by about 20 %. So ``emit="none"``
stays the default for every target; ``fusedconv`` is there for runtimes that cannot fuse.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import MatchResult, RewriteRuleClassBase, pattern

from onnxfit.errors import InputError
from onnxfit.passes.base import OnnxfitPass

MS_DOMAIN = "com.microsoft"

#: Activations ORT's CPU FusedConv runs, with the attributes that become activation_params.
CONV_ACTIVATIONS_CPU: dict[str, tuple[tuple[str, float], ...]] = {
    "Relu": (),
    "Tanh": (),
    "Sigmoid": (),
    "LeakyRelu": (("alpha", 0.01),),
    "Clip": (),  # min/max from inputs (opset >= 11) or attributes (opset 6)
    "HardSigmoid": (("alpha", 0.2), ("beta", 0.5)),
}
CONV_ACTIVATIONS_CUDA: dict[str, tuple[tuple[str, float], ...]] = {"Relu": ()}
#: Activations ORT's CPU FusedGemm runs (its attributes are copied as activation_<name>).
GEMM_ACTIVATIONS_CPU = (
    "Relu",
    "Tanh",
    "Sigmoid",
    "LeakyRelu",
    "HardSigmoid",
    "Elu",
    "Selu",
    "Softplus",
    "Softsign",
    "ThresholdedRelu",
)

_F32_MIN = float(np.finfo(np.float32).min)
_F32_MAX = float(np.finfo(np.float32).max)


def _float32_weight(value: ir.Value | None) -> bool:
    return value is not None and value.dtype == ir.DataType.FLOAT


def _clip_bounds(node: ir.Node) -> tuple[float, float] | None:
    """Constant (min, max) of a Clip node, or None when a bound is computed at run time."""
    if "min" in node.attributes or "max" in node.attributes:  # opset 6
        lo = node.attributes["min"].as_float() if "min" in node.attributes else _F32_MIN
        hi = node.attributes["max"].as_float() if "max" in node.attributes else _F32_MAX
        return lo, hi
    bounds = [_F32_MIN, _F32_MAX]
    for i in (1, 2):
        if len(node.inputs) > i and node.inputs[i] is not None:
            tensor = ir.convenience.get_const_tensor(node.inputs[i])  # type: ignore[arg-type]
            if tensor is None:
                return None
            bounds[i - 1] = float(tensor.numpy().reshape(-1)[0])
    return bounds[0], bounds[1]


class _ActivationFusion(RewriteRuleClassBase):
    """``act(producer(x, ...))`` -> the com.microsoft fused op, for one producer and activation."""

    def __init__(self, producer: str, activation: str) -> None:
        super().__init__(name=f"{producer}+{activation}")
        self.producer = producer
        self.activation = activation

    def pattern(self, op: Any, x: ir.Value) -> Any:
        inner = getattr(op, self.producer)(x, _allow_other_inputs=True, _outputs=["inner_out"])
        return getattr(op, self.activation)(inner, _allow_other_inputs=True, _outputs=["act_out"])

    def check(
        self, context: Any, x: ir.Value, inner_out: ir.Value, act_out: ir.Value
    ) -> MatchResult:
        result = MatchResult()
        inner = inner_out.producer()
        act = act_out.producer()
        if inner is None or act is None or act.domain not in ("", "ai.onnx"):
            return result.fail("not an ONNX-domain activation")
        if not _float32_weight(inner.inputs[1] if len(inner.inputs) > 1 else None):
            return result.fail(f"{self.producer} weight is not float32")
        if self.activation == "Clip" and _clip_bounds(act) is None:
            return result.fail("Clip bounds are not constants")
        return result

    def rewrite(self, op: Any, x: ir.Value, inner_out: ir.Value, act_out: ir.Value) -> Any:
        inner = inner_out.producer()
        act = act_out.producer()
        assert inner is not None and act is not None
        attrs: dict[str, Any] = {k: v for k, v in inner.attributes.items()}
        attrs["activation"] = self.activation
        if self.producer == "Conv":
            params: list[float] = []
            if self.activation == "Clip":
                bounds = _clip_bounds(act)
                assert bounds is not None
                params = list(bounds)
            else:
                for attr, default in CONV_ACTIVATIONS_CPU[self.activation]:
                    a = act.attributes.get(attr)
                    params.append(a.as_float() if a is not None else default)
            if params:
                attrs["activation_params"] = params
            fused_op = "FusedConv"
        else:
            for key, act_attr in act.attributes.items():
                attrs[f"activation_{key}"] = act_attr.value
            fused_op = "FusedGemm"
        return op.op(fused_op, *inner.inputs, _domain=MS_DOMAIN, **attrs)


def fusion_rules(provider: Literal["cpu", "cuda"]) -> list[pattern.RewriteRule]:
    """The producer + activation rules ORT's ``provider`` kernels support."""
    conv = CONV_ACTIVATIONS_CPU if provider == "cpu" else CONV_ACTIVATIONS_CUDA
    rules = [_ActivationFusion.rule("Conv", act) for act in conv]
    if provider == "cpu":
        rules += [_ActivationFusion.rule("Gemm", act) for act in GEMM_ACTIVATIONS_CPU]
    return rules


def count_fusable(model: ir.Model, rules: list[pattern.RewriteRule]) -> dict[str, int]:
    """``{"Conv+Relu": n, ...}``: pairs the rules match (and check), without rewriting."""
    counts: dict[str, int] = {}
    for node in model.graph:
        for rule in rules:
            if rule.match(model, model.graph, node):
                counts[str(rule)] = counts.get(str(rule), 0) + 1
                break
    return counts


class FusePass(OnnxfitPass):
    """Count Conv/Gemm + activation pairs; with ``emit="fusedconv"`` fuse them for ORT CPU/CUDA.

    ``portable`` is True for ``emit="none"`` only (checked per instance by :attr:`is_portable`).
    """

    name = "fuse"
    portable = True

    def __init__(
        self,
        *,
        emit: Literal["none", "fusedconv"] = "none",
        provider: Literal["cpu", "cuda"] = "cpu",
    ) -> None:
        super().__init__()
        if emit not in ("none", "fusedconv"):
            raise InputError(f"fuse: unknown emit={emit!r}", hint="use 'none' or 'fusedconv'")
        if provider not in ("cpu", "cuda"):
            raise InputError(f"fuse: unknown provider={provider!r}", hint="use 'cpu' or 'cuda'")
        self.emit = emit
        self.provider = provider

    @property
    def is_portable(self) -> bool:
        return self.emit == "none"

    def run(self, model: ir.Model) -> bool:
        rules = fusion_rules(self.provider)
        # Count what any provider could fuse (CPU set is the widest), then what this one will.
        self.stats["fusable"] = count_fusable(model, fusion_rules("cpu"))
        self.stats["emit"] = self.emit
        if self.emit == "none":
            self.stats["fused"] = 0
            return False
        fused = pattern.RewriteRuleSet(rules).apply_to_model(model)
        if fused:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            if MS_DOMAIN not in model.graph.opset_imports:
                model.graph.opset_imports[MS_DOMAIN] = 1
        self.stats["fused"] = fused
        return bool(fused)
