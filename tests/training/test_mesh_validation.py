"""Lightning checkpoints in halo.core.checkpoint, halo.eval.mesh_evaluation, and the MeshValidation callback in a real fit."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from unittest.mock import MagicMock

import numpy as np
import pytest
import torch
import trimesh
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from callbacks.mesh_validation import MeshValidation, curve_y_limits
from datamodules.hand_occupancy import SyntheticHandsDataModule
from halo.core.checkpoint import CheckpointError, load_model
from halo.core.model import HaloModel, NetworkConfig
from halo.data.build import BuildConfig, build_synthetic_dataset
from halo.eval.mesh_evaluation import ROW_COLUMNS, evaluate_split, load_eval_sample, occupancy_iou
from lightning_modules.halo_base import HaloBaseModule
from lightning_modules.halo_base import occupancy_iou as module_occupancy_iou
from tests.fake_hand_data import CapsuleHandsDataModule
from tests.helpers import quiet_trainer, random_hands

REPO_ROOT = Path(__file__).resolve().parents[2]
SMALL_NET = {"hidden_dims": [32, 32, 32, 32]}


# ----------------------------------------------------------------------------- Lightning checkpoints


def test_lightning_checkpoint_loads_without_lightning(tmp_path):
    dm = CapsuleHandsDataModule(num_train=2, num_val=1, batch_size=2, num_points=128, num_iou_points=128)
    module = HaloBaseModule(net=SMALL_NET, loss="bce", lr=1e-2)
    trainer = quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)

    model, meta = load_model(ckpt, trust_pickle=False)  # weights_only: no pickled code runs
    assert meta["source_format"] == "lightning" and meta["global_step"] == 1
    assert meta["hyper_parameters"]["loss"] == "bce"
    assert model.config == module.halo_model.config and not model.training
    points = torch.rand(2, 300, 3, dtype=torch.float32) * 0.2 - 0.1
    kp = random_hands(2, seed=3, dtype=torch.float32)
    module.eval()
    with torch.no_grad():
        assert torch.equal(model.occupancy(points, kp), module.halo_model.occupancy(points, kp))

    # halo/ stays Lightning-free: loading the .ckpt imports neither lightning nor hydra.
    code = (
        "import sys; from halo.core.checkpoint import load_model; "
        f"m, meta = load_model({str(ckpt)!r}, trust_pickle=False); "
        "bad = [n for n in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if n in sys.modules]; "
        "assert not bad, bad; print(meta['global_step'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_lightning_checkpoint_problems_are_named(tmp_path):
    model = HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16)))
    state = {f"model.{k}": v for k, v in model.state_dict().items()}
    base = {"pytorch-lightning_version": "2.6.0", "global_step": 3, "epoch": 0}

    no_net = tmp_path / "no_net.ckpt"
    torch.save({**base, "state_dict": state, "hyper_parameters": {"lr": 1e-3}}, no_net)
    with pytest.raises(
        CheckpointError, match=r"no_net\.ckpt: Lightning checkpoint without hyper_parameters\['net'\]"
    ):
        load_model(no_net)

    no_model = tmp_path / "no_model.ckpt"
    other = {k.replace("model.", "encoder."): v for k, v in state.items()}
    torch.save({**base, "state_dict": other, "hyper_parameters": {"net": model.config.to_dict()}}, no_model)
    with pytest.raises(CheckpointError, match=r"no_model\.ckpt: .*no 'model\.\*' keys"):
        load_model(no_model)

    mismatch = tmp_path / "mismatch.ckpt"
    torch.save(
        {**base, "state_dict": state, "hyper_parameters": {"net": {"hidden_dims": [32, 32, 32, 32]}}},
        mismatch,
    )
    with pytest.raises(
        CheckpointError, match=r"mismatch\.ckpt: state_dict does not match hyper_parameters\['net'\]"
    ):
        load_model(mismatch)

    good = tmp_path / "good.ckpt"
    torch.save({**base, "state_dict": state, "hyper_parameters": {"net": model.config.to_dict()}}, good)
    loaded, meta = load_model(good, trust_pickle=False)
    assert meta["global_step"] == 3 and meta["datamodule_hyper_parameters"] is None
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


# ----------------------------------------------------------------------------- halo.eval.mesh_evaluation


@pytest.fixture(scope="module")
def val_split(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval_data")
    config = BuildConfig(n_points=3000, n_iou_points=20000, n_pointcloud=3000)
    build_synthetic_dataset(root, num={"val": 2}, config=config, progress=False)
    return root / "val"


def test_occupancy_iou_is_the_training_definition():
    pred = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.6, 0.4, 0.4, 0.4]])
    gt = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    # threshold 0.5: {0,1} vs {0,2} -> 1/3; both empty -> 1 (nothing to miss); {0} vs {0} -> 1.
    assert occupancy_iou(pred, gt, 0.5).tolist() == pytest.approx([1 / 3, 1.0, 1.0])
    # threshold 0.95 applies to the prediction only (ground truth stays >= 0.5): nothing predicted.
    assert occupancy_iou(pred, gt, 0.95).tolist() == pytest.approx([0.0, 1.0, 0.0])
    # The training loop logs val/iou with this very function, so `halo eval meshes` reproduces it.
    assert module_occupancy_iou is occupancy_iou


def test_eval_sample_falls_back_to_the_uniform_half_of_points(val_split, tmp_path):
    sample = load_eval_sample(val_split, "synth_val_000000", iou_points=500)
    assert sample.iou_source == "points_iou" and sample.iou_points.shape == (500, 3)
    # A copy of the split without points_iou/ (the published test set's layout).
    import shutil

    copy = tmp_path / "val"
    shutil.copytree(val_split, copy, ignore=shutil.ignore_patterns("points_iou"))
    sample = load_eval_sample(copy, "synth_val_000000")
    assert sample.iou_source == "points (uniform half)" and len(sample.iou_points) == 1500


def test_evaluate_split_untrained_model_scores_low(val_split, tmp_path):
    torch.manual_seed(0)
    model = HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16)))
    rows = evaluate_split(
        model, val_split, limit=1, resolution_0=16, upsampling_steps=1, n_samples=2000,
        mesh_dir=tmp_path / "meshes", progress=False,
    )  # fmt: skip
    assert len(rows) == 1
    row = rows[0]
    assert list(row)[: len(ROW_COLUMNS)] == list(ROW_COLUMNS)
    assert row["name"] == "synth_val_000000" and row["seconds"] > 0
    assert row["occupancy_iou"] < 0.2 and (row["empty"] == 1.0 or row["iou"] < 0.2)
    assert (tmp_path / "meshes" / "synth_val_000000.ply").is_file()


@pytest.mark.reference
def test_evaluate_split_original_model_on_synthetic_hands(val_split, halo_reference):
    model, _ = load_model(halo_reference / "model_best.pt")
    rows = evaluate_split(model, val_split, n_samples=20_000, progress=False)
    # Measured (BuildConfig above, 32/2): occupancy IoU 0.75 / 0.80, mesh IoU within 0.01 of it,
    # Chamfer-L1 ~3 mm (the synthetic hand is not MANO: bench_synthetic_realism.py reads 0.70 IoU).
    for row in rows:
        assert row["occupancy_iou"] > 0.5 and row["iou"] > 0.5, row
        assert abs(row["iou"] - row["occupancy_iou"]) < 0.05, row
        assert 0.5 < row["chamfer_l1_mm"] < 6.0 and row["normal_consistency"] > 0.7, row
        assert row["empty"] == 0.0 and row["faces"] > 1000


# ----------------------------------------------------------------------------- the callback in a real fit


def test_mesh_validation_in_a_fit_and_eval_reproduces_val_iou(tmp_path):
    dm = SyntheticHandsDataModule(
        tmp_path / "cache", num_train=4, num_val=2, num_test=1, n_points=3000, n_iou_points=3000,
        n_pointcloud=2000, build_workers=1, batch_size=2, points_per_sample=256,
    )  # fmt: skip
    module = HaloBaseModule(net=SMALL_NET, loss="bce", lr=1e-2)
    callback = MeshValidation(
        num_hands=2, resolution_0=16, upsampling_steps=2, n_samples=2000, render_size=128
    )
    at_validation = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/iou", mode="max", save_top_k=1)
    run = tmp_path / "run"
    trainer = quiet_trainer(
        run, max_steps=3, val_check_interval=2, check_val_every_n_epoch=None, num_sanity_val_steps=1,
        logger=CSVLogger(run, name="csv"), callbacks=[callback, at_validation], enable_checkpointing=True,
        log_every_n_steps=1,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)

    # One validation (step 2; the sanity check is skipped) plus the final extraction at step 3.
    assert [h["step"] for h in callback.history] == [2.0]
    for tag in ("epoch_0000_step_0000002", "final_step_0000003"):
        for name in ("synth_val_000000", "synth_val_000001"):
            assert (run / "meshes" / tag / f"{name}.ply").stat().st_size > 0
        assert (run / "meshes" / tag / "metrics.csv").is_file()
        image = np.asarray(Image.open(run / "renders" / f"{tag}.png").convert("RGB"))
        assert image.shape[1] == 4 * 128 + 5 * 4 and image.std() > 10  # 2 hands x (pred | GT), not blank
    curve = np.asarray(Image.open(run / "renders" / "val_iou_curve.png").convert("RGB"))
    assert curve.std() > 10
    assert (run / "renders" / "val_iou_curve.csv").read_text().startswith("train_wall_s,wall_s,step,val_iou")

    # Metrics reached the logger (validation: via pl_module.log; final: logger.log_metrics).
    rows = list(csv.DictReader(open(run / "csv" / "version_0" / "metrics.csv")))
    mesh_rows = [r for r in rows if r.get("val_mesh/iou")]
    assert [int(r["step"]) for r in mesh_rows] == [1, 2]  # Lightning's step: index of the last trained batch
    for key in ("val_mesh/chamfer_l1_mm", "val_mesh/fscore_1mm", "val_mesh/seconds_per_mesh"):
        assert all(np.isfinite(float(r[key])) for r in mesh_rows)
    assert "val_mesh/iou" in trainer.callback_metrics

    # evaluate_split on the same validation names and IoU points, with the weights the validation
    # saw (ModelCheckpoint saved them at step 2), reproduces the logged val/iou.
    val_iou = float(next(r for r in rows if r.get("val/iou"))["val/iou"])
    model, meta = load_model(at_validation.best_model_path, trust_pickle=False)
    assert meta["global_step"] == 2
    ds = dm._dataset("val")
    evaluated = evaluate_split(
        model, ds.split_dir, names=ds.names, iou_points=ds.iou_points_per_sample,
        resolution_0=16, upsampling_steps=1, n_samples=1000, progress=False,
    )  # fmt: skip
    mean = float(np.mean([r["occupancy_iou"] for r in evaluated]))
    assert abs(mean - val_iou) < 1e-6, (mean, val_iou)
    assert meta["datamodule_hyper_parameters"]["root"] == str(dm.root.resolve())


# ----------------------------------------------------------------------------- media dispatch, state


def test_renders_and_meshes_go_to_image_capable_loggers(tmp_path):
    grid = np.full((8, 16, 3), 200, np.uint8)
    glb = tmp_path / "hand.glb"
    trimesh.creation.box().export(glb)
    wandb_logger = MagicMock(spec=WandbLogger)
    tb_logger = MagicMock(spec=TensorBoardLogger)
    tb_logger.experiment = MagicMock()
    csv_logger = CSVLogger(tmp_path)
    trainer = SimpleNamespace(global_step=7, loggers=[wandb_logger, tb_logger, csv_logger])
    MeshValidation()._log_media(trainer, grid, [glb], "epoch_0000_step_0000007", ["hand"])

    wandb_logger.log_image.assert_called_once()
    kwargs = wandb_logger.log_image.call_args.kwargs
    assert kwargs["key"] == "val_mesh/renders" and kwargs["step"] == 6 and kwargs["images"][0] is grid
    logged = wandb_logger.log_metrics.call_args
    assert list(logged.args[0]) == ["val_mesh/meshes"] and logged.kwargs["step"] == 6
    assert type(logged.args[0]["val_mesh/meshes"][0]).__name__ == "Object3D"
    tb_logger.experiment.add_image.assert_called_once_with(
        "val_mesh/renders", grid, global_step=6, dataformats="HWC"
    )


def test_history_survives_a_checkpoint_and_settings_are_checked(tmp_path):
    cb = MeshValidation()
    cb.history = [{"wall_s": 5.0, "train_wall_s": 4.0, "step": 250.0, "val_iou": 0.5}]
    cb.validations, cb.mesh_seconds = 3, 1.0
    path = tmp_path / "state.pt"
    torch.save(cb.state_dict(), path)
    restored = MeshValidation()
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert restored.history == cb.history and restored.validations == 3 and restored.mesh_seconds == 1.0
    assert restored._write_curve(tmp_path / "renders").is_file()
    for bad in ({"every_n_epochs": 0}, {"num_hands": 0}, {"resolution_0": 1}, {"n_samples": 0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            MeshValidation(**bad)


def test_curve_y_axis_zooms_to_the_values():
    # A trained run's 0.861 -> 0.891: drawn over 0.841..0.911, not 0..1 (where it looked flat).
    low, high = curve_y_limits([0.861, 0.880, 0.885, 0.891])
    assert low == pytest.approx(0.841) and high == pytest.approx(0.911)
    # One value still gets an axis 0.05 tall; values near 1 are capped at 1, near 0 at 0.
    assert curve_y_limits([0.5]) == pytest.approx((0.48, 0.53))
    assert curve_y_limits([0.97, 0.995]) == pytest.approx((0.95, 1.0))
    assert curve_y_limits([0.01, 0.2]) == pytest.approx((0.0, 0.22))
    assert curve_y_limits([]) == (0.0, 1.0)  # nothing finite yet
