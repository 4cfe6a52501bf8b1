"""Canonicalization layer: 21 keypoints -> global normalization, 16 part transforms, 16 bone lengths.

This is HALO's differentiable mapping from a posed skeleton to the rigid
transforms that bring each hand part into one shared canonical ("straight
hand") space.  All inputs and outputs are in metres; the original network's
model units (metres x 2.5) are applied elsewhere (``halo.core.model``).

Steps (the original's section-1 math, re-derived):

1. Global normalization ``N`` (B,4,4): wrist to the origin, middle root bone
   (wrist -> middle MCP) along -x, palm normal (middle root x index root) along
   +y.  Left hands are mirrored (y negated) first and the mirror is folded into
   ``N``.  Like the original, ``N`` carries no gradient: the normalized
   keypoints ``N @ kp`` do, through ``kp``.
2. Root-plane normalization: rotate the thumb, ring and pinky root bones about
   their neighbours so the dihedral angles between consecutive root-bone planes
   become 0.8 / 0.2 / 0.2 rad (index and middle are the anchor).
3. Root-angle normalization: in-plane angles between consecutive root bones
   become 0.4 / 0.2 / 0.2 / 0.2 rad.  Each finger moves rigidly with its root.
4. Twist-free local frames per non-root bone (detached, as in the original),
   flexion/abduction angles, and the rotations that straighten every finger
   along its normalized root bone.
5. Each part transform maps posed (normalized) points rigidly onto the canonical
   straight hand: ``M = [U R | c - U R p]`` with ``R`` the finger's root
   normalization, ``U`` the accumulated unposing rotation, ``p`` the posed and
   ``c`` the canonical position of the bone's parent joint.

Part 0 (palm) is the identity: only the global normalization acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from halo.core.skeleton import (
    BONES,
    FINGER_JOINTS,
    FINGER_NAMES,
    JOINT_NAMES,
    NUM_JOINTS,
    bone_lengths_from_keypoints,
)
from halo.utils.errors import InputError

# Target angles of the canonical pose, radians (fixed by the released model).
ROOT_PLANE_ANGLES = (0.8, 0.2, 0.2)  # thumb|index, middle|ring, ring|pinky plane dihedrals
ROOT_BONE_ANGLES = (0.4, 0.2, 0.2, 0.2)  # thumb-index, index-middle, middle-ring, ring-pinky

#: (finger, level) of each non-palm part in part order; level 1 = proximal phalanx.
_PART_FINGER_LEVEL = (
    (1, 1), (1, 2), (1, 3),  # index
    (2, 1), (2, 2), (2, 3),  # middle
    (4, 1), (4, 2), (4, 3),  # pinky
    (3, 1), (3, 2), (3, 3),  # ring
    (0, 1), (0, 2), (0, 3),  # thumb
)  # fmt: skip

_MIN_BONE_LENGTH_M = 1e-4  # 0.1 mm: shorter bones have no usable direction
_MIN_SIN = 1e-4  # below this two directions are treated as parallel


class CanonicalizationError(InputError):
    """Degenerate keypoints: names the sample and the offending bone or plane."""


@dataclass
class CanonicalPose:
    """Output of :func:`canonicalize` (all metres).

    Attributes:
        normalization: (B,4,4) posed-space homogeneous metres -> normalized hand frame. No gradient.
        part_transforms: (B,16,4,4) normalized hand frame -> canonical hand space, per part.
        bone_lengths: (B,16) part bone lengths in part order (palm = wrist to middle MCP).
        bone_angles: (B,15,2) flexion / abduction (rad) of the 15 non-root bones,
            finger-major (thumb, index, middle, ring, pinky), levels 1..3.
        normalized_keypoints: (B,21,3) keypoints in the normalized frame (public order).
    """

    normalization: torch.Tensor
    part_transforms: torch.Tensor
    bone_lengths: torch.Tensor
    bone_angles: torch.Tensor
    normalized_keypoints: torch.Tensor


@dataclass
class DetachedQuantities:
    """What the original treats as constants: the global normalization and the local frames.

    Passing these to :func:`canonicalize` holds them fixed, which makes the
    layer's autograd gradient checkable against finite differences.
    """

    normalization: torch.Tensor  # (B,4,4)
    frames: torch.Tensor  # (B,5,3,3,3): finger, level 1..3, rows x/y/z


# ----------------------------------------------------------------------------- small batched helpers


def _cross(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.cross(a, b, dim=-1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _angle(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Unsigned angle between (non-normalized) vectors, stable at 0 and pi."""
    return torch.atan2(_cross(u, v).norm(dim=-1), _dot(u, v))


