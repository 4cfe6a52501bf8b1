"""HALO-VAE: loss terms (hand-computed), the frozen HALO base, checkpoints, training runs, grasp validation,
and a fast dev run of each VAE experiment config."""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from callbacks.grasp_validation import GraspValidation
from halo.core.checkpoint import load_model, save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.core.skeleton import BONES
from halo.grasp.halo_terms import (
    interpenetration_loss,
)
from halo.grasp.vae import (
    GraspVAE,
    GraspVaeConfig,
    GraspVaeError,
    all_bone_angle_loss,
    angle_difference,
    bone_length_loss,
    bps_basis,
    keypoint_loss,
    kl_divergence,
    perturb_for_refinement,
    root_bone_angle_loss,
    root_bone_angles,
    root_plane_angle_loss,
    root_plane_angles,
)
from halo.grasp.vae_checkpoint import load_grasp_vae
from lightning_modules.halo_vae import HaloBaseMissingError, HaloVaeModule
from tests.fake_grasp_data import SMALL_VAE, FakeGraspDataModule
from tests.helpers import quiet_trainer, random_hands


def _module(halo_base: Path, **kwargs) -> HaloVaeModule:
    defaults = dict(vae=SMALL_VAE, halo_checkpoint=str(halo_base), lr=1e-3, object_points=64)
    return HaloVaeModule(**{**defaults, **kwargs})


def _data(**kwargs) -> FakeGraspDataModule:
    defaults = dict(
        num_train=32, num_val=8, batch_size=8, val_batch_size=8, n_object_points=64, n_inside_points=64
    )
    return FakeGraspDataModule(**{**defaults, **kwargs})


# ----------------------------------------------------------------------------- loss terms


def test_keypoint_and_bone_length_losses_are_in_square_centimetres():
    gt = random_hands(3, seed=1, dtype=torch.float32)
    # A 1 cm shift of every coordinate: squared error 1 cm^2 everywhere; bone lengths unchanged.
    assert keypoint_loss(gt + 0.01, gt).item() == pytest.approx(1.0, rel=1e-4)
    assert bone_length_loss(gt + 0.01, gt).item() == pytest.approx(0.0, abs=1e-6)
    # Scaling the hand about its wrist by 1.1 stretches every bone by 10 %.
    wrist = gt[:, :1]
    pred = wrist + 1.1 * (gt - wrist)
    lengths_cm = np.stack([(gt[:, c] - gt[:, p]).norm(dim=-1).numpy() for p, c in BONES], axis=1) * 100
    assert bone_length_loss(pred, gt).item() == pytest.approx(
        float(np.mean((0.1 * lengths_cm) ** 2)), rel=1e-4
    )


def test_angle_difference_is_periodic_cos_sin_distance():
    z = torch.zeros(4)
    assert angle_difference(z, z).item() == 0.0
    assert angle_difference(z, torch.full((4,), math.pi / 2)).item() == pytest.approx(2.0)  # |1-0| + |0-1|
    assert angle_difference(torch.full((4,), math.pi), torch.full((4,), -math.pi)).item() == pytest.approx(
        0, abs=1e-6
    )


def _planar_root_hand(angles=(0.9, 0.5, 0.3, 0.1, -0.1)) -> torch.Tensor:
    """(1,21,3): root joints in the xy plane at the given directions (thumb..pinky), fingers straight on."""
    kp = torch.zeros(1, 21, 3, dtype=torch.float64)
    for f, theta in enumerate(angles):
        d = torch.tensor([math.cos(theta), math.sin(theta), 0.0], dtype=torch.float64)
        for level in range(4):
            kp[0, 1 + 4 * f + level] = d * (0.08 + 0.025 * level) + torch.tensor([0, 0, 0.002 * level])
    return kp


