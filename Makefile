# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Both bootstrap .venv from nothing (python3 >= 3.11 must be on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The demo verifies on 16 ImageNet-sample images when ../shared/data is there, else on seeded
# synthetic inputs (the optimize report says which).
DEMO_IMAGES := ../shared/data/imagenet-sample/images
DEMO_DATA := $(if $(wildcard $(DEMO_IMAGES)),--calibrate $(DEMO_IMAGES) --calib-count 16,)

demo: venv
	@mkdir -p build
	$(VENV)/bin/onnxfit zoo resnet18 -o build/resnet18.onnx --force
	$(VENV)/bin/onnxfit inspect build/resnet18.onnx --target xbox-series-s
	@echo "verification data: $(if $(DEMO_DATA),16 images of $(DEMO_IMAGES),synthetic inputs (no ImageNet sample found))"
	$(VENV)/bin/onnxfit optimize build/resnet18.onnx -o build/resnet18-xbox.onnx \
		--target xbox-series-s --measure-runs 10 --force $(DEMO_DATA)

test: venv
	$(PY) -m pytest -q

# The before/after table (plain ORT FP32 vs onnxfit variants) -> benchmarks/results/suite.md.
# BENCH_ARGS=--quick for a short run.
bench: venv
	$(PY) benchmarks/bench_suite.py $(BENCH_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
