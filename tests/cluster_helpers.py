"""Shared by tests/training/test_ddp.py and tests/training/test_cluster.py: the tiny experiment's dataset, built once
per test session, and running ``train.py`` the way a user does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.training.test_train import compose_train, read_wandb_records

TRAIN_PY = REPO_ROOT / "train.py"
EXPERIMENT = "halo_base_tiny"


@pytest.fixture(scope="session")
def tiny_halo_data(tmp_path_factory) -> list[str]:
    """Overrides pointing ``experiment=halo_base_tiny`` at its dataset, built once for all tests/workers.

    (``SyntheticHandsDataModule.prepare_data`` takes a lock file, so concurrent xdist workers
    build it once and the others reuse it.)
    """
    import hydra

    cache = tmp_path_factory.getbasetemp().parent / "halo_tiny_cache"
    cfg = compose_train([f"experiment={EXPERIMENT}", f"data.cache_dir={cache}"], cache)
    hydra.utils.instantiate(cfg.data).prepare_data()
    return [f"data.cache_dir={cache}"]


def train_env(root: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, "HALO_ROOT": str(root), "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    env.update(extra)
    return env


def run_train(args: list[str], root: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess:
    """``python train.py ARGS`` started in ``root`` (= ``HALO_ROOT``); asserts success."""
    result = subprocess.run(
        [sys.executable, str(TRAIN_PY), *args],
        cwd=root,
        env=train_env(root, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def wandb_runs(run_dir: Path) -> list[Path]:
    """The offline W&B run files of a run directory (one per attempt of a job)."""
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


def wandb_run_record(path: Path):
    """The ``run`` record (id, group, ...) of an offline W&B run file."""
    return next(r.run for r in read_wandb_records(path) if r.WhichOneof("record_type") == "run")