def test_root_bone_and_plane_angles_of_a_planar_palm():
    kp = _planar_root_hand()
    # Palm normal = middle x index = +z; thumb (0.9 rad) -> index (0.5 rad) turns by -0.4 about +z, etc.
    assert root_bone_angles(kp)[0].tolist() == pytest.approx([-0.4, -0.2, -0.2, -0.2], abs=1e-9)
    assert root_plane_angles(kp)[0].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-9)  # coplanar roots
    # Rigid motions change nothing; the losses against the original are zero.
    rot = torch.tensor(
        [[0.36, 0.48, -0.8], [-0.8, 0.6, 0.0], [0.48, 0.64, 0.6]], dtype=torch.float64
    )  # a rotation matrix
    moved = kp @ rot.T + torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64)
    assert root_bone_angles(moved)[0].tolist() == pytest.approx([-0.4, -0.2, -0.2, -0.2], abs=1e-9)
    assert root_bone_angle_loss(moved, kp).item() == pytest.approx(0.0, abs=1e-9)
    assert root_plane_angle_loss(moved, kp).item() == pytest.approx(0.0, abs=1e-9)
    # Lifting the pinky root out of the palm plane opens the ring|pinky dihedral only.
    lifted = _planar_root_hand()
    lifted[0, 17:21, 2] += 0.03
    planes = root_plane_angles(lifted)[0]
    assert abs(planes[0]) < 1e-9 and abs(planes[1]) < 1e-9 and abs(planes[2]) > 0.2


def test_all_bone_angle_loss_sees_articulation_not_rigid_motion():
    hands = random_hands(4, seed=2, dtype=torch.float64)
    rot = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert all_bone_angle_loss(hands @ rot.T + 0.05, hands).item() == pytest.approx(0.0, abs=1e-6)
    other = random_hands(4, seed=3, dtype=torch.float64)
    assert all_bone_angle_loss(other, hands).item() > 0.05


def test_kl_divergence_closed_form():
    z = 8
    zeros = torch.zeros(5, z)
    assert kl_divergence(zeros, zeros).item() == 0.0
    assert kl_divergence(torch.ones(5, z), zeros).item() == pytest.approx(0.5 * z)
    logstd = torch.full((5, z), math.log(2.0))
    assert kl_divergence(zeros, logstd).item() == pytest.approx(z * (0.5 * (4 - 1) - math.log(2)), rel=1e-6)


def test_bps_basis_is_seeded_and_features_are_nearest_distances():
    a, b = bps_basis(512, 0.15, seed=3), bps_basis(512, 0.15, seed=3)
    assert torch.equal(a, b) and not torch.equal(a, bps_basis(512, 0.15, seed=4))
    assert a.norm(dim=-1).max() <= 0.15 + 1e-6 and a.norm(dim=-1).max() > 0.13  # fills the ball
    vae = GraspVAE({**SMALL_VAE, "object_encoder": "bps", "bps_points": 512, "bps_seed": 3})
    assert torch.equal(vae.object_encoder.basis, a)
    pts = torch.rand(2, 40, 3) * 0.1 - 0.05
    brute = np.array(
        [[np.linalg.norm(pts[i].numpy() - q, axis=1).min() for q in a.numpy()] for i in range(2)]
    )
    assert np.allclose(vae.object_encoder.features(pts).numpy(), brute * 100, atol=1e-4)  # centimetres
    assert vae.encode_object(pts).shape == (2, 32)


def test_sampling_is_reproducible_and_untrained_refinement_is_identity():
    torch.manual_seed(0)
    vae = GraspVAE(SMALL_VAE).eval()
    pts = torch.rand(50, 3) * 0.08 - 0.04
    a = vae.sample(pts, 4, generator=torch.Generator().manual_seed(7))
    b = vae.sample(pts, 4, generator=torch.Generator().manual_seed(7))
    c = vae.sample(pts, 4, generator=torch.Generator().manual_seed(8))
    assert a.shape == (4, 21, 3) and torch.equal(a, b) and not torch.equal(a, c)
    refined = vae.sample(pts, 4, generator=torch.Generator().manual_seed(7), refine_steps=3)
    assert torch.allclose(refined, a)  # zero-initialised last layer
    with pytest.raises(GraspVaeError, match=r"object_points must have shape \(B, N, 3\)"):
        vae.sample(torch.zeros(50, 2), 2)
    with pytest.raises(GraspVaeError, match="unknown GraspVAE config keys"):
        GraspVaeConfig.from_dict({"z_dims": 3})


