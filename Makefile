# One command each: `make demo` (set up + run the main job), `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export PYOPENGL_PLATFORM ?= egl

.PHONY: help setup demo test test-all lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:  ## create .venv and install (CPU torch first when none is installed)
	@bash scripts/setup.sh

demo: setup  ## built-in keypoint sequence -> meshes, renders and a GIF in outputs/demo
	$(VENV)/bin/halo demo --out outputs/demo

test: setup  ## the test suite (the same command CI runs)
	$(PY) -m pytest -q -n 2 -m "not slow"

test-all: setup  ## including slow tests
	$(PY) -m pytest -q -n 2

lint:  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup  ## speed / fidelity figures (see bench/)
	$(PY) bench/bench_mesh.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache
