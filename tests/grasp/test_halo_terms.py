"""The frozen HALO base as grasp terms (halo.grasp.halo_terms): interpenetration, contact, the
object points they evaluate, and the logit scale shared by every base."""

from __future__ import annotations

import pytest
import torch

from halo.core.checkpoint import load_model
from halo.grasp.halo_terms import (
    GraspVaeError,
    contact_loss,
    interpenetration_loss,
    joint_object_distances,
    plausible_hands,
    prior_contact_loss,
    signed_joint_object_distances,
)
from tests.helpers import random_hands


def test_contact_loss_pulls_touching_joints_back_and_never_pushes_in():
    gt = random_hands(2, seed=4, dtype=torch.float64)
    obj = gt[:, 8:9].clone()  # a one-point "object" at the index fingertip
    d_gt = (gt - obj).norm(dim=-1)
    threshold = 0.03
    touching = d_gt < threshold
    assert touching.sum() > 2 and (~touching).sum() > 2  # the test really selects joints
    # Every joint 50 % farther from the object point: the gap is 0.5 d_gt (cm) on the touching joints.
    farther = obj + 1.5 * (gt - obj)
    expected = ((0.5 * d_gt * 100) ** 2)[touching].mean()
    assert contact_loss(farther, gt, obj, threshold).item() == pytest.approx(expected.item(), rel=1e-6)
    closer = obj + 0.5 * (gt - obj)
    assert contact_loss(closer, gt, obj, threshold).item() == 0.0  # one-sided: the inter term pushes out
    far_gt = gt + 1.0  # nothing touches in the ground truth: no contact target
    assert contact_loss(far_gt + 0.1, far_gt, obj, threshold).item() == 0.0


def test_interpenetration_is_halo_occupancy_above_half_with_gradient_to_keypoints_only(halo_base):
    halo, _ = load_model(halo_base)
    halo.requires_grad_(False)
    kp = random_hands(3, seed=5, dtype=torch.float32)
    inside = kp[:, 5:6] + 0.03 * torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        occ = halo.occupancy(inside, kp)  # the public, validated path
    expected = torch.where(occ > 0.5, occ, torch.zeros_like(occ)).mean()
    assert 0.01 < expected.item() < 1.0  # some interior points are inside the blob hand, not all
    kp.requires_grad_(True)
    loss = interpenetration_loss(halo, kp, inside)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert kp.grad.abs().sum() > 0
    assert all(p.grad is None for p in halo.parameters())


def test_interpenetration_under_bf16_autocast_keeps_halo_geometry_in_float32(halo_base, monkeypatch):
    """The VAE's HALO term goes through HaloModel.forward, so the float32 guard holds under bf16."""
    import halo.core.model as model_module

    halo, _ = load_model(halo_base)
    halo.requires_grad_(False)
    kp = random_hands(2, seed=7, dtype=torch.float32)
    inside = kp[:, 5:6] + 0.03 * torch.randn(2, 300, 3, generator=torch.Generator().manual_seed(1))
    seen = []
    real = model_module.canonicalize

    def spy(keypoints, *args, **kwargs):
        pose = real(keypoints, *args, **kwargs)
        seen.append(pose.part_transforms.dtype)
        return pose

    monkeypatch.setattr(model_module, "canonicalize", spy)
    reference = interpenetration_loss(halo, kp, inside)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = interpenetration_loss(halo, kp, inside)
    assert seen == [torch.float32, torch.float32]  # both calls went through the one forward pass
    assert mixed.item() == pytest.approx(reference.item(), abs=0.02)


def test_interpenetration_skips_degenerate_hands_instead_of_raising(halo_base):
    halo, _ = load_model(halo_base)
    kp = random_hands(2, seed=6, dtype=torch.float32)
    bad = kp.clone()
    bad[1, 6] = bad[1, 5]  # a zero-length index bone: HALO's canonicalization would raise
    assert plausible_hands(bad).tolist() == [True, False]
    inside = torch.zeros(2, 50, 3) + kp[:, :1]
    full = interpenetration_loss(halo, kp[:1], inside[:1])
    # The degenerate hand counts 0; the batch mean divides by 2.
    assert interpenetration_loss(halo, bad, inside).item() == pytest.approx(full.item() / 2, rel=1e-5)


def test_signed_joint_distances_are_negative_inside_a_sphere():
    g = torch.Generator().manual_seed(0)
    surface = torch.randn(1, 4000, 3, generator=g, dtype=torch.float64)
    surface = 0.04 * surface / surface.norm(dim=-1, keepdim=True)  # a 4 cm sphere around the origin
    radii = torch.linspace(0.0, 0.08, 21, dtype=torch.float64)
    direction = torch.tensor([0.3, -0.5, 0.81], dtype=torch.float64)
    joints = (radii[:, None] * direction / direction.norm())[None]  # (1,21,3) from the centre outwards
    signed = signed_joint_object_distances(joints, surface)[0]
    expected = radii - 0.04  # the exact signed distance of a sphere
    inner = radii < 0.035  # (near the centre the nearest sample is far off the ray: loose there)
    assert torch.allclose(signed[radii > 0.005], expected[radii > 0.005], atol=2e-3)
    assert (signed[inner & (radii > 0.005)] < 0).all() and (signed[radii > 0.045] > 0).all()
    assert torch.allclose(signed.abs(), joint_object_distances(joints, surface)[0])


