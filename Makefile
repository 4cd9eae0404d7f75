# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv from nothing (python3 >= 3.11 must be on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench fuzz clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The demo: the trained Darknet YOLOv3-tiny (../shared/data/models/darknet) is imported, inspected
# for the console, optimized (FP16, verified on the COCO sample), evaluated before/after (mAP),
# run on a few images with boxes drawn, and compared side by side. Without the weights file the
# untrained zoo model stands in, and the demo says so (its mAP means nothing).
DATA := ../shared/data
WEIGHTS := $(DATA)/models/darknet/yolov3-tiny.weights
COCO := $(DATA)/coco-sample
DEMO_WEIGHTS := $(if $(wildcard $(WEIGHTS)),--weights $(WEIGHTS),)
DEMO_EVAL := $(if $(wildcard $(COCO)),--eval $(COCO) --eval-count 64,)
OF := $(VENV)/bin/onnxfit

demo: venv
	@mkdir -p build
	@echo "== 1. build YOLOv3-tiny: $(if $(DEMO_WEIGHTS),trained Darknet weights ($(WEIGHTS)),UNTRAINED seeded weights: $(WEIGHTS) not found - accuracy figures below mean nothing)"
	$(OF) zoo yolov3-tiny $(DEMO_WEIGHTS) -o build/yolov3-tiny.onnx --force
	@echo "== 2. inspect for the console"
	$(OF) inspect build/yolov3-tiny.onnx --target xbox-series-s
	@echo "== 3. optimize for the console ($(if $(DEMO_EVAL),verified by mAP@0.5 on $(COCO),verified on synthetic inputs: no COCO sample found))"
	$(OF) optimize build/yolov3-tiny.onnx -o build/yolov3-tiny-xbox.onnx \
		--target xbox-series-s --measure-runs 10 --force $(DEMO_EVAL)
	@echo "== 4. accuracy before / after"
	$(if $(wildcard $(COCO)),$(OF) eval build/yolov3-tiny.onnx $(COCO) --task detect,@echo "no COCO sample: eval skipped")
	$(if $(wildcard $(COCO)),$(OF) eval build/yolov3-tiny-xbox.onnx $(COCO) --task detect,@true)
	@echo "== 5. run on a few images, boxes drawn into build/drawn/"
	@rm -rf build/drawn build/drawn.jsonl
	$(if $(wildcard $(COCO)),$(OF) run build/yolov3-tiny-xbox.onnx $(wordlist 1,4,$(sort $(wildcard $(COCO)/images/val2017/*.jpg))) \
		--labels $(COCO)/coco80_names.txt --draw build/drawn -o build/drawn.jsonl,@echo "no COCO sample: run skipped")
	@echo "== 6. before / after, side by side (this CPU measures; the console is projected)"
	$(OF) compare build/yolov3-tiny.onnx build/yolov3-tiny-xbox.onnx --target xbox-series-s \
		--rounds 3 $(if $(wildcard $(COCO)),--eval $(COCO),)

test: venv
	$(PY) -m pytest -q

# The before/after table (plain ORT FP32 vs onnxfit variants) -> benchmarks/results/suite.md.
# BENCH_ARGS=--quick for a short run.
bench: venv
	$(PY) benchmarks/bench_suite.py $(BENCH_ARGS)

# The fuzzer (tests/fuzz): 2,000 mutated models through inspect + optimize --precision fp16 and
# 300 mutated image cases through run / eval, FUZZ_JOBS commands at a time (default: all cores);
# per-class counts -> benchmarks/results/fuzz.md, one JSON line per case -> build/fuzz.jsonl.
# Exit 1 when any case tracebacks, hangs, crashes, passes 1 GiB RSS or leaves files behind.
FUZZ_JOBS ?= $(shell nproc)
fuzz: venv
	@mkdir -p build
	PYTHONPATH=tests $(PY) -m fuzz --jobs $(FUZZ_JOBS) --report benchmarks/results/fuzz.md \
		--log build/fuzz.jsonl $(FUZZ_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
