"""Hand skeleton forward kinematics (torch only): joint rotations -> 21 keypoints with fixed bones.

Why: a decoder that predicts 63 free coordinates produces skeletons that are not hands (bones
25 % too short, spread 0.7-1.8 cm per bone, measured); HALO then meshes them as stretched or
empty hands.  Predicting rotations and building the keypoints by forward kinematics makes every
output a hand by construction: bone lengths come from a template (the training grasps' mean),
the palm is rigid (in MANO the wrist and the five finger roots move together: the root joints
only depend on shape), and only the 15 finger joints and the global pose move.

Conventions (metres, MANO joint order, :mod:`halo.core.skeleton`):

* template palm: (6,3) wrist + thumb CMC / index / middle / ring / pinky roots in a palm frame
  (wrist at the origin, x towards the middle root, z the palm normal index x middle side);
* template finger bone lengths (5,3): root->2nd, 2nd->3rd, 3rd->tip per finger;
* rest frame of finger k (5,3,3): columns x = wrist->root direction, z = palm normal projected,
  y = z x x; an identity joint rotation continues the finger along its root bone;
* pose: global rotation (B,3,3), wrist position (B,3), finger joint rotations (B,5,3,3,3) each
  relative to its parent bone's frame, a per-hand scale (B,).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F

from halo.core.skeleton import FINGER_JOINTS, NUM_JOINTS, bone_vectors
from halo.utils.errors import InputError

__all__ = [
    "PALM_JOINTS",
    "SkeletonTemplate",
    "axis_angle_to_matrix",
    "bone_lengths",
    "default_template",
    "fit_template",
    "forward_kinematics",
    "palm_frame",
    "rigid_gradient_only",
    "rotation_6d_to_matrix",
    "IDENTITY_6D",
]

#: Wrist and the five finger roots (thumb CMC, index..pinky MCP): the rigid palm.
PALM_JOINTS: tuple[int, ...] = (0,) + tuple(f[0] for f in FINGER_JOINTS)
#: 6D encoding (first two columns) of the identity rotation.
IDENTITY_6D: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


class KinematicsError(InputError):
    """Bad template or pose shapes (names the argument and the shape)."""


def rotation_6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """(...,6) -> (...,3,3) rotation by Gram-Schmidt of two 3-vectors (the matrix's first two columns).

    Continuous over all rotations (unlike Euler angles or quaternions' sign), so a network can
    regress it.  Degenerate inputs (parallel or zero columns) get a tiny epsilon, not NaN.
    """
    a1, a2 = x[..., :3], x[..., 3:6]
    b1 = F.normalize(a1, dim=-1, eps=1e-8)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-8)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def axis_angle_to_matrix(v: torch.Tensor) -> torch.Tensor:
    """(...,3) axis-angle (rad) -> (...,3,3) rotation (Rodrigues; smooth through zero)."""
    theta2 = (v * v).sum(-1, keepdim=True)[..., None]  # (...,1,1)
    theta = torch.sqrt(theta2 + 1e-12)
    zero = torch.zeros_like(v[..., 0])
    k = torch.stack(
        [
            torch.stack([zero, -v[..., 2], v[..., 1]], -1),
            torch.stack([v[..., 2], zero, -v[..., 0]], -1),
            torch.stack([-v[..., 1], v[..., 0], zero], -1),
        ],
        dim=-2,
    )
    # sin(t)/t and (1-cos(t))/t^2 with their Taylor series near zero (finite gradients at 0).
    small = theta < 1e-3
    a = torch.where(small, 1.0 - theta2 / 6.0, torch.sin(theta) / theta)
    b = torch.where(small, 0.5 - theta2 / 24.0, (1.0 - torch.cos(theta)) / theta.clamp_min(1e-6) ** 2)
    eye = torch.eye(3, dtype=v.dtype, device=v.device).expand(k.shape)
    return eye + a * k + b * (k @ k)


def bone_lengths(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) -> (B,20) bone lengths (metres), finger-major, root bone first (skeleton.BONES order)."""
    return bone_vectors(keypoints).norm(dim=-1)


def palm_frame(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) -> (B,3,3) palm frame, columns x (wrist->middle root), y, z (palm normal)."""
    wrist = keypoints[:, 0]
    x = F.normalize(keypoints[:, 9] - wrist, dim=-1, eps=1e-9)
    index = keypoints[:, 5] - wrist
    z = F.normalize(torch.linalg.cross(index, x, dim=-1), dim=-1, eps=1e-9)
    y = torch.linalg.cross(z, x, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def rigid_gradient_only(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,21,3) -> the same keypoints, through which gradients reach only the hand's rigid pose.

    The hand is re-expressed as its palm frame (:func:`palm_frame`) and wrist, which keep their
    gradient, times its shape in that frame, which is detached.  With the kinematic decoder (rigid
    palm, fixed bones) a loss on the result can move and turn the hand but cannot bend, open or
    shrink it (with free coordinates it moves the wrist, index and middle roots).  The HALO-VAE's interpenetration term uses it
    (``model.inter_gradient=rigid``) so that it moves hands out of objects instead of flattening
    every grasp into the one pose that penetrates least (measured: the term on all keypoints
    collapsed the generated grasps' diversity, cluster size 0.24 cm against 2.5 without it).
    """
    frame = palm_frame(keypoints)  # (B,3,3) columns = axes
    wrist = keypoints[:, :1]
    local = ((keypoints - wrist) @ frame).detach()  # coordinates along the axes
    return wrist + local @ frame.transpose(-1, -2)


@dataclass
class SkeletonTemplate:
    """The fixed part of a kinematic hand (metres)."""

    palm: torch.Tensor  # (6,3) PALM_JOINTS in the palm frame, wrist at the origin
    lengths: torch.Tensor  # (5,3) finger bone lengths root->2nd, 2nd->3rd, 3rd->tip

    def __post_init__(self) -> None:
        if tuple(self.palm.shape) != (6, 3):
            raise KinematicsError(f"template palm must have shape (6, 3), got {tuple(self.palm.shape)}")
        if tuple(self.lengths.shape) != (5, 3):
            raise KinematicsError(f"template lengths must have shape (5, 3), got {tuple(self.lengths.shape)}")
        if not bool((self.lengths > 0).all()):
            raise KinematicsError(f"template bone lengths must be > 0, got {self.lengths.tolist()}")

    def rest_frames(self) -> torch.Tensor:
        """(5,3,3) each finger's rest frame (columns x along the root bone, z ~ palm normal)."""
        x = F.normalize(self.palm[1:], dim=-1, eps=1e-9)
        n = torch.tensor([0.0, 0.0, 1.0], dtype=x.dtype, device=x.device).expand_as(x)
        z = F.normalize(n - (n * x).sum(-1, keepdim=True) * x, dim=-1, eps=1e-9)
        y = torch.linalg.cross(z, x, dim=-1)
        return torch.stack([x, y, z], dim=-1)

    def keypoints(self) -> torch.Tensor:
        """(21,3) the template with every joint rotation at identity (fingers straight)."""
        eye = torch.eye(3, dtype=self.palm.dtype, device=self.palm.device)
        return forward_kinematics(
            self, eye[None], torch.zeros(1, 3, dtype=eye.dtype), eye.expand(1, 5, 3, 3, 3)
        )[0]


def fit_template(keypoints: torch.Tensor) -> SkeletonTemplate:
    """The mean skeleton of (N,21,3) hands (metres): mean finger bone lengths and mean palm shape.

    The palm of every hand is expressed in its own :func:`palm_frame` (rotation-free), so posed
    and rotated training grasps average to one rigid palm.
    """
    kp = torch.as_tensor(keypoints, dtype=torch.float64)
    if kp.dim() != 3 or kp.shape[1:] != (NUM_JOINTS, 3) or kp.shape[0] < 1:
        raise KinematicsError(f"fit_template needs keypoints of shape (N>=1, 21, 3), got {tuple(kp.shape)}")
    kp = kp[torch.isfinite(kp).flatten(1).all(-1)]
    if kp.shape[0] == 0:
        raise KinematicsError("fit_template: no finite hand among the keypoints")
    frame = palm_frame(kp)  # (N,3,3)
    local = (kp[:, list(PALM_JOINTS)] - kp[:, :1]) @ frame  # (N,6,3) rows = frame^T (p - wrist)
    lengths = bone_lengths(kp).view(-1, 5, 4)[:, :, 1:]
    return SkeletonTemplate(local.mean(0).float(), lengths.mean(0).float())


def default_template() -> SkeletonTemplate:
    """An adult right hand (approximate anatomical proportions; replaced by :func:`fit_template`
    of the training grasps before a kinematic decoder is trained)."""
    palm = torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.025, -0.025, -0.005],  # thumb CMC
            [0.090, -0.022, 0.0],  # index MCP
            [0.092, 0.0, 0.0],  # middle MCP
            [0.085, 0.019, 0.0],  # ring MCP
            [0.075, 0.036, 0.0],  # pinky MCP
        ]
    )
    lengths = torch.tensor(
        [
            [0.035, 0.032, 0.028],
            [0.040, 0.024, 0.022],
            [0.044, 0.027, 0.023],
            [0.041, 0.026, 0.023],
            [0.032, 0.019, 0.020],
        ]
    )
    return SkeletonTemplate(palm, lengths)