def test_refinement_noise_modes():
    gt = random_hands(64, seed=7, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    orig = perturb_for_refinement(gt, mode="original", generator=g) - gt
    assert torch.allclose(orig[:, :6], orig[:, :6, :1].expand(-1, 6, 3), atol=1e-12)  # a pure (s,s,s) shift
    assert orig[:, :6].min() >= 0 and orig[:, :6].max() < 0.02
    iso = perturb_for_refinement(gt, mode="isotropic", joint_noise_m=0.0, generator=g) - gt
    shift = iso[:, 0]
    assert torch.allclose(iso, shift[:, None].expand_as(iso))  # rigid without joint noise
    assert shift.norm(dim=-1).max() < 0.02 and (shift < 0).any()  # any direction


# ----------------------------------------------------------------------------- the module


def test_missing_base_checkpoint_names_the_key_and_the_command(tmp_path):
    with pytest.raises(HaloBaseMissingError) as info:
        HaloVaeModule(vae=SMALL_VAE, halo_checkpoint=str(tmp_path / "nope.pt"))
    msg = str(info.value)
    assert "model.halo_checkpoint" in msg and "python train.py experiment=halo_base_small" in msg
    assert str(tmp_path / "nope.pt") in msg
    with pytest.raises(ValueError, match="model.halo_checkpoint is null"):
        HaloVaeModule(vae=SMALL_VAE, halo_checkpoint=None)
    HaloVaeModule(vae=SMALL_VAE, halo_checkpoint=None, use_inter_loss=False)  # fine without the term


def test_original_config_forces_the_original_switches(halo_base):
    m = _module(halo_base, original_config=True, use_contact_loss=True, train_refine_net=True)
    hp = m.hparams
    assert (
        hp.use_inter_loss
        and not hp.use_contact_loss
        and not hp.train_refine_net
        and not hp.refine_at_generation
        and not hp.use_prior_inter_loss
    )
    assert (
        hp.loss_weights["kl"] == 0.5
        and hp.loss_weights["inter"] == 4.0
        and hp.loss_weights["keypoints"] == 2.0
    )


def test_loss_switches_select_the_trained_terms(halo_base):
    torch.manual_seed(0)
    batch = next(iter(_data().val_dataloader()))
    full = _module(
        halo_base, use_prior_inter_loss=True
    ).eval()  # eval: every HALO term measured, prior z seeded
    original = _module(halo_base, original_config=True).eval()
    original.vae.load_state_dict(full.vae.state_dict())
    with torch.no_grad():
        total_full, terms_full, _ = full.losses(batch, sample=False)
        total_orig, terms_orig, _ = original.losses(batch, sample=False)
    assert {"inter", "prior_inter", "contact", "refine"} <= set(terms_full)
    assert "contact" not in terms_orig and "refine" not in terms_orig
    assert terms_orig["prior_inter"] == terms_full["prior_inter"] > 0  # measured alike (seeded z) in both
    w = full.hparams.loss_weights
    # The original's objective lacks exactly the contact, prior-interpenetration and refinement terms.
    extra = w["contact"] * terms_full["contact"] + w["prior_inter"] * terms_full["prior_inter"]
    extra = extra + w["prior_anatomy"] * terms_full["prior_anatomy"]
    extra = extra + w["refine"] * terms_full["refine"]
    assert total_full.item() == pytest.approx(total_orig.item() + extra.item(), rel=1e-5)
    # Without the HALO terms the interpenetration is still reported, but not part of the objective.
    no_inter = _module(halo_base, use_inter_loss=False, use_prior_inter_loss=False, train_refine_net=False)
    no_inter.eval().vae.load_state_dict(full.vae.state_dict())
    with torch.no_grad():
        total_ni, terms_ni, _ = no_inter.losses(batch, sample=False)
    assert terms_ni["inter"] == terms_full["inter"] > 0
    dropped = w["inter"] * terms_full["inter"] + w["prior_inter"] * terms_full["prior_inter"]
    dropped = dropped + w["refine"] * terms_full["refine"] + w["prior_anatomy"] * terms_full["prior_anatomy"]
    assert total_ni.item() == pytest.approx(total_full.item() - dropped.item(), rel=1e-5)


def test_training_step_leaves_halo_unchanged_while_keypoint_gradients_flow(halo_base, tmp_path):
    torch.manual_seed(0)
    module = _module(halo_base)
    halo = module.halo_model
    before = {k: v.clone() for k, v in halo.state_dict().items()}
    assert not any(p.requires_grad for p in halo.parameters()) and not halo.training
    assert not any(k.startswith("_halo") or "network." in k for k in module.state_dict())
    optimizer = module.configure_optimizers()
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in halo.parameters()}

    # The interpenetration term's gradient reaches the decoded keypoints.
    batch = next(iter(_data().train_dataloader()))
    out = module.vae(batch["keypoints"], batch["object_points"])
    out.keypoints.retain_grad()
    inter = interpenetration_loss(halo, out.keypoints, batch["inside_points"])
    assert inter.item() > 0
    inter.backward()
    assert out.keypoints.grad.abs().sum() > 0
    assert all(p.grad is None for p in halo.parameters())

    # One real optimizer step of the whole objective: VAE weights move, HALO's do not.
    vae_before = {k: v.clone() for k, v in module.vae.state_dict().items()}
    quiet_trainer(tmp_path, max_steps=1, limit_val_batches=0).fit(module, datamodule=_data())
    assert all(torch.equal(v, halo.state_dict()[k]) for k, v in before.items())
    assert any(not torch.equal(v, module.vae.state_dict()[k]) for k, v in vae_before.items())
    reloaded, _ = load_model(halo_base)
    assert all(torch.equal(v, module.halo_model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_checkpoint_round_trip_restores_vae_and_reloads_the_same_base(halo_base, tmp_path):
    torch.manual_seed(0)
    module = _module(halo_base)
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, datamodule=_data())
    ckpt = tmp_path / "vae.ckpt"
    trainer.save_checkpoint(ckpt)
    payload = torch.load(ckpt, weights_only=True)  # plain hparams: no code runs
    assert all(k.startswith("vae.") for k in payload["state_dict"])  # the frozen base is not saved
    assert payload["halo_base"]["path"] == str(halo_base)

    restored = HaloVaeModule.load_from_checkpoint(ckpt, weights_only=True)
    for k, v in module.vae.state_dict().items():
        assert torch.equal(v, restored.vae.state_dict()[k])
    for k, v in module.halo_model.state_dict().items():
        assert torch.equal(v, restored.halo_model.state_dict()[k])
    pts = torch.rand(64, 3) * 0.06 - 0.03
    ours = restored.sample(pts, 3, generator=torch.Generator().manual_seed(1))

    vae, meta = load_grasp_vae(ckpt)  # the Lightning-free path of `halo generate grasps`
    assert meta["hyper_parameters"]["halo_checkpoint"] == str(halo_base) and meta["global_step"] == 2
    theirs = vae.sample(pts, 3, generator=torch.Generator().manual_seed(1), refine_steps=3)
    assert torch.allclose(ours, theirs)

    # A different base under the recorded name is noticed.
    other = save_checkpoint(HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16))), tmp_path / "other.pt")
    with pytest.warns(UserWarning, match="differs from the one this VAE was trained with"):
        HaloVaeModule.load_from_checkpoint(ckpt, weights_only=True, halo_checkpoint=str(other))


