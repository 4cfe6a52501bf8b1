"""``halo generate grasps``: a trained VAE checkpoint + mesh files written here -> the promised files,
readable by ``halo eval grasps``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import trimesh

from halo.cli.app import main as halo_main
from halo.core.checkpoint import save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from lightning_modules.halo_vae import HaloVaeModule
from tests.fake_grasp_data import SMALL_VAE, FakeGraspDataModule

N = 3


@pytest.fixture(scope="module")
def vae_checkpoint(tmp_path_factory) -> tuple[Path, Path]:
    """(VAE .ckpt after a few training steps on fake grasps, its HALO base file)."""
    root = tmp_path_factory.mktemp("vae")
    torch.manual_seed(0)
    base = save_checkpoint(
        HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16), part_radii="default")),
        root / "halo_base_best.pt",
    )
    module = HaloVaeModule(vae=SMALL_VAE, halo_checkpoint=str(base), lr=1e-3, object_points=64)
    dm = FakeGraspDataModule(num_train=16, num_val=4, batch_size=8, n_object_points=64, n_inside_points=64)
    trainer = L.Trainer(
        default_root_dir=root,
        accelerator="cpu",
        max_steps=4,
        limit_val_batches=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module, datamodule=dm)
    ckpt = root / "vae.ckpt"
    trainer.save_checkpoint(ckpt)
    return ckpt, base


@pytest.fixture()
def objects(tmp_path) -> Path:
    """Two object files: a 6 cm ball (.obj, metres) and a 5 x 4 x 8 cm box written in MILLIMETRES (.stl)."""
    folder = tmp_path / "objects"
    folder.mkdir()
    trimesh.creation.icosphere(subdivisions=2, radius=0.03).apply_translation([0.2, 0.0, 0.1]).export(
        folder / "ball.obj"
    )
    trimesh.creation.box(extents=[50.0, 40.0, 80.0]).export(folder / "tea_box.stl")  # mm; "_" in the name
    return folder


def test_generate_grasps_writes_the_promised_files(vae_checkpoint, objects, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    ckpt, _ = vae_checkpoint
    out = tmp_path / "out"
    code = halo_main(
        ["generate", "grasps", "--checkpoint", str(ckpt), "--objects", str(objects), "-n", str(N), "--out", str(out),
         "--resolution-0", "8", "--upsampling-steps", "2", "--render-size", "96", "--no-progress"]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert torch.is_grad_enabled()  # the command must not switch autograd off for the rest of the process
    # The mm box: warned about and rescaled to metres; the "_" in its name is replaced.
    assert "millimetres" in captured.err and "rescaled" in captured.err
    for name, extents, center in (
        ("ball", None, [0.2, 0.0, 0.1]),
        ("tea-box", [0.05, 0.04, 0.08], [0, 0, 0]),
    ):
        obj = trimesh.load(out / f"{name}_obj.ply", force="mesh")
        assert np.allclose(obj.bounds.mean(0), center, atol=1e-6)  # the file's frame, metres
        if extents is not None:
            assert np.allclose(obj.extents, extents, atol=1e-6)
        assert (out / f"{name}_render.png").is_file()
        for i in range(N):
            kp = np.load(out / f"{name}_{i}.npy")
            assert kp.shape == (21, 3) and kp.dtype == np.float32 and np.isfinite(kp).all()
            # Generated around the object (object-centred generation, shifted back to the file's frame).
            assert np.linalg.norm(kp.mean(0) - np.asarray(center)) < 0.3
            hand = trimesh.load(out / f"{name}_{i}_hand.ply", force="mesh")
            assert len(hand.faces) > 0
            assert np.linalg.norm(hand.vertices.mean(0) - kp.mean(0)) < 0.1  # the hand sits on its keypoints
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert len(rows) == 2 * N and {r["object"] for r in rows} == {"ball", "tea-box"}
    for r in rows:  # every grasp meshed and scored, its numbers consistent with their definitions
        volume, depth, dist = float(r["volume_cm3"]), float(r["depth_cm"]), float(r["min_distance_cm"])
        assert r["error"] == "" and np.isfinite([volume, depth, dist]).all(), r
        assert depth == pytest.approx(max(0.0, -dist), abs=1e-9)  # depth = how far the deepest vertex is in
        assert r["contact"] == str(dist <= 100 * 0.005)  # --contact-tol default 5 mm
    summary = (out / "summary.md").read_text()
    assert "| ball |" in summary and "| all |" in summary and "entropy" in summary
    all_row = next(line for line in summary.splitlines() if line.startswith("| all |")).split("|")
    assert float(all_row[3]) == pytest.approx(np.mean([float(r["volume_cm3"]) for r in rows]), abs=5e-4)
    meta = json.loads((out / "generation.json").read_text())
    assert meta["grasps_per_object"] == N and meta["refine_steps"] == 3 and meta["units"] == "metres"
    assert meta["latent"] == "standard"
    assert "| all |" in captured.out

    # Directly consumable by `halo eval grasps`: the same grasps, the same metric values.
    eval_out = tmp_path / "eval"
    code = halo_main(
        ["eval", "grasps", "--grasps", str(out), "--out", str(eval_out), "--k", "2", "--no-progress"]
    )
    assert code == 0, capsys.readouterr().err
    scored = {(r["object"], r["grasp"]): r for r in csv.DictReader(open(eval_out / "grasp_metrics.csv"))}
    assert len(scored) == 2 * N
    for r in rows:
        key = next(k for k in scored if k[0] == r["object"] and k[1].endswith(r["grasp"]))
        assert float(scored[key]["volume_cm3"]) == pytest.approx(float(r["volume_cm3"]), abs=1e-6)
        assert float(scored[key]["depth_cm"]) == pytest.approx(float(r["depth_cm"]), abs=1e-4)


def test_generate_and_eval_grasps_report_the_same_diversity(vae_checkpoint, tmp_path, monkeypatch, capsys):
    """20 grasps of one object, default k (20) on both sides: both use k = 10 and print the same numbers.

    The 4-step VAE of the fixture draws hands a few mm long, which `halo eval grasps` rightly refuses as
    "not metres", so the sampler is replaced by realistic random hands near the object; everything
    after sampling (meshing, files, both commands' diversity) is the real code.
    """
    from halo.grasp.vae import GraspVAE
    from halo.hands.sequences import random_skeletons

    def realistic(self, points, n, generator=None, refine_steps=0, latent="standard"):
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        hands = random_skeletons(n, seed=seed)
        return torch.from_numpy(hands - hands.mean(axis=(0, 1)))  # around the (centred) object

    monkeypatch.setattr(GraspVAE, "sample", realistic)
    ckpt, _ = vae_checkpoint
    trimesh.creation.icosphere(subdivisions=2, radius=0.03).export(tmp_path / "ball.ply")
    out, eval_out = tmp_path / "out", tmp_path / "eval"
    argv = ["generate", "grasps", "--checkpoint", str(ckpt), "--objects", str(tmp_path / "ball.ply"), "-n", "20",
            "--out", str(out), "--resolution-0", "8", "--upsampling-steps", "1", "--no-render", "--no-progress"]  # fmt: skip
    assert halo_main(argv) == 0, capsys.readouterr().err
    assert halo_main(["eval", "grasps", "--grasps", str(out), "--out", str(eval_out), "--no-progress"]) == 0
    generated = json.loads((out / "generation.json").read_text())["diversity"]
    evaluated = json.loads((eval_out / "summary.json").read_text())["cluster"]
    assert evaluated.get("skipped") is None and evaluated["n_samples"] == 20
    # eval reads ball_0, ball_1, ball_10, ... (file-name order), generate had ball_0 .. ball_19.
    assert (
        generated["k"] == evaluated["k"] == 10 and generated["k_requested"] == evaluated["k_requested"] == 20
    )
    assert generated["entropy"] == evaluated["entropy"] and generated["counts"] == evaluated["counts"]
    assert generated["cluster_size_cm"] == evaluated["cluster_size_cm"]
    assert 0 < generated["entropy"] <= np.log(10) + 1e-9 and sum(generated["counts"]) == 20
    assert f"k=10, max {np.log(10):.3f}" in (out / "summary.md").read_text()
    assert "k = 10, asked 20: capped at half the grasps" in (eval_out / "grasp_summary.md").read_text()


def test_generate_grasps_reports_bad_input_in_one_line(vae_checkpoint, objects, tmp_path, capsys):
    ckpt, base = vae_checkpoint
    args = ["generate", "grasps", "--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--no-render"]
    assert halo_main([*args, "--objects", str(tmp_path / "missing.ply")]) == 2
    assert "missing.ply: no such file or folder" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert halo_main([*args, "--objects", str(tmp_path / "notes.txt")]) == 2
    assert "unsupported mesh type" in capsys.readouterr().err
    assert halo_main([*args, "--objects", str(objects), "--halo-checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "--halo-checkpoint" in capsys.readouterr().err
    assert (
        halo_main([*args, "--objects", str(objects), "--checkpoint", str(base)]) == 2
    )  # a HALO base, not a VAE
    assert "not a HALO-VAE checkpoint" in capsys.readouterr().err


def test_reading_a_vae_checkpoint_needs_neither_lightning_nor_hydra(vae_checkpoint):
    import subprocess
    import sys

    ckpt, _ = vae_checkpoint
    code = (
        "import sys; from halo.grasp.vae_checkpoint import load_grasp_vae; import halo.cli.generate; "
        f"vae, meta = load_grasp_vae({str(ckpt)!r}, trust_pickle=False); "
        "bad = [n for n in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf') if n in sys.modules]; "
        "assert not bad, bad; print(meta['global_step'])"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"


def test_generate_grasps_with_halo_refinement_moves_grasps_and_keeps_their_bones(
    vae_checkpoint, objects, tmp_path, capsys
):
    """--halo-refine runs halo.grasp.refine on each object's sampled grasps before they are scored."""
    from halo.core.skeleton import BONES

    ckpt, _ = vae_checkpoint
    common = ["generate", "grasps", "--checkpoint", str(ckpt), "--objects", str(objects / "ball.obj"), "-n", "2",
              "--resolution-0", "8", "--upsampling-steps", "1", "--no-render", "--no-progress", "--cluster-k", "1"]  # fmt: skip
    assert halo_main([*common, "--out", str(tmp_path / "raw")]) == 0, capsys.readouterr().err
    code = halo_main([*common, "--out", str(tmp_path / "ref"), "--halo-refine", "--halo-refine-steps", "5"])
    assert code == 0, capsys.readouterr().err
    raw = np.stack([np.load(tmp_path / "raw" / f"ball_{i}.npy") for i in range(2)])
    ref = np.stack([np.load(tmp_path / "ref" / f"ball_{i}.npy") for i in range(2)])

    def bones(kp):
        return np.stack([np.linalg.norm(kp[:, b] - kp[:, a], axis=-1) for a, b in BONES], -1)

    assert np.abs(ref - raw).max() > 1e-5  # refinement moved the grasps (same seed, same samples)
    np.testing.assert_allclose(bones(ref), bones(raw), atol=2e-5)  # bone lengths held
    meta = json.loads((tmp_path / "ref" / "generation.json").read_text())
    assert meta["halo_refine_steps"] == 5


def test_generate_grasps_draws_from_the_fitted_latent_when_asked(vae_checkpoint, objects, tmp_path, capsys):
    """The fixture's training kept the posterior's running Gaussian: --latent fitted draws from it
    (other hands than N(0, I), recorded in generation.json); a checkpoint without it gets one line."""
    ckpt, _ = vae_checkpoint
    common = ["generate", "grasps", "--objects", str(objects / "ball.obj"), "-n", "2", "--resolution-0", "8",
              "--upsampling-steps", "1", "--no-render", "--no-progress"]  # fmt: skip
    kp = {}
    for latent in ("standard", "fitted"):
        out = tmp_path / latent
        assert halo_main([*common, "--checkpoint", str(ckpt), "--out", str(out), "--latent", latent]) == 0
        assert json.loads((out / "generation.json").read_text())["latent"] == latent
        kp[latent] = np.load(out / "ball_0.npy")
    assert np.abs(kp["fitted"] - kp["standard"]).max() > 1e-6
    payload = torch.load(ckpt, map_location="cpu", weights_only=False)
    for name in ("latent_mean", "latent_cov", "latent_count"):
        del payload["state_dict"][f"vae.{name}"]  # a checkpoint from before the statistics existed
    old = tmp_path / "old.ckpt"
    torch.save(payload, old)
    capsys.readouterr()
    assert (
        halo_main([*common, "--checkpoint", str(old), "--out", str(tmp_path / "o"), "--latent", "fitted"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--latent fitted" in err[0] and "no latent statistics" in err[0]
    # ... and it still generates from N(0, I)
    assert halo_main([*common, "--checkpoint", str(old), "--out", str(tmp_path / "o2")]) == 0


def test_generate_grasps_oversamples_and_keeps_the_most_balanced(
    vae_checkpoint, objects, tmp_path, capsys, monkeypatch
):
    """--oversample 3 -n 2 keeps the 2 of the 6 draws (the same draws as -n 6) that
    halo.grasp.selection.choose_grasps picks against the written object mesh, in draw order."""
    from halo.core.checkpoint import load_model
    from halo.grasp.selection import choose_grasps

    ckpt, base = vae_checkpoint
    common = ["generate", "grasps", "--checkpoint", str(ckpt), "--objects", str(objects / "ball.obj"),
              "--resolution-0", "8", "--upsampling-steps", "1", "--no-render", "--no-progress", "--cluster-k", "1"]  # fmt: skip
    assert halo_main([*common, "-n", "6", "--out", str(tmp_path / "all")]) == 0, capsys.readouterr().err
    assert halo_main([*common, "-n", "2", "--oversample", "3", "--out", str(tmp_path / "os")]) == 0
    drawn = np.stack([np.load(tmp_path / "all" / f"ball_{i}.npy") for i in range(6)])
    kept = np.stack([np.load(tmp_path / "os" / f"ball_{i}.npy") for i in range(2)])
    assert not (tmp_path / "os" / "ball_2.npy").exists()
    halo, _ = load_model(base)
    mesh = trimesh.load(tmp_path / "os" / "ball_obj.ply", force="mesh")
    keep, balance, _ = choose_grasps(halo, drawn, mesh, 2)
    np.testing.assert_allclose(kept, drawn[keep], atol=1e-6)
    assert json.loads((tmp_path / "os" / "generation.json").read_text())["oversample"] == 3
    # With --support-axis the choice also asks whether the refined hands' contacts can carry the
    # object against that gravity (choose_grasps' gravity path).
    import halo.grasp.pipeline as pipeline

    seen = []

    def recording(*args, **kwargs):
        seen.append(kwargs.get("gravity"))
        return choose_grasps(*args, **kwargs)

    monkeypatch.setattr(pipeline, "choose_grasps", recording)
    refined = ["--halo-refine", "--halo-refine-steps", "2", "--support-axis=+x"]
    assert halo_main([*common, *refined, "-n", "6", "--out", str(tmp_path / "all_g")]) == 0
    assert (
        halo_main([*common, *refined, "-n", "2", "--oversample", "3", "--out", str(tmp_path / "os_g")]) == 0
    )
    assert seen == [(1.0, 0.0, 0.0)]
    drawn = np.stack([np.load(tmp_path / "all_g" / f"ball_{i}.npy") for i in range(6)])
    kept = np.stack([np.load(tmp_path / "os_g" / f"ball_{i}.npy") for i in range(2)])
    choice = choose_grasps(halo, drawn, mesh, 2, gravity=(1.0, 0.0, 0.0))
    assert choice.hold_residual is not None
    np.testing.assert_allclose(kept, drawn[choice.keep], atol=1e-6)
    capsys.readouterr()
    assert halo_main([*common, "-n", "2", "--oversample", "0", "--out", str(tmp_path / "bad")]) == 2
    assert "--oversample must be >= 1" in capsys.readouterr().err
    assert halo_main([*common, "--grip-depth-mm", "1", "--out", str(tmp_path / "bad")]) == 2
    assert "--grip-depth-mm is a setting of --halo-refine" in capsys.readouterr().err
    assert halo_main([*common, "--support-axis=-z", "--out", str(tmp_path / "bad")]) == 2
    assert "--support-axis is a setting of --halo-refine" in capsys.readouterr().err