def signed_angle(u: torch.Tensor, v: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Angle that rotates u onto v about ``ref`` (right-hand rule), in (-pi, pi]."""
    c = _cross(u, v)
    ang = torch.atan2(c.norm(dim=-1), _dot(u, v))
    return torch.where(_dot(ref, c) < 0, -ang, ang)


def _axis_angle_matrix(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues rotation matrices (...,3,3) about unit-normalized ``axis`` by ``angle``."""
    k = _normalize(axis)
    kx, ky, kz = k.unbind(-1)
    zero = torch.zeros_like(kx)
    skew = torch.stack([zero, -kz, ky, kz, zero, -kx, -ky, kx, zero], dim=-1).reshape(*k.shape[:-1], 3, 3)
    eye = torch.eye(3, dtype=k.dtype, device=k.device).expand_as(skew)
    s = torch.sin(angle)[..., None, None]
    c = torch.cos(angle)[..., None, None]
    return eye + s * skew + (1 - c) * (skew @ skew)


def _rot_x(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(*a.shape, 3, 3)


def _rot_y(a: torch.Tensor) -> torch.Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*a.shape, 3, 3)


def _mv(m: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return (m @ v.unsqueeze(-1)).squeeze(-1)


# ----------------------------------------------------------------------------- validation


def validate_keypoints(keypoints: torch.Tensor, name: str = "keypoints") -> None:
    """Raise :class:`CanonicalizationError` for wrong shapes, non-finite values or zero-length bones."""
    if not isinstance(keypoints, torch.Tensor):
        raise CanonicalizationError(f"{name} must be a torch.Tensor, got {type(keypoints).__name__}")
    if keypoints.dim() != 3 or keypoints.shape[1:] != (NUM_JOINTS, 3):
        raise CanonicalizationError(
            f"{name} must have shape (B, {NUM_JOINTS}, 3) in metres, got {tuple(keypoints.shape)}"
        )
    if not keypoints.is_floating_point():
        raise CanonicalizationError(f"{name} must be floating point, got {keypoints.dtype}")
    finite = torch.isfinite(keypoints).all(dim=-1)  # (B,21)
    if not bool(finite.all()):
        b, j = (~finite).nonzero()[0].tolist()
        raise CanonicalizationError(f"{name}: sample {b} joint {j} ({JOINT_NAMES[j]}) is NaN or infinite")
    kp = keypoints.detach()
    bones = torch.tensor(BONES, device=kp.device)  # (20,2): finger-major, root bone first
    lengths = (kp[:, bones[:, 1]] - kp[:, bones[:, 0]]).norm(dim=-1)  # (B,20)
    bad = lengths < _MIN_BONE_LENGTH_M
    if bool(bad.any()):
        b, i = bad.nonzero()[0].tolist()
        parent, child = BONES[i]
        raise CanonicalizationError(
            f"{name}: sample {b} has a zero-length {FINGER_NAMES[i // 4]} bone "
            f"{JOINT_NAMES[parent]} -> {JOINT_NAMES[child]} "
            f"({float(lengths[b, i]) * 1000:.4f} mm; coincident joints?)"
        )


def _raise_if_parallel(sin_values: torch.Tensor, what: str) -> None:
    bad = sin_values < _MIN_SIN
    if bool(bad.any()):
        b = int(bad.nonzero()[0])
        raise CanonicalizationError(
            f"keypoints: sample {b}: {what} are parallel; the hand frame is undefined"
        )


# ----------------------------------------------------------------------------- global normalization


def global_normalization(
    keypoints: torch.Tensor, is_left: torch.Tensor | None = None, *, detach: bool = True
) -> torch.Tensor:
    """(B,4,4) rigid(+mirror) transform posed metres -> normalized hand frame, detached unless
    ``detach=False``.

    Wrist -> origin, middle root bone -> -x, palm normal (middle root x index root) -> +y.
    """
    src = keypoints.detach() if detach else keypoints
    flip = torch.ones(src.shape[0], 3, dtype=src.dtype, device=src.device)
    if is_left is not None:
        flip[:, 1] = torch.where(is_left.to(src.device).bool(), -1.0, 1.0).to(src.dtype)
    kp = src * flip[:, None, :]
    wrist = kp[:, 0]
    middle = kp[:, 9] - wrist
    index = kp[:, 5] - wrist
    normal = _cross(middle, index)
    _raise_if_parallel(
        normal.norm(dim=-1) / (middle.norm(dim=-1) * index.norm(dim=-1)).clamp_min(1e-30),
        "the index and middle root bones (wrist -> MCP)",
    )
    ex = -_normalize(middle)
    ey = _normalize(normal)
    ez = _cross(ex, ey)
    rot = torch.stack([ex, ey, ez], dim=-2) * flip[:, None, :]  # fold the mirror in: R @ diag(flip)
    out = torch.zeros(kp.shape[0], 4, 4, dtype=kp.dtype, device=kp.device)
    out[:, :3, :3] = rot
    out[:, :3, 3] = -_mv(rot, src[:, 0])
    out[:, 3, 3] = 1.0
    return out


def apply_transform(matrix: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Apply (B,...,4,4) homogeneous transforms to (B,N,3) points -> (B,N,3)."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]


# ----------------------------------------------------------------------------- root normalization


def _root_normalization(root_dirs: torch.Tensor) -> torch.Tensor:
    """Per-finger rotations (B,5,3,3) that normalize the root-bone planes and angles.

    ``root_dirs``: (B,5,3) unit root-bone directions, thumb..pinky.
    """
    b0, b1, b2, b3, b4 = root_dirs.unbind(1)
    eye = torch.eye(3, dtype=root_dirs.dtype, device=root_dirs.device).expand(root_dirs.shape[0], 3, 3)

    # Plane dihedrals: index and middle are the anchor.
    n0, n1, n2 = _cross(b1, b0), _cross(b2, b1), _cross(b3, b2)
    r_thumb = _axis_angle_matrix(b1, signed_angle(n0, n1, b1) - ROOT_PLANE_ANGLES[0])
    r_ring = _axis_angle_matrix(b2, signed_angle(n2, n1, b2) + ROOT_PLANE_ANGLES[1])
    b3, b4 = _mv(r_ring, b3), _mv(r_ring, b4)
    n2, n3 = _cross(b3, b2), _cross(b4, b3)
    r_pinky = _axis_angle_matrix(b3, signed_angle(n3, n2, b3) + ROOT_PLANE_ANGLES[2]) @ r_ring
    b0 = _mv(r_thumb, b0)
    b4 = _mv(r_pinky, root_dirs[:, 4])

    # In-plane angles between consecutive root bones.
    a_index = _axis_angle_matrix(_cross(b2, b1), ROOT_BONE_ANGLES[1] - _angle(b2, b1))
    b1, b0 = _mv(a_index, b1), _mv(a_index, b0)
    a_thumb = _axis_angle_matrix(_cross(b1, b0), ROOT_BONE_ANGLES[0] - _angle(b1, b0)) @ a_index
    a_ring = _axis_angle_matrix(_cross(b3, b2), _angle(b3, b2) - ROOT_BONE_ANGLES[2])
    b3, b4 = _mv(a_ring, b3), _mv(a_ring, b4)
    a_pinky = _axis_angle_matrix(_cross(b4, b3), _angle(b4, b3) - ROOT_BONE_ANGLES[3]) @ a_ring

    return torch.stack([a_thumb @ r_thumb, a_index, eye, a_ring @ r_ring, a_pinky @ r_pinky], dim=1)


# ----------------------------------------------------------------------------- local frames and angles


def _finger_normals(root_dirs: torch.Tensor) -> torch.Tensor:
    """(B,5,3) per-finger plane normals from the (normalized) root bones."""
    p = _normalize(_cross(root_dirs[:, :4], root_dirs[:, 1:]))  # (B,4,3): planes between neighbours
    return torch.stack([p[:, 0], p[:, 1], (p[:, 1] + p[:, 2]) / 2, (p[:, 2] + p[:, 3]) / 2, p[:, 3]], dim=1)


def _flexion_abduction(local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flexion (about local y) and abduction (about the flexed x) of local unit directions (...,3)."""
    x, y, z = local.unbind(-1)
    proj = torch.stack([x, torch.zeros_like(y), z], dim=-1)
    lim = 1.0 - 1e-6
    proj_n = _normalize(proj)
    flex = torch.acos(proj_n[..., 2].clamp(-lim, lim))
    flex = torch.where(x < 0, -flex, flex)
    abd = torch.acos(_dot(_normalize(local), proj_n).clamp(-lim, lim))
    abd = torch.where(y > 0, -abd, abd)
    return flex, abd


def _unposing_rotation(flex: torch.Tensor, abd: torch.Tensor) -> torch.Tensor:
    """Local rotation undoing a bone's flexion and abduction (maps the bone onto local +z).

    The posing rotation is R_y(flex) R_x(abd); its inverse is R_x(-abd) R_y(-flex).
    """
    return _rot_x(-abd) @ _rot_y(-flex)


def _local_frames(root_dirs: torch.Tensor, finger_dirs: torch.Tensor) -> torch.Tensor:
    """Twist-free frames (B,5,3,3,3) [finger, level 1..3, rows x/y/z] of the non-root bones.

    The level-1 frame has z along the root bone and y normal to the finger's
    plane; deeper frames are the parent's frame carried along by the parent
    bone's flexion then abduction, so no twist about bone axes appears.
    """
    z = root_dirs
    y = _normalize(_cross(z, _finger_normals(root_dirs)))
    x = _normalize(_cross(y, z))
    frame = torch.stack([x, y, z], dim=-2)  # (B,5,3,3)
    frames = [frame]
    for level in range(2):
        flex, abd = _flexion_abduction(_mv(frame, finger_dirs[:, :, level]))
        frame = _unposing_rotation(flex, abd) @ frame
        frames.append(frame)
    return torch.stack(frames, dim=2)


def detached_quantities(keypoints: torch.Tensor, is_left: torch.Tensor | None = None) -> DetachedQuantities:
    """The quantities the layer treats as constants, computed at ``keypoints``."""
    with torch.no_grad():
        norm = global_normalization(keypoints, is_left)
        _, _, root_dirs, finger_dirs, _ = _normalized_bones(keypoints, norm)
        return DetachedQuantities(norm, _local_frames(root_dirs, finger_dirs))


def _normalized_bones(keypoints: torch.Tensor, norm: torch.Tensor):
    """Normalized keypoints, per-finger bone lengths (B,5,4), root-normalized root directions (B,5,3),
    root-normalized non-root directions (B,5,3,3) and the finger root rotations (B,5,3,3)."""
    kp_n = apply_transform(norm, keypoints)
    joints = kp_n[:, torch.tensor(FINGER_JOINTS, device=keypoints.device)]  # (B,5,4,3)
    parents = torch.cat([kp_n[:, None, None, 0].expand(-1, 5, 1, 3), joints[:, :, :3]], dim=2)
    bones = joints - parents  # (B,5,4,3): level 0 = root bone
    lengths = bones.norm(dim=-1).clamp_min(1e-9)
    dirs = bones / lengths[..., None]
    root = _root_normalization(dirs[:, :, 0])  # (B,5,3,3)
    dirs_n = (root[:, :, None] @ dirs.unsqueeze(-1)).squeeze(-1)  # root-normalized directions
    return kp_n, lengths, dirs_n[:, :, 0], dirs_n[:, :, 1:], root


# ----------------------------------------------------------------------------- the layer


def canonicalize(
    keypoints: torch.Tensor,
    is_left: torch.Tensor | None = None,
    *,
    validate: bool = True,
    fixed: DetachedQuantities | None = None,
    attached: bool = False,
) -> CanonicalPose:
    """Keypoints (B,21,3) metres, public order -> :class:`CanonicalPose`.

    Differentiable w.r.t. ``keypoints`` except through the global normalization
    and the local bone frames, which are detached exactly as in the original.
    ``attached=True`` keeps both attached (same values): then the gradient w.r.t. the keypoints
    is the true derivative. The detached one is what the original trains with, and it is wrong
    for moving keypoints: on a trained model d(logits)/d(translation) had the wrong sign on one
    axis and finger-angle derivatives were 2-4x off (tests/core/test_exact_gradient.py checks
    the attached one against finite differences). Fitting, refinement and grasp losses that
    move keypoints want ``attached=True`` (:meth:`halo.core.model.HaloModel.forward`'s
    ``exact_gradient``).

    Args:
        keypoints: (B,21,3) float32/float64, metres, MANO joint order.
        is_left: optional (B,) bool; left hands are mirrored into right hands.
        validate: check shape, finiteness and bone lengths first (raises
            :class:`CanonicalizationError`, a ``ValueError``, naming sample and bone).
        fixed: hold the detached quantities at these values (for gradient checks).
        attached: do not detach the normalization and the local frames (see above).
    """
    if attached and fixed is not None:
        raise ValueError("canonicalize: 'fixed' holds the detached quantities; it cannot be attached")
    if validate:
        validate_keypoints(keypoints)
    norm = (
        fixed.normalization
        if fixed is not None
        else global_normalization(keypoints, is_left, detach=not attached)
    )
    kp_n, lengths, root_dirs, finger_dirs, root = _normalized_bones(keypoints, norm)
    if validate:
        _raise_if_parallel(
            _cross(root_dirs[:, :4], root_dirs[:, 1:]).norm(dim=-1).amin(dim=-1),
            "two neighbouring finger root bones",
        )
    if attached:
        frames = _local_frames(root_dirs, finger_dirs)
    else:
        frames = (
            fixed.frames if fixed is not None else _local_frames(root_dirs.detach(), finger_dirs.detach())
        )
        frames = frames.detach()

    # Unposing rotations r_l in each bone's local frame (gradient flows through the directions).
    flex, abd = _flexion_abduction((frames @ finger_dirs.unsqueeze(-1)).squeeze(-1))  # (B,5,3)
    r = _unposing_rotation(flex, abd)  # (B,5,3,3,3)
    f1, f2, f3 = frames.unbind(2)
    r1, r2, r3 = r.unbind(2)
    ft = lambda f: f.transpose(-1, -2)  # noqa: E731
    # Accumulated world-space unposing per level (chain of the parents' unposing).
    u1 = ft(f1) @ r1 @ f1
    u2 = ft(f2) @ (r1 @ r2) @ f2
    u3 = ft(f3) @ (r2 @ r1) @ r3 @ f3
    unpose = torch.stack([u1, u2, u3], dim=2)  # (B,5,3,3,3)

    # Canonical joints: each finger straightened along its normalized root bone.
    unposed_dirs = (unpose @ finger_dirs.unsqueeze(-1)).squeeze(-1)  # (B,5,3,3)
    steps = torch.cat([root_dirs[:, :, None], unposed_dirs], dim=2) * lengths[..., None]  # (B,5,4,3)
    canon_joints = torch.cumsum(steps, dim=2)  # canonical positions of joints root..tip

    rot = unpose @ root[:, :, None]  # (B,5,3,3,3)
    posed_parent = kp_n[:, torch.tensor(FINGER_JOINTS, device=keypoints.device)[:, :3]]  # (B,5,3,3)
    trans = canon_joints[:, :, :3] - (rot @ posed_parent.unsqueeze(-1)).squeeze(-1)

    bsz = keypoints.shape[0]
    mats = torch.zeros(bsz, 5, 3, 4, 4, dtype=keypoints.dtype, device=keypoints.device)
    mats[..., :3, :3] = rot
    mats[..., :3, 3] = trans
    mats[..., 3, 3] = 1.0
    fingers = torch.tensor([f for f, _ in _PART_FINGER_LEVEL], device=keypoints.device)
    levels = torch.tensor([lv - 1 for _, lv in _PART_FINGER_LEVEL], device=keypoints.device)
    palm = torch.eye(4, dtype=keypoints.dtype, device=keypoints.device).expand(bsz, 1, 4, 4)
    part_transforms = torch.cat([palm, mats[:, fingers, levels]], dim=1)

    return CanonicalPose(
        normalization=norm,
        part_transforms=part_transforms,
        bone_lengths=bone_lengths_from_keypoints(keypoints),
        bone_angles=torch.stack([flex, abd], dim=-1).reshape(bsz, 15, 2),
        normalized_keypoints=kp_n,
    )