def test_encoder_freezes_after_n_epochs(halo_base, tmp_path):
    torch.manual_seed(0)
    module = _module(halo_base, encoder_freeze_after_epochs=1, train_refine_net=False)
    dm = _data(num_train=16)  # 2 steps per epoch
    snapshots = []

    class Snap(L.Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            snapshots.append({k: v.clone() for k, v in pl_module.vae.state_dict().items()})

    quiet_trainer(tmp_path, max_epochs=3, limit_val_batches=0, callbacks=[Snap()]).fit(module, datamodule=dm)
    enc = [k for k in snapshots[0] if k.startswith("object_encoder.")]
    dec = [k for k in snapshots[0] if k.startswith("decoder.")]
    assert any(not torch.equal(snapshots[0][k], snapshots[1][k]) for k in dec)  # still training
    assert all(torch.equal(snapshots[0][k], snapshots[2][k]) for k in enc)  # frozen after epoch 0
    assert not any(p.requires_grad for p in module.vae.object_encoder.parameters())


def test_short_training_run_lowers_the_validation_loss(halo_base, tmp_path):
    torch.manual_seed(0)
    module = _module(halo_base, lr=2e-3)
    dm = _data(num_train=64)
    trainer = quiet_trainer(tmp_path, max_steps=60, val_check_interval=60, check_val_every_n_epoch=None)
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]
    trainer.fit(module, datamodule=dm)
    after = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert after["val/loss"] < 0.75 * before["val/loss"], (before, after)
    # The posterior starts at the prior (KL 0), so this is the reconstruction getting better; the hands
    # become hand-shaped first (bone lengths, root angles).
    assert after["val/bone_length_loss"] < 0.2 * before["val/bone_length_loss"]
    assert after["val/root_plane_angle_loss"] < 0.5 * before["val/root_plane_angle_loss"]
    assert after["train/samples_per_s"] > 0


