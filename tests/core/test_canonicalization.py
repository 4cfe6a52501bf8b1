"""Canonicalization layer: geometry, invariances, gradients, bad input, and the original's numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from halo.core import skeleton
from halo.core.canonicalization import (
    ROOT_BONE_ANGLES,
    CanonicalizationError,
    apply_transform,
    canonicalize,
    detached_quantities,
)
from tests.helpers import random_hands


def _canonical_skeleton(kp: torch.Tensor) -> torch.Tensor:
    """Map each non-palm bone's parent and child through that bone's part transform."""
    pose = canonicalize(kp)
    pts = []
    for part, (parent, child) in enumerate(skeleton.PART_BONES):
        if part == 0:
            continue
        seg = pose.normalized_keypoints[:, [parent, child]]
        pts.append(apply_transform(pose.part_transforms[:, part], seg))
    return torch.stack(pts, 1)  # (B,15,2,3)


def test_joint_order_conversions_round_trip_and_match_documented_arrays():
    x = torch.arange(21 * 3.0).reshape(1, 21, 3)
    assert torch.equal(skeleton.biomech_to_mano(skeleton.mano_to_biomech(x)), x)
    assert torch.equal(skeleton.halo_to_mano(skeleton.mano_to_halo(x)), x)
    assert skeleton._BIOMECH_TO_MANO == (
        0,
        1,
        6,
        11,
        16,
        2,
        7,
        12,
        17,
        3,
        8,
        13,
        18,
        4,
        9,
        14,
        19,
        5,
        10,
        15,
        20,
    )
    assert skeleton._HALO_TO_MANO == (
        0,
        13,
        14,
        15,
        16,
        1,
        2,
        3,
        17,
        4,
        5,
        6,
        18,
        10,
        11,
        12,
        19,
        7,
        8,
        9,
        20,
    )
    mats = torch.randn(2, 21, 4, 4)
    assert torch.equal(skeleton.mano_to_halo(mats, joint_axis=1)[:, 13], mats[:, 1])


def test_part_transforms_are_rigid_and_palm_is_identity():
    pose = canonicalize(random_hands(6, seed=1))
    rot = pose.part_transforms[..., :3, :3]
    eye = torch.eye(3, dtype=rot.dtype)
    assert torch.allclose(rot @ rot.transpose(-1, -2), eye.expand_as(rot), atol=1e-10)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(6, 16, dtype=rot.dtype), atol=1e-10)
    assert torch.allclose(pose.part_transforms[:, 0], torch.eye(4, dtype=rot.dtype).expand(6, 4, 4))


def test_normalized_frame_conventions():
    pose = canonicalize(random_hands(5, seed=2))
    kp = pose.normalized_keypoints
    assert torch.allclose(kp[:, 0], torch.zeros_like(kp[:, 0]), atol=1e-12)
    middle = kp[:, 9] / kp[:, 9].norm(dim=-1, keepdim=True)
    assert torch.allclose(middle, torch.tensor([-1.0, 0, 0], dtype=kp.dtype).expand_as(middle), atol=1e-10)
    normal = torch.linalg.cross(kp[:, 9], kp[:, 5], dim=-1)
    assert torch.all(normal[:, 1] > 0) and torch.allclose(
        normal[:, [0, 2]], torch.zeros(5, 2, dtype=kp.dtype)
    )


def test_canonical_hand_is_straight_with_normalized_root_angles():
    kp = random_hands(4, seed=3)
    segs = _canonical_skeleton(kp)  # (B,15,2,3)
    pose = canonicalize(kp)
    # Every finger lies on one line through its canonical root joint: all three
    # phalanges of a finger point the same way (the straight rest pose).
    for f in range(5):
        d = segs[:, 3 * f : 3 * f + 3, 1] - segs[:, 3 * f : 3 * f + 3, 0]
        d = d / d.norm(dim=-1, keepdim=True)
        assert torch.allclose(d[:, 0], d[:, 1], atol=1e-9) and torch.allclose(d[:, 1], d[:, 2], atol=1e-9)
    # Consecutive phalanges are connected (child of one = parent of the next).
    assert torch.allclose(segs[:, 0, 1], segs[:, 1, 0], atol=1e-9)
    # Directions of the five canonical fingers: in-plane angles = the fixed table.
    part_of_finger = {0: 13, 1: 1, 2: 4, 3: 10, 4: 7}  # proximal part per finger (thumb..pinky)
    dirs = []
    for f in range(5):
        p = part_of_finger[f]
        seg = segs[:, p - 1]
        dirs.append((seg[:, 1] - seg[:, 0]) / (seg[:, 1] - seg[:, 0]).norm(dim=-1, keepdim=True))
    for k, target in enumerate(ROOT_BONE_ANGLES):
        cos = (dirs[k] * dirs[k + 1]).sum(-1)
        assert torch.allclose(torch.arccos(cos.clamp(-1, 1)), torch.full_like(cos, target), atol=1e-6)
    # Bone lengths are preserved in canonical space.
    lengths = (segs[:, :, 1] - segs[:, :, 0]).norm(dim=-1)
    assert torch.allclose(lengths, pose.bone_lengths[:, 1:], atol=1e-10)


def test_invariant_to_global_rigid_motion_and_mirrors_left_hands():
    kp = random_hands(3, seed=4)
    q = torch.linalg.qr(torch.randn(3, 3, dtype=kp.dtype))[0]
    q = q * torch.sign(torch.linalg.det(q))
    moved = kp @ q.T + torch.tensor([0.3, -0.2, 0.5], dtype=kp.dtype)
    a, b = canonicalize(kp), canonicalize(moved)
    assert torch.allclose(a.part_transforms, b.part_transforms, atol=1e-9)
    assert torch.allclose(a.normalized_keypoints, b.normalized_keypoints, atol=1e-9)
    mirrored = kp * torch.tensor([1.0, -1.0, 1.0], dtype=kp.dtype)
    c = canonicalize(mirrored, is_left=torch.ones(3, dtype=torch.bool))
    assert torch.allclose(a.part_transforms, c.part_transforms, atol=1e-9)
    # without the flag a mirrored hand is a different (mirror-image) hand
    assert not torch.allclose(a.part_transforms, canonicalize(mirrored).part_transforms, atol=1e-3)


def test_batched_equals_per_sample_and_float32_close_to_float64():
    kp = random_hands(5, seed=5)
    full = canonicalize(kp).part_transforms
    single = torch.cat([canonicalize(kp[i : i + 1]).part_transforms for i in range(5)])
    assert torch.allclose(full, single, atol=1e-12)
    f32 = canonicalize(kp.float()).part_transforms
    assert f32.dtype == torch.float32
    assert torch.allclose(f32.double(), full, atol=5e-5)


def test_gradients_match_finite_differences_with_detached_quantities_fixed():
    kp = random_hands(2, seed=6).requires_grad_(True)
    fixed = detached_quantities(kp)

    def fn(x):
        pose = canonicalize(x, fixed=fixed)
        return pose.part_transforms[..., :3, :], pose.bone_lengths

    assert torch.autograd.gradcheck(fn, (kp,), eps=1e-7, atol=1e-6, rtol=1e-4)
    # and the free (non-fixed) layer gives finite, non-zero keypoint gradients
    pose = canonicalize(kp)
    loss = pose.part_transforms.square().sum() + pose.bone_lengths.sum()
    (grad,) = torch.autograd.grad(loss, kp)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_detached_quantities_carry_no_gradient():
    kp = random_hands(2, seed=7).requires_grad_(True)
    pose = canonicalize(kp)
    assert not pose.normalization.requires_grad
    assert pose.part_transforms.requires_grad and pose.bone_lengths.requires_grad


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda k: k[:, :20], r"shape \(B, 21, 3\)"),
        (lambda k: k.reshape(1, -1), r"shape \(B, 21, 3\)"),
        (
            lambda k: k.index_fill(1, torch.tensor([7]), float("nan")),
            r"sample 0 joint 7 \(index_dip\) is NaN",
        ),
        (lambda k: torch.cat([k, k.index_fill(1, torch.tensor([3]), float("inf"))]), r"sample 1 joint 3"),
        (lambda k: _set(k, 6, k[0, 5]), r"sample 0 has a zero-length index bone index_mcp -> index_pip"),
        (lambda k: _set(k, 9, k[0, 0]), r"zero-length middle bone wrist -> middle_mcp"),
    ],
)
def test_bad_input_raises_clear_value_error(mutate, message):
    kp = random_hands(1, seed=8)
    with pytest.raises(ValueError, match=message):
        canonicalize(mutate(kp))


def _set(kp, joint, value):
    kp = kp.clone()
    kp[0, joint] = value
    return kp


def test_collinear_index_and_middle_root_bones_are_rejected():
    kp = random_hands(1, seed=9)
    kp[0, 5] = kp[0, 0] + 0.9 * (kp[0, 9] - kp[0, 0])  # index MCP on the wrist->middle MCP line
    with pytest.raises(CanonicalizationError, match="sample 0: the index and middle root bones"):
        canonicalize(kp)


def test_device_agnostic_no_hard_coded_device():
    kp = random_hands(1, seed=10).to("meta")
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)):
        canonicalize(kp)  # meta tensors cannot be validated; the point is: no .cuda() path
    pose = canonicalize(random_hands(1, seed=10), validate=True)
    assert pose.part_transforms.device.type == "cpu"


# ----------------------------------------------------------------------------- the original's numbers


@pytest.mark.reference
def test_matches_original_code_on_reference_keypoints(halo_reference):
    ref = np.load(halo_reference / "dev_reference.npz")
    pose = canonicalize(torch.from_numpy(ref["keypoints"]).double())
    np.testing.assert_allclose(pose.normalization.numpy(), ref["normalization"], atol=1e-6)
    np.testing.assert_allclose(pose.bone_lengths.numpy(), ref["bone_lengths"], atol=1e-7)
    np.testing.assert_allclose(
        pose.normalized_keypoints.numpy() * 100, ref["normalized_keypoints_cm"], atol=1e-5
    )
    mats = pose.part_transforms.numpy()
    diff = np.abs(mats - ref["matrices_unscaled"])
    # The original ran in float32, and acos(x) near x = 1 amplifies float32 rounding
    # by 1/sin(angle): for bones whose flexion or abduction is within ~0.03 rad of
    # zero the reference itself carries up to ~4e-5 of rounding noise (fitting the
    # reference's implied abduction to one such bone shows a 4e-5 rad offset =
    # ~5 float32 ulps of cos).  Everywhere else the match is 1e-5.
    angles = pose.bone_angles.abs().amin(-1).reshape(-1, 5, 3)  # finger-major
    finger_level = [(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2),
                    (3, 0), (3, 1), (3, 2), (0, 0), (0, 1), (0, 2)]  # fmt: skip
    small = np.zeros(diff.shape[:2], dtype=bool)
    for p, (f, lv) in enumerate(finger_level, start=1):
        small[:, p] = angles[:, f, : lv + 1].amin(-1).numpy() < 0.03  # a chain inherits its parents'
    assert diff[~small].max() <= 1e-5, diff[~small].max()
    assert diff[small].max() <= 5e-5, diff[small].max()
    assert (diff > 1e-5).mean() < 0.01
