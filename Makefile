# Two-command set-up: `make demo` (the main job) and `make test` (lint, types, tests, docs).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
export PYTHONHASHSEED ?= 0
export NO_MKDOCS_2_WARNING ?= 1

.PHONY: install demo test lint typecheck unit docs docs-serve bench fashion-mnist clean

$(PY):
	python3 -m venv $(VENV)

# Reinstalls only when the project's metadata or the pinned torch/torchvision pair changes.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet --constraint constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/ldt demo

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

unit: install
	$(PY) -m pytest
	$(PY) -m pytest --doctest-modules lightning_dnn_tricks
	$(PY) -m pytest --markdown-docs --markdown-docs-syntax=superfences -m markdown-docs docs/*.md docs/methods/*.md

docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

docs-serve: install
	$(VENV)/bin/mkdocs serve

test: lint typecheck unit docs

fashion-mnist: install
	$(PY) -c "import sys; from lightning_dnn_tricks.data.fashion_mnist import main; sys.exit(main())"

bench: fashion-mnist  # stops with what to install when the data is missing
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/norm_loss_claim.py
	$(PY) benchmarks/weight_align_claim.py
	$(PY) benchmarks/weight_align_speed.py
	$(PY) benchmarks/sgdg2_claim.py
	$(PY) benchmarks/frank_wolfe_claim.py
	$(PY) benchmarks/bnsr_claim.py
	$(PY) benchmarks/pruning_claim.py
	$(PY) benchmarks/bnsr_skew_diagnosis.py
	$(PY) benchmarks/weight_norm_supervision_claim.py
	$(PY) benchmarks/weight_norm_supervision_overhead.py
	$(PY) benchmarks/weight_norm_supervision_bound.py
	$(PY) benchmarks/importance_sampling_claim.py

clean:
	rm -rf site .pytest_cache .mypy_cache .ruff_cache