# ----------------------------------------------------------------------------- grasp validation callback


def test_grasp_validation_writes_tables_renders_curves_and_logs(halo_base, tmp_path, monkeypatch):
    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    torch.manual_seed(0)
    module = _module(halo_base)
    callback = GraspValidation(grasps_per_object=3, resolution_0=8, upsampling_steps=2, render_size=96)
    trainer = quiet_trainer(
        tmp_path, max_steps=4, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[callback]
    )
    trainer.fit(module, datamodule=_data())
    metrics = trainer.callback_metrics
    for key in ("volume_cm3", "depth_cm", "contact_ratio", "entropy", "cluster_size_cm"):
        assert f"val_grasp/{key}" in metrics
    assert 0.0 <= float(metrics["val_grasp/contact_ratio"]) <= 1.0
    assert 0.0 <= float(metrics["val_grasp/entropy"]) <= math.log(3) + 1e-6  # k = 6 grasps // 2

    rounds = sorted((tmp_path / "grasps").iterdir())
    assert [r.name for r in rounds] == ["epoch_0000_step_0000002", "epoch_0000_step_0000004"]
    rows = list(csv.DictReader(open(rounds[-1] / "per_object.csv")))
    assert [r["object"] for r in rows] == ["val32", "val42", "all"] and all(r["grasps"] for r in rows)
    grasps = list(csv.DictReader(open(rounds[-1] / "grasps.csv")))
    assert len(grasps) == 6
    # The table's contact ratio is the fraction of its grasps in contact; the logged value is the 'all' row.
    n_contact = sum(g["contact"] == "True" for g in grasps)
    assert float(rows[-1]["contact_ratio"]) == pytest.approx(n_contact / 6)
    assert float(metrics["val_grasp/contact_ratio"]) == pytest.approx(n_contact / 6)
    assert np.load(rounds[-1] / "keypoints.npz")["keypoints"].shape == (6, 21, 3)
    assert "| val32 |" in (rounds[-1] / "per_object.md").read_text()
    grid = Image.open(tmp_path / "renders" / "grasps_epoch_0000_step_0000004.png")
    assert grid.size[0] >= 3 * 96 and grid.size[1] >= 2 * 96  # 2 objects x 3 grasps
    assert (tmp_path / "renders" / "grasp_metrics_curve.png").is_file()
    curve = list(csv.DictReader(open(tmp_path / "renders" / "grasp_metrics_curve.csv")))
    assert [float(r["step"]) for r in curve] == [2.0, 4.0]


