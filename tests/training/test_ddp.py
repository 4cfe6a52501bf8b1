"""DDP through ``train.py`` with ``trainer=ddp_sim`` (2 CPU processes over gloo), the way users run it.

Both tests run the real entry point in a fresh root (``HALO_ROOT``) without pinning
``hydra.run.dir``/``hydra.sweep.dir``, so the Hydra + DDP duplicate-directory problem (each rank
creating its own timestamped directory, or re-running the sweep) would show up as extra
directories.  Marked slow (~30-50 s each); ``make test-cluster`` runs them.
"""

from __future__ import annotations

import math

import pytest
import torch
from omegaconf import OmegaConf

from tests.cluster_helpers import run_train, tiny_halo_data, wandb_run_record, wandb_runs  # noqa: F401
from tests.training.test_train import wandb_history

pytestmark = pytest.mark.slow

NUM_TRAIN = 8  # experiment=halo_base_tiny
PER_DEVICE_BATCH = 2
WORLD_SIZE = 2  # trainer=ddp_sim


def test_ddp_sim_trains_two_ranks_in_one_run_directory(tmp_path):
    """2 ranks x batch 2 over 8 hands: 2 optimizer steps per epoch (4 in one process), one of everything."""
    epochs = 2
    result = run_train(
        [
            "experiment=halo_base_tiny",
            "trainer=ddp_sim",
            f"data.cache_dir={tmp_path / 'cache'}",  # empty: the dataset is built in this run
            f"data.batch_size={PER_DEVICE_BATCH}",
            "trainer.max_steps=-1",
            f"trainer.max_epochs={epochs}",
            "trainer.val_check_interval=1.0",
            "trainer.check_val_every_n_epoch=1",
            "callbacks.mesh_validation.on_fit_end=false",
        ],
        tmp_path,
    )
    output = result.stdout + result.stderr

    # The dataset was generated once (by rank 0; rank 1 waited at Lightning's barrier).
    assert output.count("[halo] generating synthetic hands") == 1, output[-3000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in output

    runs = sorted((tmp_path / "outputs").rglob(".hydra"))
    assert len(runs) == 1, runs  # exactly one run directory (and one .hydra writer)
    run_dir = runs[0].parent
    assert run_dir.parent == tmp_path / "outputs" / "train" / "runs"

    # Steps: each rank reads its own half of the shuffled training set per epoch.
    steps_per_epoch = math.floor(NUM_TRAIN / (PER_DEVICE_BATCH * WORLD_SIZE))
    assert steps_per_epoch == 2
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    assert last["global_step"] == epochs * steps_per_epoch
    assert last["epoch"] == epochs - 1
    best = sorted((run_dir / "checkpoints").glob("epoch*.ckpt"))
    assert len(best) == 1 and (run_dir / "checkpoints" / "halo_base_best.pt").is_file()

    # One log per rank, rank 1 ran the same job (same config) in the same directory.
    assert (run_dir / "train.log").is_file()
    rank1_log = (run_dir / "train_rank1.log").read_text()
    assert "data: datamodules.hand_occupancy.SyntheticHandsDataModule" in rank1_log
    resolved = OmegaConf.load(run_dir / "config_resolved.yaml")
    assert resolved.trainer.devices == 2 and resolved.paths.output_dir == str(run_dir)

    # One W&B run, written by rank 0: one train/loss row per optimizer step.
    (wandb_file,) = wandb_runs(run_dir)
    history = wandb_history(wandb_file)
    assert len([row for row in history if "train/loss" in row]) == epochs * steps_per_epoch
    val = [row["val/iou"] for row in history if "val/iou" in row]
    assert len(val) == epochs and all(0.0 <= v <= 1.0 for v in val)
    assert wandb_run_record(wandb_file).run_group == ""  # a single run is not part of a sweep group

    # Mesh validation (rank 0 only): one mesh folder and one render per validation.
    assert len(list((run_dir / "meshes").iterdir())) == epochs
    assert len(list((run_dir / "renders").glob("epoch_*.png"))) == epochs


def test_ddp_sim_inside_a_multirun_keeps_one_directory_per_job(tmp_path, tiny_halo_data):  # noqa: F811
    """`-m` with DDP: rank 1 runs the sweep point it belongs to, in its job's directory (no re-run sweep)."""
    run_train(
        [
            "-m",
            "experiment=halo_base_tiny",
            "trainer=ddp_sim",
            *tiny_halo_data,
            "trainer.max_steps=2",
            "trainer.val_check_interval=2",
            "callbacks.mesh_validation=null",
            "model.lr=1e-3,3e-3",
        ],
        tmp_path,
    )
    outputs = tmp_path / "outputs" / "train"
    assert not (outputs / "runs").exists()  # no rank started a single run of its own
    (sweep_dir,) = sorted((outputs / "multiruns").iterdir())  # and no second sweep directory
    jobs = sorted(p.name for p in sweep_dir.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    for job, lr in zip(jobs, (1e-3, 3e-3), strict=True):
        run_dir = sweep_dir / job
        assert OmegaConf.load(run_dir / "config_resolved.yaml").model.lr == lr
        assert "data: datamodules" in (run_dir / "train_rank1.log").read_text()  # rank 1 ran this job
        last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
        assert last["global_step"] == 2
        (wandb_file,) = wandb_runs(run_dir)
        # W&B groups the sweep's jobs under the sweep directory.
        assert wandb_run_record(wandb_file).run_group == str(sweep_dir.relative_to(tmp_path))
