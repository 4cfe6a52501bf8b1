"""A kinematic hand for fitting, and the priors that keep a fitted skeleton a hand.

The fit does not move 21 free points: it poses a mean hand (the synthetic
MANO-format hand's rest skeleton, :mod:`halo.hands.synthetic_hand`) with

* a global rotation (6-D representation), translation and log scale,
* per finger an offset of its root joint (thumb CMC / MCP) in the hand frame,
* per bone a log length factor (bone-length ratios stay near the mean hand's),
* per joint flexion / abduction / twist in the synthetic hand's anatomical joint
  frames (:func:`halo.hands.synthetic_hand.joint_frames`), limited by
  :data:`halo.hands.synthetic_hand.POSE_LIMITS_DEG`.

Forward kinematics turns these into (B,21,3) keypoints, so every bone stays a
bone (no collapsed or swapped joints) while the optimiser works.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from halo.core.skeleton import BONES, FINGER_JOINTS, NUM_JOINTS, bone_vectors, mano_to_halo
from halo.hands.synthetic_hand import POSE_LIMITS_DEG, joint_frames

#: Rest keypoints of the synthetic hand (zero pose, metres, MANO order): fingers along -x,
#: back of the hand +y, thumb +z; the normalized frame of ``halo.core.canonicalization``.
#: Checked against ``get_synthetic_hand_model()`` by tests/fit/test_priors.py.
REST_KEYPOINTS = np.array(
    [
        [0.0, 0.0, 0.0],
        [-0.0225, -0.012, 0.025], [-0.0436, -0.01596, 0.05006],
        [-0.06466, -0.01994, 0.06884], [-0.09028, -0.02475, 0.08741],
        [-0.087, -0.00121, 0.0235], [-0.12081, -0.00121, 0.02705],
        [-0.14419, -0.00121, 0.02951], [-0.16805, -0.00121, 0.03202],
        [-0.096, 0.0, 0.0005], [-0.13, 0.0, 0.0008], [-0.1555, 0.0, 0.00102], [-0.1835, 0.0, 0.00126],
        [-0.0885, -0.00101, -0.0215], [-0.11883, -0.00101, -0.02469],
        [-0.14469, -0.00101, -0.02741], [-0.17005, -0.00101, -0.03007],
        [-0.079, -0.0035, -0.04], [-0.10238, -0.0035, -0.0454],
        [-0.12139, -0.0035, -0.04979], [-0.14233, -0.0035, -0.05462],
    ]
)  # fmt: skip

#: Row of POSE_LIMITS_DEG / joint_frames (MANO internal joints 1..15) of each finger's first joint,
#: fingers in the public order (thumb, index, middle, ring, pinky).
_INTERNAL_ROW = (12, 0, 3, 9, 6)
#: Extra room (degrees) around the synthetic sampler's joint limits: real and HALO hands bend further.
LIMIT_MARGIN_DEG = 10.0


def _rest_frames() -> np.ndarray:
    """(5,3,3,3) anatomical frames (columns flexion, abduction, bone) per finger and level."""
    internal = mano_to_halo(REST_KEYPOINTS, joint_axis=0)[:16]
    tips = REST_KEYPOINTS[[4, 8, 12, 16, 20]]
    frames = joint_frames(internal, tips)
    return np.stack([frames[r : r + 3] for r in _INTERNAL_ROW])


def _limits() -> np.ndarray:
    """(5,3,3,2) radians: finger, level, (flex, abd, twist), (min, max)."""
    lim = np.stack([POSE_LIMITS_DEG[r : r + 3] for r in _INTERNAL_ROW])
    lim = lim + np.array([-LIMIT_MARGIN_DEG, LIMIT_MARGIN_DEG])
    return np.deg2rad(lim)


def rotation_6d_to_matrix(d6: torch.Tensor) -> torch.Tensor:
    """(...,6) -> (...,3,3) rotation by Gram-Schmidt (columns), continuous for optimisation."""
    a, b = d6[..., :3], d6[..., 3:]
    x = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    b = b - (x * b).sum(-1, keepdim=True) * x
    y = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    z = torch.linalg.cross(x, y, dim=-1)
    return torch.stack([x, y, z], dim=-1)


def matrix_to_rotation_6d(rot: torch.Tensor) -> torch.Tensor:
    return torch.cat([rot[..., :, 0], rot[..., :, 1]], dim=-1)


def _euler_xyz(angles: torch.Tensor) -> torch.Tensor:
    """(...,3) intrinsic X-Y-Z angles (radians) -> (...,3,3) = Rx @ Ry @ Rz."""
    cx, cy, cz = torch.cos(angles).unbind(-1)
    sx, sy, sz = torch.sin(angles).unbind(-1)
    one, zero = torch.ones_like(cx), torch.zeros_like(cx)
    rx = torch.stack([one, zero, zero, zero, cx, -sx, zero, sx, cx], -1).reshape(*cx.shape, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], -1).reshape(*cx.shape, 3, 3)
    rz = torch.stack([cz, -sz, zero, sz, cz, zero, zero, zero, one], -1).reshape(*cx.shape, 3, 3)
    return rx @ ry @ rz


@dataclass
class HandParameters:
    """Kinematic parameters of B hands (all tensors; optimised in place)."""

    rot6d: torch.Tensor  # (B,6) global rotation
    translation: torch.Tensor  # (B,3) wrist position, metres
    log_scale: torch.Tensor  # (B,) overall size relative to the mean hand
    root_offsets: torch.Tensor  # (B,5,3) finger root offsets, metres in the (scaled) hand frame
    bone_log_lengths: torch.Tensor  # (B,15) log length factor of the 15 finger bones (3 per finger)
    angles: torch.Tensor  # (B,5,3,3) radians: finger, level, (flex, abd, twist)

    def tensors(self) -> list[torch.Tensor]:
        return [
            self.rot6d,
            self.translation,
            self.log_scale,
            self.root_offsets,
            self.bone_log_lengths,
            self.angles,
        ]

    @classmethod
    def initial(
        cls, rotation: torch.Tensor, translation: torch.Tensor, scale: torch.Tensor, angles: torch.Tensor
    ) -> HandParameters:
        """Mean-hand proportions posed by ``angles`` (B,5,3,3) at a rigid placement."""
        b = rotation.shape[0]
        z = rotation.new_zeros
        return cls(
            matrix_to_rotation_6d(rotation).clone(),
            translation.clone(),
            torch.log(scale).clone(),
            z(b, 5, 3),
            z(b, 15),
            angles.clone(),
        )

    def detach(self) -> HandParameters:
        return HandParameters(*[t.detach().clone() for t in self.tensors()])

    def select(self, index: torch.Tensor) -> HandParameters:
        return HandParameters(*[t[index].detach().clone() for t in self.tensors()])

    def cat(self, other: HandParameters) -> HandParameters:
        """These hands, then ``other``'s (detached)."""
        return HandParameters(
            *[torch.cat([a, b]).detach() for a, b in zip(self.tensors(), other.tensors(), strict=True)]
        )


