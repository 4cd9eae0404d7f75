#!/usr/bin/env bash
# GPU figures: run on a machine with onnxruntime-gpu importable (PYTHONPATH) and an NVIDIA GPU.
# Writes into ${OUT:-benchmarks/results}: gpu.md (sessions vs plain ORT), bench-cuda.json
# (onnxfit bench through the CUDA provider with the per-operator profile) and compare-cuda.md
# (ResNet-18 FP32 vs the FP16 model `onnxfit optimize --target cuda` writes).
set -euo pipefail
out=${OUT:-benchmarks/results}
work=$(mktemp -d)
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1
onnxfit() { python3 -m onnxfit "$@"; }
python3 benchmarks/bench_gpu.py -o "$out/gpu.md"
onnxfit zoo resnet18 -o "$work/resnet18.onnx"
onnxfit optimize "$work/resnet18.onnx" -o "$work/resnet18-fp16.onnx" --target cuda --precision fp16
onnxfit bench "$work/resnet18.onnx" --target cuda --provider cuda --batch 1,64 --iterations 200 \
  --profile --json > "$out/bench-cuda.json"
onnxfit bench "$work/resnet18-fp16.onnx" --target cuda --provider cuda --batch 1,64 \
  --iterations 200 --json > "$out/bench-cuda-fp16.json"
for b in 1 64; do
  onnxfit compare "$work/resnet18.onnx" "$work/resnet18-fp16.onnx" --names fp32,fp16 \
    --target cuda --provider cuda --batch $b --markdown > "$out/compare-cuda-b$b.md"
done
echo "done: $out"
