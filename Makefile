# Two entry points for newcomers: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_CPU := torch==2.13.0
PORT ?= 50051

.PHONY: install install-dev serve test lint typecheck protos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The CPU build of torch is pinned first so that no CUDA wheels are pulled in.
install: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e '.[server]'

install-dev: $(BIN)/python
	$(BIN)/pip install -q $(TORCH_CPU)
	$(BIN)/pip install -q -e '.[dev]'

serve: install
	$(BIN)/ferry serve --port $(PORT)

test: install-dev
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	bash scripts/mypy.sh

protos:
	$(BIN)/python scripts/gen_protos.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
