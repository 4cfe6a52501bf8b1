"""Test helpers: procedurally posed hand skeletons (no external data)."""

from __future__ import annotations

import numpy as np
import torch

# A right hand in metres, MANO order, roughly HO3D-sized (wrist at origin, fingers along -y).
_REST = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.014, -0.030, -0.016], [0.022, -0.058, -0.020], [0.024, -0.084, -0.026], [0.022, -0.112, -0.034],
        [-0.026, -0.082, -0.018], [-0.036, -0.113, -0.022], [-0.043, -0.134, -0.026], [-0.048, -0.155, -0.030],
        [-0.048, -0.076, -0.022], [-0.063, -0.103, -0.030], [-0.071, -0.122, -0.036], [-0.077, -0.140, -0.042],
        [-0.060, -0.052, -0.028], [-0.074, -0.076, -0.036], [-0.082, -0.093, -0.042], [-0.088, -0.110, -0.048],
        [-0.066, -0.030, -0.034], [-0.076, -0.048, -0.040], [-0.082, -0.061, -0.044], [-0.086, -0.074, -0.048],
    ]
)  # fmt: skip


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def random_hands(n: int, seed: int = 0, curl: float = 0.6, dtype=torch.float64) -> torch.Tensor:
    """(n,21,3) plausible right-hand keypoints: random finger curls, global rotation and translation."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 21, 3))
    palm_normal = np.cross(_REST[9] - _REST[0], _REST[5] - _REST[0])
    for i in range(n):
        kp = _REST.copy()
        for root in (1, 5, 9, 13, 17):
            chain = [root, root + 1, root + 2, root + 3]
            bone_dir = kp[chain[1]] - kp[chain[0]]
            axis = np.cross(bone_dir, palm_normal) + 0.2 * rng.normal(size=3) * np.linalg.norm(bone_dir)
            for lvl in range(3):
                rot = _rotation(axis, rng.uniform(0.05, curl))
                pivot = kp[chain[lvl]]
                for j in chain[lvl + 1 :]:
                    kp[j] = pivot + rot @ (kp[j] - pivot)
        q = rng.normal(size=3)
        kp = kp @ _rotation(q, rng.uniform(0, np.pi)).T + rng.normal(scale=0.1, size=3)
        out[i] = kp
    return torch.tensor(out, dtype=dtype)
