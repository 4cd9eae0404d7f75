#!/usr/bin/env bash
# The GPU column of the before/after table, and the latency model's GPU validation, on one host
# with an NVIDIA GPU. Run from the repository root:
#
#   bash benchmarks/gpu_run.sh cuda    WEIGHTS_DIR   # needs onnxruntime-gpu importable
#   bash benchmarks/gpu_run.sh webgpu  WEIGHTS_DIR   # needs onnxruntime>=1.32 + onnxruntime-ep-webgpu
#                                                    # and a Vulkan loader (VK_DRIVER_FILES)
#
# WEIGHTS_DIR holds yolov3-tiny.weights + yolov3-tiny.cfg (../shared/data/models/darknet); ResNet-18
# is the untrained zoo model. Everything is written under ${OUT:-benchmarks/results/gpu}:
#   cuda:   compare-cuda-b{1,64}.md/.json (FP32 vs FP16 through the CUDA EP, interleaved),
#           calibrate-cuda.md + h200-cuda.toml (latency model fitted and validated leave-one-out)
#   webgpu: bench-webgpu-yolo-fp16.json, parity-webgpu.txt (outputs vs the CPU provider),
#           calibrate-webgpu.md + h200-webgpu.toml
set -euo pipefail
lane=${1:?cuda or webgpu}
weights=${2:?folder with yolov3-tiny.weights and .cfg}
out=${OUT:-benchmarks/results/gpu}
mkdir -p "$out"
work=$(mktemp -d)
export PYTHONPATH=${PYTHONPATH:-}:$PWD/src PYTHONUNBUFFERED=1
onnxfit() { python3 -m onnxfit "$@"; }

onnxfit zoo yolov3-tiny --weights "$weights/yolov3-tiny.weights" --cfg "$weights/yolov3-tiny.cfg" \
  -o "$work/yolov3-tiny.onnx"
onnxfit zoo resnet18 -o "$work/resnet18.onnx"
for m in yolov3-tiny resnet18; do
  onnxfit optimize "$work/$m.onnx" -o "$work/$m-fp16.onnx" --target cuda --precision fp16 \
    --measure-runs 0 --force > "$out/optimize-$m-fp16.txt" 2>&1 || true
done

if [ "$lane" = cuda ]; then
  for b in 1 64; do
    for m in yolov3-tiny resnet18; do
      onnxfit compare "$work/$m.onnx" "$work/$m-fp16.onnx" --names "$m fp32,$m fp16" \
        --target cuda --provider cuda --batch $b --rounds 5 --json > "$out/compare-cuda-$m-b$b.json"
      onnxfit compare "$work/$m.onnx" "$work/$m-fp16.onnx" --names "$m fp32,$m fp16" \
        --target cuda --provider cuda --batch $b --rounds 5 --markdown > "$out/compare-cuda-$m-b$b.md"
    done
  done
  onnxfit calibrate --provider cuda --base cuda -o "$out/h200-cuda.toml" --validate --force \
    --save-measurements "$out/calib-cuda.json" \
    --rounds 3 --runs 30 --markdown > "$out/calibrate-cuda.md"
else
  onnxfit bench "$work/yolov3-tiny-fp16.onnx" --target cuda --provider webgpu --batch 1 \
    --iterations 100 --json > "$out/bench-webgpu-yolo-fp16.json"
  onnxfit bench "$work/yolov3-tiny.onnx" --target cuda --provider webgpu --batch 1 \
    --iterations 100 --json > "$out/bench-webgpu-yolo-fp32.json"
  python3 - "$work" > "$out/parity-webgpu.txt" <<'EOF'
import sys
import numpy as np
from onnxfit.runtime.session import Session
work = sys.argv[1]
x = np.random.default_rng(0).random((1, 3, 416, 416), np.float32)
for name in ("yolov3-tiny", "yolov3-tiny-fp16"):
    cpu = Session(f"{work}/{name}.onnx", target="cpu").run({"input": x})
    gpu = Session(f"{work}/{name}.onnx", target="cuda", providers=["WebGpuExecutionProvider"],
                  strict=True)
    got = gpu.run({"input": x})
    for k, ref in cpu.items():
        err = float(np.abs(got[k].astype(np.float32) - ref).max() / (np.abs(ref).max() + 1e-12))
        print(f"{name} {k} on {gpu.provider}: max |diff| / max |ref| = {err:.2e}")
EOF
  onnxfit calibrate --provider webgpu --base cuda -o "$out/h200-webgpu.toml" --validate --force \
    --save-measurements "$out/calib-webgpu.json" \
    --rounds 3 --runs 30 --markdown > "$out/calibrate-webgpu.md"
fi
echo "done: $out"
