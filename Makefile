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

demo: venv
	@mkdir -p build
	$(VENV)/bin/onnxfit zoo resnet18 -o build/resnet18.onnx --force
	$(VENV)/bin/onnxfit inspect build/resnet18.onnx --target xbox-series-s

test: venv
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(VENV)/bin/mypy

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