def test_soft_interpenetration_keeps_a_gradient_where_the_thresholded_term_has_none(halo_base):
    """Interior points just under the hand's surface (occupancy < 0.5) get no gradient from the
    original term (zeroed) but do from the soft logit term; and the soft term equals
    mean(softplus(max part logit)) through the one forward pass."""
    halo, _ = load_model(halo_base)
    halo.requires_grad_(False)
    kp = random_hands(3, seed=5, dtype=torch.float32)
    inside = kp[:, 5:6] + 0.03 * torch.randn(3, 200, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = halo(inside, kp, return_parts=True)
        expected = torch.nn.functional.softplus(out.part_logits.amax(-1)).mean()
    assert interpenetration_loss(halo, kp, inside, mode="soft").item() == pytest.approx(
        expected.item(), rel=1e-5
    )
    with torch.no_grad():
        occ = halo.occupancy(inside, kp)
    shallow = (occ > 0.05) & (occ <= 0.5)
    assert shallow.any()
    pts = torch.where(shallow[..., None], inside, inside * 0 + 10.0)  # keep only those points near the hand
    for mode, moves in (("threshold", False), ("soft", True)):
        x = kp.clone().requires_grad_(True)
        interpenetration_loss(halo, x, pts, mode=mode).backward()
        assert bool(x.grad.abs().sum() > 0) == moves, mode
    with pytest.raises(GraspVaeError, match="interpenetration mode"):
        interpenetration_loss(halo, kp, inside, mode="hard")


def test_points_near_hand_picks_interior_points_along_the_bones():
    from halo.grasp.halo_terms import points_near_hand

    kp = random_hands(1, seed=3, dtype=torch.float32)
    mid_palm = 0.5 * (kp[:, 0] + kp[:, 9])  # half-way along the 9 cm palm bone, far from any joint
    far = kp[:, :1] + torch.tensor([0.5, 0.5, 0.5])
    pts = torch.cat([far.expand(1, 50, 3), mid_palm[:, None]], dim=1)
    near = points_near_hand(kp, pts, 1)
    assert torch.allclose(near[0, 0], mid_palm[0])


def test_prior_contact_is_zero_for_touching_hands_and_pulls_floating_ones_back():
    hands = random_hands(2, seed=6, dtype=torch.float64)
    obj = hands[:, 6:9].clone() + 0.005  # an "object" 8.7 mm from the index finger's last 3 joints
    assert prior_contact_loss(hands, obj).item() == 0.0  # its 3 nearest joints are within 1 cm
    floating = (hands + torch.tensor([0.05, 0.0, 0.0], dtype=hands.dtype)).requires_grad_(True)
    loss = prior_contact_loss(floating, obj)
    assert loss.item() > 1.0  # cm^2
    (grad,) = torch.autograd.grad(loss, floating)
    moved = (floating - 1e-3 * grad).detach()  # gradient steps bring the hands back to the object
    for _ in range(200):
        moved.requires_grad_(True)
        (g,) = torch.autograd.grad(prior_contact_loss(moved, obj), moved)
        moved = (moved - 1e-3 * g).detach()
    assert prior_contact_loss(moved, obj).item() < 0.1 * loss.item()


def test_soft_halo_terms_read_the_same_for_a_base_whose_logits_are_scaled(halo_reference):
    # A base's logit scale is arbitrary (the release: +-100 within a centimetre; a BCE-trained base:
    # about +-10).  skin_logit_slope puts the soft terms in the release's units: the release reads
    # as itself, and a copy whose logits are 3x smaller reads the same.
    import copy

    from halo.grasp.halo_terms import REFERENCE_SKIN_SLOPE, skin_logit_slope

    release, _ = load_model(halo_reference / "model_best.pt")
    release.requires_grad_(False).eval()
    slope = skin_logit_slope(release)
    assert slope == pytest.approx(REFERENCE_SKIN_SLOPE, rel=0.05)
    flat = copy.deepcopy(release)
    with torch.no_grad():
        flat.network.weights[4].mul_(1 / 3)
        flat.network.biases[4].mul_(1 / 3)
    assert skin_logit_slope(flat) == pytest.approx(slope / 3, rel=1e-3)
    hands = random_hands(2, seed=8).float()
    inside = hands[:, 9:10] + 0.02 * torch.randn(2, 200, 3, generator=torch.Generator().manual_seed(0))
    terms = [
        interpenetration_loss(
            base, hands, inside, mode="soft", logit_scale=REFERENCE_SKIN_SLOPE / skin_logit_slope(base)
        )
        for base in (release, flat)
    ]
    assert terms[0].item() > 0.5
    assert terms[1].item() == pytest.approx(terms[0].item(), rel=0.03)