def test_grasp_validation_needs_grasp_objects(halo_base, tmp_path):
    class NoObjects(FakeGraspDataModule):
        grasp_objects = None

    callback = GraspValidation(grasps_per_object=2)
    trainer = quiet_trainer(
        tmp_path, max_steps=2, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[callback]
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(_module(halo_base), datamodule=NoObjects(num_train=16, num_val=4, batch_size=8))
    assert any(
        "GraspValidation skipped" in str(w.message) and "grasp_objects" in str(w.message) for w in caught
    )


# ----------------------------------------------------------------------------- the experiment configs


def _vae_experiments() -> list[str]:
    from tests.training.test_train import CONF

    return sorted(p.stem for p in (CONF / "experiment").glob("halo_vae*.yaml"))


TINY_VAE_OVERRIDES = [f"model.vae.{k}={v}" for k, v in SMALL_VAE.items()]


@pytest.fixture(scope="module")
def grab_fixture_root(tmp_path_factory) -> Path:
    """A tiny GRAB-layout root (tests/grab_fixture.py) carrying its synthetic hand model (no MANO file needed)."""
    from halo.grasp import grab
    from halo.hands.synthetic_hand import get_synthetic_hand_model, save_synthetic_hand_model
    from tests.grab_fixture import write_grab_fixture

    root = tmp_path_factory.mktemp("grab") / "GRAB"
    model = get_synthetic_hand_model()
    write_grab_fixture(root, model)
    save_synthetic_hand_model(model, root / grab.SYNTHETIC_MANO_PATH)
    return root


def _experiment_overrides(experiment: str, tmp_path: Path, grab_root: Path) -> list[str]:
    common = ["data.num_workers=0", "data.batch_size=4", "data.val_batch_size=4", "data.n_object_points=64",
              "data.n_inside_points=64", "callbacks.grasp_validation.grasps_per_object=2",
              "callbacks.grasp_validation.resolution_0=8", "callbacks.grasp_validation.upsampling_steps=1",
              "callbacks.grasp_validation.render_size=64", *TINY_VAE_OVERRIDES]  # fmt: skip
    if experiment == "halo_vae":  # real-GRAB config: pointed at the fixture root
        return [*common, f"data.root={grab_root}", "data.mano_model=null", f"data.cache_dir={tmp_path / 'cache'}",
                "data.records.frame_stride=1", "data.records.n_surface_points=256",
                "data.records.n_inside_points=256"]  # fmt: skip
    # Synthetic grasps, tiny: one training object plus the 5 held-out ones, 2 grasps each.
    return [*common, f"data.cache_dir={tmp_path / 'synthetic'}", "data.objects=6", "data.grasps_per_object=2",
            "data.subjects=1", "data.grasp_frames=2", "data.away_frames=0", "data.generation_workers=1",
            "data.records.n_surface_points=256", "data.records.n_inside_points=256"]  # fmt: skip


@pytest.mark.parametrize("experiment", _vae_experiments())
def test_vae_experiment_fast_dev_run(experiment, halo_base, grab_fixture_root, tmp_path, monkeypatch):
    """Each VAE experiment composed like train.py does, one batch of train + val (debug=fdr) end to end."""
    import train
    from tests.training.test_train import compose_train

    monkeypatch.setenv("PYOPENGL_PLATFORM", "egl")
    overrides = [f"experiment={experiment}", "debug=fdr", f"model.halo_checkpoint={halo_base}",
                 *_experiment_overrides(experiment, tmp_path, grab_fixture_root)]  # fmt: skip
    cfg = compose_train(overrides, tmp_path / "run")
    assert cfg.model._target_ == "lightning_modules.halo_vae.HaloVaeModule"
    assert (
        cfg.callbacks.model_checkpoint.monitor == "val/loss" and cfg.callbacks.model_checkpoint.mode == "min"
    )
    metrics, objects = train.train(cfg)
    assert isinstance(objects["model"], HaloVaeModule)
    assert math.isfinite(metrics["val/loss"]) and math.isfinite(metrics["train/loss"])
    assert "val/inter_loss" in metrics


def test_vae_experiments_keep_the_original_settings(tmp_path):
    from tests.training.test_train import compose_train

    cfg = compose_train(["experiment=halo_vae"], tmp_path)
    m = cfg.model
    assert m.lr == 1e-4 and cfg.data.batch_size == 256 and m.encoder_freeze_after_epochs == 80
    assert m.loss_weights.kl == 0.5 and m.loss_weights.inter == 4.0 and m.loss_weights.keypoints == 2.0
    assert m.vae.z_dim == 32 and m.vae.object_dim == 256 and cfg.data.n_object_points == 600
    assert cfg.data._target_.endswith("GrabDataModule") and cfg.trainer.val_check_interval == 1000


def test_missing_base_in_a_run_names_the_key_and_the_command(tmp_path):
    import hydra

    from tests.training.test_train import compose_train

    cfg = compose_train(
        ["experiment=halo_vae_small", f"model.halo_checkpoint={tmp_path / 'none.pt'}"], tmp_path
    )
    # train.py builds the model right after the config (before any data work); Hydra wraps the error,
    # whose message still names the key and the command.
    with pytest.raises(
        Exception, match=r"model\.halo_checkpoint.*python train\.py experiment=halo_base_small"
    ) as info:
        hydra.utils.instantiate(cfg.model)
    assert isinstance(info.value.__cause__ or info.value, HaloBaseMissingError)


# ----------------------------------------------------------------------------- kinematic decoder, soft term


def test_ranked_interior_points_are_the_most_occupied_and_score_at_least_the_nearest(halo_base):
    """rank_candidates: the term sees the k interior points HALO finds most occupied, so it is the
    mean softplus of the k largest logits, never below the nearest-k term; the module validates it."""
    halo, _ = load_model(halo_base)
    halo.requires_grad_(False)
    kp = random_hands(3, seed=6, dtype=torch.float32)
    inside = kp[:, 5:6] + 0.04 * torch.randn(3, 120, 3, generator=torch.Generator().manual_seed(1))
    ranked = interpenetration_loss(halo, kp, inside, mode="soft", near_hand_points=16, rank_candidates=120)
    nearest = interpenetration_loss(halo, kp, inside, mode="soft", near_hand_points=16)
    with torch.no_grad():
        logit = halo(inside, kp, return_parts=True).part_logits.amax(-1)
        expected = torch.nn.functional.softplus(logit.topk(16, dim=-1).values).mean()
    assert ranked.item() == pytest.approx(expected.item(), rel=1e-4)
    assert ranked.item() >= nearest.item() - 1e-6
    x = kp.clone().requires_grad_(True)
    interpenetration_loss(halo, x, inside, mode="soft", near_hand_points=16, rank_candidates=120).backward()
    assert x.grad.abs().sum() > 0  # the ranking has no gradient, the term does
    with pytest.raises(ValueError, match="inter_rank_candidates"):
        _module(halo_base, inter_mode="soft", inter_near_hand_points=64, inter_rank_candidates=32)


def test_latent_statistics_track_the_posterior_and_fitted_samples_follow_them():
    """update_latent_statistics: the first batch sets mean/covariance, later ones move them by the
    momentum; sample(latent="fitted") draws z from that Gaussian, "standard" from N(0, I)."""
    from halo.grasp.vae import GraspVAE

    vae = GraspVAE(SMALL_VAE)
    zd = vae.config.z_dim
    assert not vae.latent_fitted
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, zd, generator=g) * 0.5 + 2.0
    vae.update_latent_statistics(a)
    assert vae.latent_fitted and int(vae.latent_count) == 4000
    assert torch.allclose(vae.latent_mean, a.mean(0), atol=1e-5)
    assert torch.allclose(vae.latent_cov, torch.cov(a.T), atol=1e-5)
    b = torch.randn(4000, zd, generator=g) - 1.0
    vae.update_latent_statistics(b, momentum=0.25)
    assert torch.allclose(vae.latent_mean, 0.75 * a.mean(0) + 0.25 * b.mean(0), atol=1e-5)
    with pytest.raises(GraspVaeError, match="latent batch"):
        vae.update_latent_statistics(torch.zeros(1, zd))
    # Samples: z from the fitted Gaussian (checked through draw_latent) and different hands.
    z = vae.draw_latent(20000, "fitted", torch.Generator().manual_seed(1), torch.float32, "cpu")
    assert torch.allclose(z.mean(0), vae.latent_mean, atol=0.05)
    assert torch.allclose(torch.cov(z.T), vae.latent_cov, atol=0.08)
    std = vae.draw_latent(20000, "standard", torch.Generator().manual_seed(1), torch.float32, "cpu")
    assert std.mean().abs() < 0.02 and (std.std() - 1).abs() < 0.02
    pts = torch.randn(64, 3) * 0.03
    kp_std = vae.sample(pts, 3, generator=torch.Generator().manual_seed(2))
    kp_fit = vae.sample(pts, 3, generator=torch.Generator().manual_seed(2), latent="fitted")
    assert kp_std.shape == kp_fit.shape == (3, 21, 3) and not torch.allclose(kp_std, kp_fit)
    with pytest.raises(GraspVaeError, match="latent must be one of"):
        vae.sample(pts, 1, latent="posterior")
    with pytest.raises(GraspVaeError, match="no latent statistics|does not have"):
        GraspVAE(SMALL_VAE).sample(pts, 1, latent="fitted")


