"""Model passes: one module per pass, each an :class:`onnx_ir.passes.InPlacePass` subclass.

* :mod:`onnxfit.passes.base` — :class:`OnnxfitPass` (stats, report), :func:`run_passes`;
* :mod:`onnxfit.optimizer.registry` — the name -> pass table :data:`PASSES` and :func:`make_pass`;
* ``cleanup``, ``fold-batchnorm``, ``fuse``, ``dequantize``, ``fp16`` (and
  :mod:`onnxfit.passes.activations`, the statistics behind the automatic fp16 block list).

Importing this package is cheap; the pass modules (onnxscript) load when first used.
"""

from __future__ import annotations