class KinematicHand(torch.nn.Module):
    """Forward kinematics of the mean hand: :class:`HandParameters` -> (B,21,3) keypoints (metres, MANO order)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("rest", torch.tensor(REST_KEYPOINTS, dtype=torch.float32))
        self.register_buffer("frames", torch.tensor(_rest_frames(), dtype=torch.float32))
        self.register_buffer("limits", torch.tensor(_limits(), dtype=torch.float32))
        lengths = [np.linalg.norm(REST_KEYPOINTS[c] - REST_KEYPOINTS[p]) for p, c in BONES]
        self.register_buffer("rest_bone_lengths", torch.tensor(lengths, dtype=torch.float32))

    def local_rotations(self, angles: torch.Tensor) -> torch.Tensor:
        """(B,5,3,3) angles -> (B,5,3,3,3) joint rotations in the rest-aligned parent frame."""
        frames = self.frames.to(angles.dtype)
        return frames @ _euler_xyz(angles) @ frames.transpose(-1, -2)

    def forward(self, params: HandParameters) -> torch.Tensor:
        rot = rotation_6d_to_matrix(params.rot6d)  # (B,3,3)
        scale = torch.exp(params.log_scale)[:, None]  # (B,1)
        rest = self.rest.to(rot.dtype)
        local = self.local_rotations(params.angles)
        joints: list[torch.Tensor | None] = [None] * NUM_JOINTS
        joints[0] = params.translation
        for f, chain in enumerate(FINGER_JOINTS):
            root = chain[0]
            offset = rest[root] + params.root_offsets[:, f]
            joints[root] = params.translation + scale * (rot @ offset[..., None])[..., 0]
            g = rot
            for level in range(3):
                j, c = chain[level], chain[level + 1]
                g = g @ local[:, f, level]
                factor = scale * torch.exp(params.bone_log_lengths[:, 3 * f + level])[:, None]
                joints[c] = joints[j] + factor * (g @ (rest[c] - rest[j]))
        return torch.stack(joints, dim=1)

    # ------------------------------------------------------------------ priors
    def angle_limit_penalty(self, params: HandParameters) -> torch.Tensor:
        """(B,) squared radians outside the joint limits."""
        lim = self.limits.to(params.angles.dtype)
        below = torch.relu(lim[..., 0] - params.angles)
        above = torch.relu(params.angles - lim[..., 1])
        return (below**2 + above**2).sum(dim=(1, 2, 3))

    def proportion_penalty(self, params: HandParameters) -> torch.Tensor:
        """(B,) deviation from the mean hand's bone-length ratios and palm shape (dimensionless)."""
        lengths = params.bone_log_lengths
        # Ratios, not absolute lengths: the overall size is free (log_scale).
        ratio = (lengths - lengths.mean(dim=1, keepdim=True)).pow(2).sum(1)
        size = lengths.mean(dim=1).pow(2)
        # Root offsets in units of 1 cm of the mean hand.
        roots = (params.root_offsets / 0.01).pow(2).sum(dim=(1, 2))
        return ratio + size + 0.1 * roots

    def degenerate_penalty(self, params: HandParameters) -> torch.Tensor:
        """(B,) bones shorter than half or longer than twice the mean hand's (log factors beyond +-ln 2)."""
        excess = torch.relu(params.bone_log_lengths.abs() - float(np.log(2.0)))
        scale = torch.relu(params.log_scale.abs() - float(np.log(1.6)))
        return excess.pow(2).sum(1) * 100.0 + scale.pow(2) * 100.0


