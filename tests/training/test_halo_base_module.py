"""HaloBaseModule without Hydra: losses, IoU, clear errors, checkpoints (Lightning, halo-base, original)."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch

from halo.core.checkpoint import load_model, load_original_checkpoint
from lightning_modules.halo_base import HaloBaseModule, occupancy_iou
from tests.fake_hand_data import CapsuleHandsDataModule

SMALL_NET = {"hidden_dims": [32, 32, 32, 32]}


def _batch(num_surface: int = 0) -> dict:
    dm = CapsuleHandsDataModule(num_train=2, batch_size=2, num_points=256, num_surface_points=num_surface)
    dm.setup()
    return next(iter(dm.train_dataloader()))


def _trainer(tmp_path, max_steps: int, **kwargs) -> L.Trainer:
    return L.Trainer(
        default_root_dir=tmp_path,
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def test_occupancy_iou_per_sample_then_mean():
    pred = torch.tensor([[0.9, 0.9, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1], [0.6, 0.4, 0.4, 0.4]])
    gt = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])
    iou = occupancy_iou(pred, gt, threshold=0.5)
    # 1 of 3 occupied; both empty counts as 1; exact match
    assert torch.allclose(iou, torch.tensor([1 / 3, 1.0, 1.0]))
    assert occupancy_iou(pred, gt, threshold=0.95)[0] == 0.0


def test_unknown_names_are_clear_errors():
    with pytest.raises(ValueError, match="unknown loss 'l1'; allowed: mse, bce"):
        HaloBaseModule(loss="l1")
    with pytest.raises(ValueError, match="unknown scheduler 'step'; allowed: cosine, onecycle or null"):
        HaloBaseModule(scheduler="step")
    with pytest.raises(ValueError, match="unknown network config keys"):
        HaloBaseModule(net={"width": 3})


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_losses_are_finite_and_reach_the_weights(loss):
    module = HaloBaseModule(net=SMALL_NET, loss=loss)
    total, parts, out = module._losses(_batch())
    assert torch.isfinite(total) and set(parts) == {"occupancy"}
    total.backward()
    assert module.model.network.weights[0].grad.abs().sum() > 0


def test_bce_is_the_logit_form_of_the_occupancy_bce():
    batch = _batch()
    module = HaloBaseModule(net=SMALL_NET, loss="bce")
    total, _, out = module._losses(batch)
    expected = torch.nn.functional.binary_cross_entropy(out.occupancy, batch["occupancies"])
    assert torch.allclose(total, expected, atol=1e-5)


@pytest.mark.parametrize("part_radii", [None, "default"])
def test_bce_with_a_soft_union_is_the_bce_of_the_exported_models_occupancy(part_radii, tmp_path):
    """union_temperature > 0: the loss is the BCE of the soft union's occupancy, the union's gradient
    reaches every part near a point, and the exported network meshes/evaluates the same function."""
    batch = _batch()
    module = HaloBaseModule(net={**SMALL_NET, "union_temperature": 1.0, "part_radii": part_radii}, loss="bce")
    total, _, out = module._losses(batch)
    out.part_logits.retain_grad()
    t = module.model.config.union_temperature
    union = t * torch.logsumexp(out.part_logits / t, dim=-1)
    expected = torch.nn.functional.binary_cross_entropy(torch.sigmoid(union), batch["occupancies"])
    assert torch.allclose(total, expected, atol=1e-5)
    assert not torch.allclose(union, out.part_logits.max(dim=-1).values)  # not the max
    total.backward()
    # The max passes gradient to one part per point; the soft union to every part evaluated there.
    evaluated = out.part_logits != module.model.config.culled_logit
    learning = out.part_logits.grad != 0
    assert torch.all(learning[evaluated]) and (learning & evaluated).sum(-1).float().mean() > 1.5
    plain, _ = load_model(module.export_halo_checkpoint(tmp_path / "soft.pt"), trust_pickle=False)
    assert plain.config.union_temperature == 1.0
    with torch.no_grad():
        torch.testing.assert_close(plain.occupancy(batch["points"], batch["keypoints"]), torch.sigmoid(union))


def test_skinning_loss_matches_its_definition_and_needs_surface_points():
    batch = _batch(num_surface=64)
    module = HaloBaseModule(net=SMALL_NET, loss="mse", skinning_weight=0.5)
    total, parts, _ = module._losses(batch)
    assert set(parts) == {"occupancy", "skinning"}
    logits = module.model(batch["surface_points"], batch["keypoints"], return_parts=True).part_logits
    target = torch.zeros_like(logits)
    target.scatter_(-1, batch["surface_labels"][..., None], 0.5)  # one-hot(label) * 0.5
    assert torch.allclose(parts["skinning"], ((torch.sigmoid(logits) - target) ** 2).mean())
    assert torch.allclose(total, parts["occupancy"] + 0.5 * parts["skinning"])
    with pytest.raises(KeyError, match="surface_points"):
        module._losses(_batch(num_surface=0))


def test_load_from_checkpoint_needs_no_config_and_export_round_trips(tmp_path):
    dm = CapsuleHandsDataModule(num_train=4, num_val=2, batch_size=2, num_points=256, num_iou_points=256)
    module = HaloBaseModule(net=SMALL_NET, loss="bce", lr=1e-3, scheduler="cosine", warmup_steps=1)
    trainer = _trainer(tmp_path, max_steps=2, val_check_interval=2)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)

    restored = HaloBaseModule.load_from_checkpoint(ckpt, weights_only=True)  # hparams are plain types
    assert restored.hparams == module.hparams
    batch = _batch()
    module.eval()
    restored.eval()
    with torch.no_grad():
        expected = module(batch["points"], batch["keypoints"])
        assert torch.equal(restored(batch["points"], batch["keypoints"]), expected)

        # halo-base file: what `halo mesh --checkpoint` reads
        path = restored.export_halo_checkpoint(tmp_path / "halo_base.pt", {"note": "test"})
        plain, meta = load_model(path, trust_pickle=False)
        assert meta["note"] == "test" and meta["global_step"] == 2
        assert torch.equal(plain.occupancy(batch["points"], batch["keypoints"]), expected)
    assert restored.halo_model is restored.model


def test_init_from_missing_file_or_other_architecture_is_named(tmp_path):
    missing = tmp_path / "nope.pt"
    module = HaloBaseModule(net=SMALL_NET, init_from=str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        module.setup("fit")
    other = HaloBaseModule(net={"hidden_dims": [16, 16, 16, 16]})
    path = other.export_halo_checkpoint(tmp_path / "other.pt")
    module = HaloBaseModule(net=SMALL_NET, init_from=str(path))
    with pytest.raises(ValueError, match=r"other\.pt holds a different architecture.*hidden_dims"):
        module.setup("fit")


@pytest.mark.reference
def test_init_from_the_original_checkpoint_reproduces_it(halo_reference, tmp_path):
    module = HaloBaseModule(init_from=str(halo_reference / "model_best.pt"))  # default net = the release's
    module.setup("fit")
    original, _ = load_original_checkpoint(halo_reference / "model_best.pt")
    for (name, ours), theirs in zip(
        module.model.state_dict().items(), original.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, theirs), name
    ref = np.load(halo_reference / "dev_reference.npz")
    kp = torch.from_numpy(ref["keypoints"])
    points = kp[:, :1] + 0.08 * torch.randn(len(kp), 500, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(module(points, kp), original.occupancy(points, kp))
        # and the released network's own reference values, through the module's network
        net = module.model.network
        occ = net.combine(
            net(
                torch.from_numpy(ref["query_points"]),
                torch.from_numpy(ref["matrices"]),
                torch.from_numpy(ref["bone_lengths"]),
            )
        )
    assert (occ - torch.from_numpy(ref["occupancy"])).abs().max() <= 1e-4


@pytest.mark.parametrize("scheduler", ["cosine", "onecycle"])
def test_schedulers_step_every_batch_over_max_steps(scheduler, tmp_path):
    dm = CapsuleHandsDataModule(num_train=4, num_val=2, batch_size=2, num_points=128, num_iou_points=128)
    module = HaloBaseModule(net=SMALL_NET, lr=1e-2, scheduler=scheduler, warmup_steps=2)
    trainer = _trainer(tmp_path, max_steps=6, limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr < 1e-2 * 0.2  # decayed towards the end of the 6 steps
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_coordinate_scale_is_adam_on_scaled_coordinate_weights(tmp_path):
    """k: coordinate weights start k x larger and move k x Adam's step; the rest is unchanged."""
    k = 4.0
    torch.manual_seed(3)
    plain = HaloBaseModule(net=SMALL_NET, lr=1e-3)
    torch.manual_seed(3)
    scaled = HaloBaseModule(net=SMALL_NET, lr=1e-3, coordinate_scale=k)
    w_plain, w_scaled = plain.model.network.weights[0], scaled.model.network.weights[0]
    assert torch.allclose(w_scaled[:, :, :3], k * w_plain[:, :, :3])
    assert torch.equal(w_scaled[:, :, 3:], w_plain[:, :, 3:])

    # From identical weights, one Adam step: k x the coordinate step, the same step elsewhere.
    scaled.load_state_dict(plain.state_dict())
    batch = _batch()
    steps = []
    for module in (plain, scaled):
        optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
        before = {n: p.detach().clone() for n, p in module.named_parameters()}

        def closure(module=module, optimizer=optimizer):
            optimizer.zero_grad()
            loss = module._losses(batch)[0]
            loss.backward()
            return loss

        module.optimizer_step(0, 0, optimizer, closure)
        steps.append({n: p.detach() - before[n] for n, p in module.named_parameters()})
    first = "model.network.weights.0"
    assert steps[0][first][:, :, :3].abs().max() > 0
    assert torch.allclose(steps[1][first][:, :, :3], k * steps[0][first][:, :, :3], atol=1e-7)
    assert torch.allclose(steps[1][first][:, :, 3:], steps[0][first][:, :, 3:], atol=1e-7)
    assert all(torch.allclose(steps[1][n], steps[0][n], atol=1e-7) for n in steps[0] if n != first)

    with pytest.raises(ValueError, match="coordinate_scale must be a finite number > 0, got 0"):
        HaloBaseModule(coordinate_scale=0)
    # The trained network is the original architecture: a checkpoint of it loads without the option.
    path = scaled.export_halo_checkpoint(tmp_path / "scaled.pt")
    loaded, _ = load_model(path)
    assert torch.equal(loaded.network.weights[0], w_scaled)
