"""Ablation of the reconstruction options on the trained YOLOv3-tiny (FP32, one split).

Calibrates on the first 32 COCO-sample images, scores mAP@0.5 on the other 32, and prints one
line per variant given on the command line, ``METHOD:SPARSITY[:key=value...]`` with keys
``scope`` (global / layer), ``damp``, ``bias_correction`` (0 / 1), ``correct`` (0 / 1: refit
to the dense model's outputs), ``allocation`` (output / sensitivity / measured) and
``alloc=prebn`` (per-layer ratios from one global magnitude threshold over
the weights *before* BatchNorm folding, the issue's prototype allocation).

Run:  .venv/bin/python benchmarks/ablation_prune_recon.py /tmp/y.onnx reconstruct:0.7:damp=0.1 ...
(``/tmp/y.onnx``: ``onnxfit zoo yolov3-tiny --weights .../yolov3-tiny.weights -o /tmp/y.onnx``)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from onnxfit import io
from onnxfit.passes.cleanup import CleanupPass
from onnxfit.passes.fold_batchnorm import FoldBatchNormPass
from onnxfit.pruning.reconstruct import ReconstructPrunePass
from onnxfit.pruning.unstructured import find_weights, make_masks
from onnxfit.verify.evalset import load_labelled
from onnxfit.verify.evaluator import Evaluator, model_info

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    unfolded = io.load(sys.argv[1])
    CleanupPass()(unfolded)
    m = io.clone(unfolded)
    FoldBatchNormPass()(m)
    cal, held = load_labelled(DATA / "coco-sample", "yolov3-tiny").split(32)
    ev = Evaluator(held, model_info(m, preset="yolov3-tiny", task="detect"))

    def score(x: Any) -> float:
        return 100 * ev.accuracy(x).metrics["map50"]

    print(f"dense {score(m):.2f}", flush=True)
    for arg in sys.argv[2:]:
        method, sparsity, *rest = arg.split(":")
        kw: dict[str, Any] = dict(x.split("=") for x in rest)
        ratios = None
        if kw.pop("alloc", None) == "prebn":
            refs, _ = find_weights(unfolded)
            masks = make_masks(refs, sparsity=float(sparsity))
            ratios = {str(r.nodes[0].name): masks[r.name].size / r.size for r in refs}
        for key in ("damp",):
            if key in kw:
                kw[key] = float(kw[key])
        for key in ("bias_correction", "correct"):
            if key in kw:
                kw[key] = kw[key] == "1"
        c = io.clone(m)
        t = time.perf_counter()
        p = ReconstructPrunePass(
            sparsity=None if ratios else float(sparsity), ratios=ratios, method=method,
            feeds=[{"input": cal.x}], **kw,
        )  # fmt: skip
        p(c)
        per = " ".join(f"{t.name.split('.')[1]}:{t.sparsity:.2f}" for t in p.tensors)
        print(f"{arg}: mAP@0.5 {score(c):.2f} ({time.perf_counter() - t:.0f} s; {per})", flush=True)


if __name__ == "__main__":
    main()