def bone_lengths_ok(keypoints: np.ndarray, min_length_m: float = 0.004) -> bool:
    """True when every one of the 20 bones is at least ``min_length_m`` long."""
    return bool((np.linalg.norm(bone_vectors(np.asarray(keypoints)), axis=-1) >= min_length_m).all())


def fit_angles_from_mano_pose(pose: np.ndarray) -> np.ndarray:
    """(n,45) MANO axis-angle pose of the synthetic hand -> (n,5,3,3) radians in :class:`HandParameters` layout.

    The synthetic rig's flexion / abduction / twist (:func:`halo.hands.synthetic_hand.pose_to_angles`)
    are the fit's angles: :class:`KinematicHand` reproduces the MANO layer's keypoints from them
    (tests/fit/test_priors.py).
    """
    from halo.hands.synthetic_hand import pose_to_angles

    internal = np.deg2rad(pose_to_angles(pose))  # (n,15,3), MANO internal joint order
    return np.stack([internal[:, r : r + 3] for r in _INTERNAL_ROW], axis=1)


class PosePrior(torch.nn.Module):
    """A Gaussian over the 45 joint angles, learned from example poses: ``0.5 (a - mean)^T P (a - mean)``.

    Unlike a pull towards one fixed pose, the full covariance couples the fingers (a hand whose
    visible fingers curl usually curls its hidden ones too), which is what a single view needs
    for the fingers it cannot see.  Every variance gets ``floor_deg``**2 added, so angles the
    examples never vary (the synthetic sampler's twists) stay possible for other hands.
    """

    def __init__(self, mean: np.ndarray, covariance: np.ndarray) -> None:
        super().__init__()
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        covariance = np.asarray(covariance, dtype=np.float64)
        if mean.shape != (45,) or covariance.shape != (45, 45):
            raise ValueError(
                f"PosePrior: mean (45,) and covariance (45,45) expected, got {mean.shape} and {covariance.shape}"
            )
        if not (np.isfinite(mean).all() and np.isfinite(covariance).all()):
            raise ValueError("PosePrior: mean or covariance is not finite")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("precision", torch.tensor(np.linalg.inv(covariance), dtype=torch.float32))
        self.covariance = covariance.copy()  # the cached statistics stay untouched

    @classmethod
    def from_angles(cls, angles: np.ndarray, floor_deg: float = 5.0) -> PosePrior:
        """Fit to (n,5,3,3) radians (n >= 2)."""
        flat = np.asarray(angles, dtype=np.float64).reshape(len(angles), -1)
        if flat.shape[0] < 2 or flat.shape[1] != 45:
            raise ValueError(f"PosePrior.from_angles: (n>=2,5,3,3) angles expected, got {np.shape(angles)}")
        cov = np.cov(flat, rowvar=False) + np.eye(45) * np.deg2rad(floor_deg) ** 2
        return cls(flat.mean(0), cov)

    @classmethod
    def synthetic(cls, samples: int = 8000, seed: int = 20211) -> PosePrior:
        """Learned from the synthetic hand's natural-pose sampler (open, fist, pinch, point, grasp).

        ``seed`` is not the built-in dataset's, so a fit scored on its hands has not seen their
        poses; the distribution is the same, so the dataset's figures are the prior's best case
        (README).  Cached per process (sampling takes ~2 s).
        """
        return cls(*_synthetic_pose_statistics(int(samples), int(seed)))

    def penalty(self, angles: torch.Tensor) -> torch.Tensor:
        """(B,5,3,3) radians -> (B,) half the squared Mahalanobis distance."""
        d = angles.reshape(len(angles), 45) - self.mean.to(angles.dtype)
        return 0.5 * ((d @ self.precision.to(angles.dtype)) * d).sum(1)


@functools.lru_cache(maxsize=4)
def _synthetic_pose_statistics(samples: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from halo.hands.synthetic_hand import sample_hand_poses

    prior = PosePrior.from_angles(fit_angles_from_mano_pose(sample_hand_poses(samples, seed=seed)))
    return prior.mean.double().numpy(), prior.covariance
