"""Built-in keypoint sequences.

``synthetic_hand_sequence``: the synthetic MANO-format hand moving through
sampled poses; ``halo demo`` uses it when no keypoint file is given.
``pose_skeleton`` / ``builtin_sequence`` / ``random_skeletons``: a lightweight
procedurally posed skeleton (no MANO layer) for tests and benchmarks; its rest
pose has a 9.3 cm palm (wrist to middle MCP) and 16.5 cm wrist to middle tip,
metres, MANO order, wrist at the origin, fingers along -y.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

REST_SKELETON = np.array(
    [
        [0.0, 0.0, 0.0],
        [0.014, -0.030, -0.016], [0.022, -0.058, -0.020], [0.024, -0.084, -0.026], [0.022, -0.112, -0.034],
        [-0.026, -0.082, -0.018], [-0.036, -0.113, -0.022], [-0.043, -0.134, -0.026], [-0.048, -0.155, -0.030],
        [-0.048, -0.076, -0.022], [-0.063, -0.103, -0.030], [-0.071, -0.122, -0.036], [-0.077, -0.140, -0.042],
        [-0.060, -0.052, -0.028], [-0.074, -0.076, -0.036], [-0.082, -0.093, -0.042], [-0.088, -0.110, -0.048],
        [-0.066, -0.030, -0.034], [-0.076, -0.048, -0.040], [-0.082, -0.061, -0.044], [-0.086, -0.074, -0.048],
    ]
)  # fmt: skip

_FINGER_ROOTS = (1, 5, 9, 13, 17)

#: Named key poses: flexion (rad) per finger (thumb..pinky) and level (proximal..distal).
KEY_POSES: dict[str, np.ndarray] = {
    "open": np.full((5, 3), 0.05),
    "relaxed": np.array([[0.2, 0.2, 0.2], *[[0.35, 0.45, 0.3]] * 4]),
    "fist": np.array([[0.6, 0.5, 0.5], *[[1.4, 1.5, 1.0]] * 4]),
    "pinch": np.array([[0.5, 0.4, 0.4], [0.7, 0.9, 0.6], [0.5, 0.6, 0.4], [0.4, 0.5, 0.3], [0.3, 0.4, 0.3]]),
    "point": np.array([[0.5, 0.5, 0.4], [0.05, 0.05, 0.05], *[[1.4, 1.5, 1.0]] * 3]),
    "grasp": np.array([[0.4, 0.3, 0.3], *[[0.8, 0.8, 0.5]] * 4]),
}


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    return Rotation.from_rotvec(np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis) * angle).as_matrix()


def pose_skeleton(flexion: np.ndarray, rest: np.ndarray = REST_SKELETON) -> np.ndarray:
    """Bend each finger of ``rest`` (21,3) by ``flexion`` (5,3) radians towards the palm."""
    kp = rest.astype(np.float64).copy()
    # The palm faces -(middle root x index root): HALO's normalized frame puts the back of the hand at +y.
    palm_side = -np.cross(rest[9] - rest[0], rest[5] - rest[0])
    palm_side /= np.linalg.norm(palm_side)
    for f, root in enumerate(_FINGER_ROOTS):
        chain = [root, root + 1, root + 2, root + 3]
        toward = palm_side
        if f == 0:  # the thumb folds across the palm, towards the index MCP
            to_index = rest[5] - rest[1]
            toward = 0.5 * palm_side + to_index / np.linalg.norm(to_index)
        axis = np.cross(kp[chain[1]] - kp[chain[0]], toward)
        for level in range(3):
            rot = _rotation(axis, float(flexion[f, level]))
            pivot = kp[chain[level]].copy()
            for j in chain[level + 1 :]:
                kp[j] = pivot + rot @ (kp[j] - pivot)
    return kp


def builtin_sequence(n_frames: int = 48, poses: tuple[str, ...] = ("open", "fist", "pinch", "point", "open")):
    """(n_frames,21,3) float32 metres: smooth interpolation through named key poses, slowly turning."""
    if n_frames < 2:
        raise ValueError(f"n_frames must be >= 2, got {n_frames}")
    keys = np.stack([KEY_POSES[p] for p in poses])
    t = np.linspace(0, len(poses) - 1, n_frames)
    out = np.empty((n_frames, 21, 3))
    for i, ti in enumerate(t):
        k = min(int(ti), len(poses) - 2)
        s = ti - k
        s = s * s * (3 - 2 * s)  # ease in/out
        flex = (1 - s) * keys[k] + s * keys[k + 1]
        turn = _rotation(np.array([0.0, 1.0, 0.0]), 0.6 * np.sin(2 * np.pi * i / n_frames))
        out[i] = pose_skeleton(flex) @ turn.T
    return out.astype(np.float32)


def random_skeletons(n: int, seed: int = 0, max_flexion: float = 0.6) -> np.ndarray:
    """(n,21,3) float64: random finger flexion, global rotation and translation (for tests/benchmarks)."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 21, 3))
    for i in range(n):
        kp = pose_skeleton(rng.uniform(0.05, max_flexion, size=(5, 3)))
        rot = _rotation(rng.normal(size=3), rng.uniform(0, np.pi))
        out[i] = kp @ rot.T + rng.normal(scale=0.1, size=3)
    return out


def synthetic_hand_sequence(
    n_frames: int = 24,
    kinds: tuple[str, ...] = ("open", "fist", "pinch", "point", "grasp", "open"),
    seed: int = 0,
) -> np.ndarray:
    """(n_frames,21,3) float32 metres: the synthetic MANO-format hand moving through sampled poses.

    Key poses come from :func:`halo.hands.synthetic_hand.sample_hand_poses` (one per
    kind, anatomical limits), interpolated per joint and posed by the MANO layer.
    """
    import torch

    from halo.hands.mano import ManoLayer
    from halo.hands.synthetic_hand import get_synthetic_hand_model, interpolate_poses, sample_hand_poses

    if n_frames < len(kinds):
        raise ValueError(f"n_frames must be >= {len(kinds)} (one per key pose), got {n_frames}")
    keys = [sample_hand_poses(1, seed=seed + i, kind=k)[0] for i, k in enumerate(kinds)]
    per_segment = np.diff(np.linspace(0, n_frames, len(kinds)).round().astype(int))
    poses = []
    for k, n in enumerate(per_segment):
        seg = interpolate_poses(keys[k], keys[k + 1], int(n) + 1)
        poses.append(seg if k == len(per_segment) - 1 else seg[:-1])
    pose = np.concatenate(poses)[:n_frames]
    turn = 0.5 * np.sin(np.linspace(0, 2 * np.pi, len(pose)))
    orient = np.stack([np.zeros_like(turn), turn, np.zeros_like(turn)], -1)
    layer = ManoLayer(get_synthetic_hand_model())
    with torch.no_grad():
        out = layer(
            torch.tensor(pose, dtype=torch.float32), global_orient=torch.tensor(orient, dtype=torch.float32)
        )
    return out.keypoints.numpy().astype(np.float32)
