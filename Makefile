# Two entry points for newcomers: `make serve` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
# Which torch build `make install` gets. The pin alone is NOT the CPU build: on Linux x86_64,
# PyPI's torch is the CUDA build (several GB of NVIDIA libraries). The CPU-only build comes
# from the PyTorch CPU wheel index, the default here; `make install TORCH_INDEX_URL=` uses
# whatever index pip is configured with (PyPI: the CUDA build; or a mirror of the CPU index).
# The Dockerfile's TORCH_INDEX_URL build argument works the same way.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH_INSTALL = $(BIN)/pip install -q $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL)) '$(TORCH_PIN)'
PORT ?= 50051
HTTP_PORT ?= 8080

.PHONY: install install-dev serve test lint typecheck protos bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch first, from TORCH_INDEX_URL, so that the extras find it installed and keep it.
install: $(BIN)/python
	$(TORCH_INSTALL)
	$(BIN)/pip install -q -e '.[server]'

install-dev: $(BIN)/python
	$(TORCH_INSTALL)
	$(BIN)/pip install -q -e '.[dev]'

# Prints the gRPC address, the HTTP API's and the web page's URL (http://127.0.0.1:$(HTTP_PORT)/).
serve: install
	$(BIN)/ferry serve --port $(PORT) --http-port $(HTTP_PORT)

test: install-dev
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	bash scripts/mypy.sh

protos:
	$(BIN)/python scripts/gen_protos.py

# The issue-16 engine table (ferry vs CTranslate2 vs transformers, 1 and 2 threads): ~25 min on 2 cores.
bench: install-dev
	nice -n -15 $(BIN)/python bench/table.py --limit 500 --rounds 2 --eager --out bench/results

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache
