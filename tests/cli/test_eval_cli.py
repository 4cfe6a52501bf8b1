"""``halo eval meshes`` / ``halo generate meshes`` end to end, from a training checkpoint alone."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from PIL import Image

from datamodules.hand_occupancy import SyntheticHandsDataModule
from halo.cli.app import main
from halo.core.checkpoint import save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.eval.mesh_evaluation import ROW_COLUMNS
from halo.hands.sequences import random_skeletons
from lightning_modules.halo_base import HaloBaseModule

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST = ["--resolution-0", "16", "--upsampling-steps", "1", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, SyntheticHandsDataModule]:
    """A Lightning checkpoint of a 1-step fit; its datamodule records the dataset root."""
    tmp = tmp_path_factory.mktemp("eval_cli")
    dm = SyntheticHandsDataModule(
        tmp / "cache", num_train=2, num_val=2, num_test=1, n_points=3000, n_iou_points=3000,
        n_pointcloud=2000, build_workers=1, batch_size=2, points_per_sample=256,
    )  # fmt: skip
    module = HaloBaseModule(net={"hidden_dims": [16, 16, 16, 16]}, loss="bce", lr=1e-2)
    trainer = L.Trainer(
        default_root_dir=tmp, max_steps=1, limit_val_batches=0, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(module, datamodule=dm)
    ckpt = tmp / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, dm


def test_eval_meshes_writes_csv_and_summary(trained, tmp_path):
    ckpt, _ = trained
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "halo.cli", "eval", "meshes", "--checkpoint", str(ckpt), "--split", "val"]
    cmd += ["--limit", "2", "--n-samples", "2000", "--out", str(out), *FAST]  # no --data: from the checkpoint
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # like the other tests' torch threads (conftest)
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader(open(out / "eval_meshes.csv")))
    assert [r["name"] for r in rows] == ["synth_val_000000", "synth_val_000001"]
    assert list(rows[0]) == list(ROW_COLUMNS)
    for r in rows:
        assert 0.0 <= float(r["occupancy_iou"]) <= 1.0 and float(r["seconds"]) > 0
    summary = (out / "eval_meshes_summary.md").read_text()
    assert "| metric | mean | median |" in summary and "| chamfer_l1_mm |" in summary
    assert f"`{ckpt}` (global step 1)" in summary
    assert "| occupancy_iou |" in res.stdout and "eval_meshes.csv" in res.stdout


def test_eval_meshes_match_validation_uses_the_runs_validation_subset(trained, tmp_path, capsys):
    ckpt, dm = trained
    out = tmp_path / "eval"
    rc = main(["eval", "meshes", "--checkpoint", str(ckpt), "--match-validation", "--limit", "1",
               "--n-samples", "500", "--out", str(out), *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert f"`{dm.root.resolve() / 'val'}` (1 hands)" in (out / "eval_meshes_summary.md").read_text()


def test_generate_meshes_writes_meshes_and_a_render_grid(trained, tmp_path, capsys):
    ckpt, _ = trained
    out = tmp_path / "gen"
    rc = main(["generate", "meshes", "--checkpoint", str(ckpt), "--limit", "2", "--render-size", "96",
               "--out", str(out), *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.glob("*.ply")) == ["synth_val_000000.ply", "synth_val_000001.ply"]
    grid = np.asarray(Image.open(out / "comparison_grid.png").convert("RGB"))
    assert grid.shape == (96 + 2 * 4, 4 * 96 + 5 * 4, 3) and grid.std() > 10  # one row: 2 x (pred | GT)
    assert "wrote 2 mesh(es)" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(trained, tmp_path, capsys):
    ckpt, dm = trained
    plain = save_checkpoint(HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16))), tmp_path / "plain.pt")
    cases = [
        (["eval", "meshes", "--checkpoint", str(plain)], "records no dataset root", "pass --data ROOT"),
        (
            ["eval", "meshes", "--checkpoint", str(tmp_path / "nope.ckpt")],
            "nope.ckpt: checkpoint file not found",
            "",
        ),
        (
            ["eval", "meshes", "--checkpoint", str(ckpt), "--split", "dev"],
            "no datalist.txt",
            "test, train, val",
        ),
        (
            [
                "generate",
                "meshes",
                "--checkpoint",
                str(plain),
                "--data",
                str(tmp_path / "missing"),
                "--out",
                str(tmp_path / "o"),
            ],
            "no such folder",
            "",
        ),  # fmt: skip
    ]
    for argv, *needles in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"halo {argv[0]} {argv[1]}: error: "), err
        for needle in needles:
            assert needle in err, err
    # With --data, a plain network file works too.
    rc = main(["eval", "meshes", "--checkpoint", str(plain), "--data", str(dm.root), "--split", "test",
               "--n-samples", "200", "--out", str(tmp_path / "e"), *FAST])  # fmt: skip
    assert rc == 0, capsys.readouterr().err


def test_halo_mesh_reads_a_lightning_checkpoint(trained, tmp_path, capsys):
    ckpt, _ = trained
    kp = tmp_path / "kp.npy"
    np.save(kp, random_skeletons(1, seed=2).astype(np.float32))
    rc = main(["mesh", "--checkpoint", str(ckpt), "--keypoints", str(kp), "--out", str(tmp_path / "m"),
               "--no-render", "--resolution-0", "16", "--upsampling-steps", "1"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "m" / "hand_000.ply").is_file()
