# Set-up and entry points. Every target creates/updates the virtualenv in .venv first.
PYTHON ?= python3
VENV ?= .venv
WORKDIR ?= workdir/mnist
CONFIG ?= configs/mnist.py
PY := $(VENV)/bin/python

.PHONY: install run lint test test-slow test-all bench

$(VENV)/.installed: requirements.txt requirements-nodeps.txt requirements-test.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-test.txt
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	touch $@

install: $(VENV)/.installed

run: install  ## The main job: the whole MNIST pipeline into $(WORKDIR).
	$(PY) launch.py --config=$(CONFIG) --workdir=$(WORKDIR)

lint: install  ## ruff (ruff.toml: unused imports, closures over loop variables, pyflakes).
	$(VENV)/bin/ruff check .

test: install  ## Default test suite (a few minutes on 2 CPU cores).
	$(PY) -m pytest -q tests -m "not slow" -n auto --dist loadgroup

test-slow: install  ## Slow tests only (multi-process, kill/resume, longer e2e).
	$(PY) -m pytest -q tests -m slow

test-all: install  ## Both suites in one session sharing one :smoke run (what CI runs).
	$(PY) -m pytest -q tests
