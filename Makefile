# Every target creates .venv (with python3) and installs effjax into it first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
BENCH_OUT ?= bench-out
# On a GPU or TPU host jax's accelerator plugin is installed too, so that `make bench` runs
# the accelerator sweep (to 64K tokens) there without edits.
JAX_EXTRA ?= $(shell if command -v nvidia-smi >/dev/null 2>&1; then echo cuda12; \
	elif ls /dev/accel0 /dev/vfio/0 >/dev/null 2>&1; then echo tpu; fi)

.PHONY: install bench bench-quick test test-slow lint mutate docs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs,peers]"
	$(if $(JAX_EXTRA),$(PY) -m pip install --quiet -U "jax[$(JAX_EXTRA)]")
	touch $(STAMP)

install: $(STAMP)

bench: $(STAMP)
	$(VENV)/bin/effjax bench --out $(BENCH_OUT)

bench-quick: $(STAMP)
	$(VENV)/bin/effjax bench --quick --out $(BENCH_OUT)

# Whole files per worker: a module's fixtures and compiled programs are built once.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Small bugs planted in effjax/attention and effjax/compress must fail the fast tests.
mutate: $(STAMP)
	$(PY) tools/mutate.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The documentation site (Sphinx): API reference from the docstrings, guides in docs/guides.
docs: $(STAMP)
	$(PY) -m sphinx -W --keep-going -q -b html docs docs/_build/html
	@echo "docs: docs/_build/html/index.html"