def forward_kinematics(
    template: SkeletonTemplate,
    global_rotation: torch.Tensor,
    wrist: torch.Tensor,
    joint_rotations: torch.Tensor,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Keypoints (B,21,3) metres from a pose (see the module docstring for the conventions).

    Args:
        template: palm and bone lengths (metres).
        global_rotation: (B,3,3) palm frame -> world.
        wrist: (B,3) wrist position, metres.
        joint_rotations: (B,5,3,3,3) per finger, per joint (root, 2nd, 3rd) rotation of the
            outgoing bone relative to the parent bone's frame (the finger's rest frame for the root).
        scale: optional (B,) per-hand size factor (palm and bones scale together).
    """
    bsz = global_rotation.shape[0]
    if tuple(global_rotation.shape[1:]) != (3, 3) or tuple(wrist.shape) != (bsz, 3):
        raise KinematicsError(
            f"global_rotation (B,3,3) and wrist (B,3) expected, got {tuple(global_rotation.shape)} "
            f"and {tuple(wrist.shape)}"
        )
    if tuple(joint_rotations.shape) != (bsz, 5, 3, 3, 3):
        raise KinematicsError(
            f"joint_rotations must have shape (B,5,3,3,3), got {tuple(joint_rotations.shape)}"
        )
    dtype, device = global_rotation.dtype, global_rotation.device
    palm = template.palm.to(device, dtype)
    lengths = template.lengths.to(device, dtype)
    rest = template.rest_frames().to(device, dtype)
    s = torch.ones(bsz, dtype=dtype, device=device) if scale is None else scale.to(dtype)
    s = s.view(bsz, 1, 1)
    out = [None] * NUM_JOINTS
    palm_world = (palm[None] @ global_rotation.transpose(-1, -2)) * s + wrist[:, None]  # (B,6,3)
    for i, j in enumerate(PALM_JOINTS):
        out[j] = palm_world[:, i]
    frames = global_rotation[:, None] @ rest[None]  # (B,5,3,3) each finger's rest frame in the world
    for k, finger in enumerate(FINGER_JOINTS):
        frame = frames[:, k]
        pos = out[finger[0]]
        for level in range(3):
            frame = frame @ joint_rotations[:, k, level]
            pos = pos + frame[..., 0] * (lengths[k, level] * s[:, 0])
            out[finger[level + 1]] = pos
    return torch.stack(out, dim=1)