def test_training_keeps_the_latent_statistics_and_checkpoints_carry_them(halo_base, tmp_path):
    m = _module(halo_base)
    trainer = quiet_trainer(tmp_path, max_steps=3, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(m, datamodule=_data())
    assert int(m.vae.latent_count) == 3 * 8  # three training batches of 8 folded in
    path = tmp_path / "v.ckpt"
    trainer.save_checkpoint(path)
    vae, _ = load_grasp_vae(path)
    assert vae.latent_fitted and torch.allclose(vae.latent_cov, m.vae.latent_cov)


def test_original_config_restores_the_free_decoder_and_the_thresholded_term(halo_base):
    m = _module(
        halo_base,
        original_config=True,
        vae={**SMALL_VAE, "decoder": "kinematic"},
        inter_mode="soft",
        inter_near_hand_points=32,
    )
    assert m.vae.config.decoder == "keypoints" and m.hparams.vae["decoder"] == "keypoints"
    assert m.hparams.inter_mode == "threshold" and m.hparams.inter_near_hand_points is None


def test_kinematic_module_fits_its_template_at_train_start_and_checkpoints_it(halo_base, tmp_path):
    from halo.grasp.kinematics import bone_lengths

    dm = _data()
    m = _module(
        halo_base, vae={**SMALL_VAE, "decoder": "kinematic"}, inter_mode="soft", inter_near_hand_points=16
    )
    trainer = quiet_trainer(tmp_path, max_steps=2, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(m, datamodule=dm)
    assert m.vae.decoder.template_fitted
    train_kp = torch.as_tensor(np.asarray(dm.data["train"][0]), dtype=torch.float64)
    expected = bone_lengths(train_kp).view(-1, 5, 4)[:, :, 1:].mean(0)
    assert torch.allclose(m.vae.decoder.template_lengths.double(), expected, atol=1e-6)
    path = tmp_path / "k.ckpt"
    trainer.save_checkpoint(path)
    vae, _ = load_grasp_vae(path)
    assert vae.config.decoder == "kinematic"
    assert torch.allclose(vae.decoder.template_lengths, m.vae.decoder.template_lengths)


def test_inter_warmup_ramps_the_term_linearly(halo_base):
    m = _module(halo_base, inter_warmup_steps=10)
    m.train()
    m.schedule_step = 4
    assert m.inter_schedule() == pytest.approx(0.5)
    m.schedule_step = 50
    assert m.inter_schedule() == 1.0
    m.eval()
    m.schedule_step = 0
    assert m.inter_schedule() == 1.0  # validation measures the full term


def test_inter_start_keeps_the_halo_terms_off_and_uncomputed_until_then(halo_base):
    m = _module(halo_base, inter_start_steps=5, inter_warmup_steps=10, use_prior_inter_loss=True)
    m.train()
    m.schedule_step = 4
    assert m.inter_schedule() == 0.0
    batch = next(iter(_data().train_dataloader()))
    _, terms, _ = m.losses(batch)
    assert "inter" not in terms and "prior_inter" not in terms  # HALO not run before the start
    m.schedule_step = 9
    assert m.inter_schedule() == pytest.approx(0.5)
    _, terms, _ = m.losses(batch)
    assert {"inter", "prior_inter", "prior_contact"} <= set(terms)
    with pytest.raises(ValueError, match="inter_gradient"):
        _module(halo_base, inter_gradient="fingers")


def test_exact_gradient_moves_a_sunk_palm_out_where_the_detached_one_cannot(halo_base):
    """Same term value; with HALO's frames attached, translating the whole hand changes it (the palm
    moves), and the module's switch routes the training term through that gradient."""
    halo, _ = load_model(halo_base)
    halo = halo.double().requires_grad_(False)
    kp = random_hands(2, seed=3, dtype=torch.float64)
    # Interior points around the palm (wrist -> middle MCP), where the detached gradient is blind.
    palm = 0.5 * (kp[:, 0:1] + kp[:, 9:10])
    inside = palm + 0.015 * torch.randn(
        2, 300, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64
    )

    def term(keypoints, exact):
        return interpenetration_loss(halo, keypoints, inside, mode="soft", exact_gradient=exact)

    assert term(kp, True).item() == pytest.approx(term(kp, False).item(), rel=1e-9)
    shift = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    grads = {exact: torch.autograd.grad(term(kp + shift, exact), shift)[0] for exact in (True, False)}
    eps = 1e-6
    fd = torch.stack([
        (term(kp + eps * e, True) - term(kp - eps * e, True)) / (2 * eps) for e in torch.eye(3, dtype=torch.float64)
    ])  # fmt: skip
    assert fd.abs().max() > 0
    torch.testing.assert_close(grads[True], fd, rtol=1e-4, atol=1e-8)
    assert (grads[False] - fd).norm() > 0.1 * fd.norm()  # the original's detached frames miss it

    module = _module(halo_base, use_inter_loss=True, inter_mode="soft", inter_exact_gradient=True)
    assert module.hparams.inter_exact_gradient
    assert not _module(
        halo_base, original_config=True, inter_exact_gradient=True
    ).hparams.inter_exact_gradient
