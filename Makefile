# One command each: `make train` (set up + run the main job), `make test` (set up + run the tests).
VENV ?= .venv
PY := $(VENV)/bin/python
export PYOPENGL_PLATFORM ?= egl

.PHONY: help setup train demo test test-fast test-cluster test-all lint format bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup:  ## create .venv and install (CPU torch first when none is installed)
	@bash scripts/setup.sh

train: setup  ## the main job: python train.py (synthetic hands -> trained HALO base, meshes, renders)
	$(PY) train.py

demo: setup  ## built-in keypoint sequence -> meshes, renders and a GIF in outputs/demo
	$(VENV)/bin/halo demo --out outputs/demo

test: test-fast test-cluster  ## the test suite (the same command CI runs): fast tests, then DDP + SLURM

test-fast: setup  ## every capability in a small configuration (~2-3 min on 2 cores)
	$(PY) -m pytest -q -n 2 -m "not slow"

test-cluster: setup  ## DDP (2 CPU processes) and a real local SLURM cluster (root: installs slurm-wlm + munge)
	$(PY) -m pytest -q -p no:xdist -m slow tests/training/test_ddp.py tests/training/test_cluster.py

test-all: setup  ## including slow tests
	$(PY) -m pytest -q -n 2

lint:  ## ruff lint + format check
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench: setup  ## speed / fidelity figures (see bench/)
	$(PY) bench/bench_mesh.py
	$(PY) bench/bench_inside.py
	$(PY) bench/bench_build.py
	$(PY) bench/bench_speed.py

clean:
	rm -rf outputs .pytest_cache .ruff_cache
