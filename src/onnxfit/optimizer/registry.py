"""The one name -> pass table (DESIGN habit 1), used by ``onnxfit optimize --passes a,b,c``.

Add a pass by importing its class here and adding one line to :data:`PASSES`.
"""

from __future__ import annotations

import inspect
from typing import Any

from onnxfit.errors import InputError
from onnxfit.passes.base import OnnxfitPass
from onnxfit.passes.cleanup import CleanupPass
from onnxfit.passes.dequantize import DequantizePass
from onnxfit.passes.fold_batchnorm import FoldBatchNormPass
from onnxfit.passes.fp16 import Fp16Pass
from onnxfit.passes.fuse import FusePass
from onnxfit.passes.int8 import Int8DynamicPass, Int8StaticPass
from onnxfit.pruning.channel_ls import ReconstructChannelsPass
from onnxfit.pruning.reconstruct import ReconstructPrunePass
from onnxfit.pruning.sparse import SparseStoragePass

#: Registry name -> pass class. Names are the ones the CLI and reports show.
PASSES: dict[str, type[OnnxfitPass]] = {
    "cleanup": CleanupPass,
    "fold-batchnorm": FoldBatchNormPass,
    "fuse": FusePass,
    "dequantize": DequantizePass,
    "fp16": Fp16Pass,
    "int8": Int8StaticPass,
    "int8-dynamic": Int8DynamicPass,
    "prune": ReconstructPrunePass,
    "prune-channels": ReconstructChannelsPass,
    "sparse-storage": SparseStoragePass,
}


def pass_options(name: str) -> dict[str, Any]:
    """The keyword options of pass ``name`` and their defaults."""
    cls = _lookup(name)
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def make_pass(name: str, **options: Any) -> OnnxfitPass:
    """A new pass ``name`` with ``options``; InputError for an unknown name or option."""
    cls = _lookup(name)
    known = pass_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InputError(
            f"pass {name!r} has no option {', '.join(unknown)}",
            hint=f"its options: {', '.join(known) or '(none)'}",
        )
    return cls(**options)


def _lookup(name: str) -> type[OnnxfitPass]:
    cls = PASSES.get(name)
    if cls is None:
        raise InputError(f"unknown pass {name!r}", hint=f"known passes: {', '.join(PASSES)}")
    return cls
