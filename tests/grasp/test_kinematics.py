"""Forward kinematics of the kinematic VAE decoder: valid skeletons by construction."""

from __future__ import annotations

import pytest
import torch

from halo.grasp.kinematics import (
    KinematicsError,
    axis_angle_to_matrix,
    bone_lengths,
    default_template,
    fit_template,
    forward_kinematics,
    palm_frame,
    rigid_gradient_only,
    rotation_6d_to_matrix,
)
from halo.grasp.vae import GraspVAE
from tests.helpers import random_hands


def _random_pose(bsz: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    rot = rotation_6d_to_matrix(torch.randn(bsz, 6, generator=g))
    wrist = torch.randn(bsz, 3, generator=g) * 0.05
    joints = rotation_6d_to_matrix(torch.randn(bsz, 5, 3, 6, generator=g))
    scale = 1.0 + 0.05 * torch.randn(bsz, generator=g)
    return rot, wrist, joints, scale


def test_6d_gives_rotations_and_identity():
    r = rotation_6d_to_matrix(torch.randn(100, 6, dtype=torch.float64))
    eye = torch.eye(3, dtype=torch.float64)
    assert torch.allclose(r @ r.transpose(-1, -2), eye.expand(100, 3, 3), atol=1e-10)
    assert torch.allclose(torch.linalg.det(r), torch.ones(100, dtype=torch.float64))
    ident = rotation_6d_to_matrix(torch.tensor([2.0, 0, 0, 0.3, 5.0, 0]))
    assert torch.allclose(ident, torch.eye(3), atol=1e-6)


def test_axis_angle_matches_known_rotation_and_is_smooth_at_zero():
    r = axis_angle_to_matrix(torch.tensor([0.0, 0.0, torch.pi / 2]))
    assert torch.allclose(r @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    v = torch.zeros(3, requires_grad=True)
    (axis_angle_to_matrix(v) @ torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0


def test_every_pose_keeps_the_template_bones_times_the_scale():
    t = default_template()
    rot, wrist, joints, scale = _random_pose(64)
    kp = forward_kinematics(t, rot, wrist, joints, scale)
    lengths = bone_lengths(kp).view(64, 5, 4)[:, :, 1:]
    assert torch.allclose(lengths, t.lengths[None] * scale[:, None, None], atol=1e-6)
    assert torch.allclose(kp[:, 0], wrist, atol=1e-7)
    # the palm is rigid: its shape in its own frame is the template's (scaled)
    local = (kp[:, [0, 1, 5, 9, 13, 17]] - kp[:, :1]) @ palm_frame(kp)
    assert torch.allclose(local, t.palm[None] * scale[:, None, None], atol=1e-6)


def test_fit_template_recovers_bones_and_palm_of_rotated_posed_hands():
    t = default_template()
    rot, wrist, joints, _ = _random_pose(32, seed=3)
    kp = forward_kinematics(t, rot, wrist, joints)
    fitted = fit_template(kp)
    assert torch.allclose(fitted.lengths, t.lengths, atol=1e-6)
    assert torch.allclose(fitted.palm, t.palm, atol=1e-6)


def test_fit_template_averages_real_looking_hands_and_rejects_bad_shapes():
    hands = random_hands(16, seed=0)
    fitted = fit_template(hands)
    mean_lengths = bone_lengths(hands).view(16, 5, 4)[:, :, 1:].mean(0)
    assert torch.allclose(fitted.lengths.double(), mean_lengths, atol=1e-6)
    with pytest.raises(KinematicsError, match=r"\(N>=1, 21, 3\)"):
        fit_template(torch.zeros(4, 20, 3))


def test_kinematic_decoder_samples_are_hands_with_the_fitted_bones():
    vae = GraspVAE({"decoder": "kinematic", "object_dim": 16, "object_hidden_dim": 16, "decoder_dim": 32})
    t = default_template()
    rot, wrist, joints, _ = _random_pose(8, seed=5)
    train = forward_kinematics(t, rot, wrist, joints) * 1.1  # a bigger hand than the default
    vae.set_skeleton_template(fit_template(train))
    assert vae.decoder.template_fitted
    # random decoder weights: arbitrary poses, still the fitted bones up to the size factor
    torch.nn.init.normal_(vae.decoder.net.fc_out.weight, std=1.0)
    kp = vae.sample(torch.randn(200, 3) * 0.03, 50, generator=torch.Generator().manual_seed(0))
    lengths = bone_lengths(kp).view(50, 5, 4)[:, :, 1:]
    ratio = lengths / (t.lengths[None] * 1.1)
    assert (
        ratio.min() > torch.exp(torch.tensor(-0.1)) - 1e-4
        and ratio.max() < torch.exp(torch.tensor(0.1)) + 1e-4
    )
    # one size factor per hand: all 15 ratios of a hand agree
    assert (ratio.flatten(1).std(-1) < 1e-4).all()


def test_decoder_switch_keeps_old_configs_and_checkpoint_state():
    from halo.grasp.vae import GraspVaeConfig, GraspVaeError

    assert GraspVaeConfig.from_dict({"z_dim": 8}).decoder == "keypoints"  # an old checkpoint's config
    old = GraspVAE({"object_dim": 16, "object_hidden_dim": 16})
    assert not any("template" in k for k in old.state_dict())
    new = GraspVAE({"object_dim": 16, "object_hidden_dim": 16, "decoder": "kinematic"})
    assert {"decoder.template_palm", "decoder.template_lengths"} <= set(new.state_dict())
    with pytest.raises(GraspVaeError, match="decoder must be one of"):
        GraspVaeConfig(decoder="mano")


def test_rigid_gradient_only_keeps_values_and_lets_a_loss_move_the_hand_but_not_reshape_it():
    rot, wrist, joints, scale = _random_pose(4, seed=5)
    rot6 = rot[..., :2].transpose(-1, -2).reshape(4, 6).clone().requires_grad_(True)
    wrist = wrist.clone().requires_grad_(True)
    joints6 = joints[..., :2].transpose(-1, -2).reshape(4, 5, 3, 6).clone().requires_grad_(True)
    scale = scale.clone().requires_grad_(True)
    kp = forward_kinematics(
        default_template(), rotation_6d_to_matrix(rot6), wrist, rotation_6d_to_matrix(joints6), scale
    )
    rigid = rigid_gradient_only(kp)
    torch.testing.assert_close(rigid, kp, atol=1e-6, rtol=0)
    # any loss on the keypoints (here: pull every fingertip towards a point)
    loss = (rigid[:, [4, 8, 12, 16, 20]] - torch.tensor([0.1, 0.0, 0.0])).pow(2).sum()
    g_rot, g_wrist, g_joints, g_scale = torch.autograd.grad(
        loss, [rot6, wrist, joints6, scale], retain_graph=True, allow_unused=True
    )
    g_joints = torch.zeros(1) if g_joints is None else g_joints
    assert g_rot.abs().max() > 1e-4 and g_wrist.abs().max() > 1e-4  # it can move and turn the hand
    assert g_joints.abs().max() == 0 and g_scale.abs().max() < 1e-6  # not bend or resize it
    # without it the same loss bends the fingers
    (g_plain,) = torch.autograd.grad(
        (kp[:, [4, 8, 12, 16, 20]] - torch.tensor([0.1, 0.0, 0.0])).pow(2).sum(), [joints6]
    )
    assert g_plain.abs().max() > 1e-4
