"""An analytic hand occupancy for the fit tests: the union of the fit's capsules around a skeleton.

It has HALO's interface where the fit uses it (``forward(points, keypoints, return_parts=True,
validate=False)`` -> per-part logits, ``canonicalize``, ``config.part_radii``), and its surface
can be sampled exactly, so tests can make a hand surface from known keypoints, fit it, and
compare, without ../shared or a trained network.
"""

from __future__ import annotations

import numpy as np
import torch

from halo.core.canonicalization import canonicalize
from halo.core.model import DEFAULT_PART_RADII, NetworkConfig, OccupancyOutput
from halo.fit.capsules import capsule_axes, capsule_radii, point_segment_distance
from halo.fit.inputs import HandSurface
from halo.fit.priors import HandParameters, KinematicHand
from halo.fit.starts import start_angles

#: Logit per metre inside a capsule wall (1 mm -> logit 2, like HALO's steep occupancy).
SHARPNESS = 2000.0


class CapsuleHandModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = NetworkConfig(part_radii=DEFAULT_PART_RADII)  # "already culled": used as is
        self.register_buffer("radii", torch.tensor(capsule_radii(), dtype=torch.float32))
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device

    def canonicalize(self, keypoints, is_left=None):
        return canonicalize(keypoints, is_left)

    def forward(self, points, keypoints, is_left=None, return_parts=False, validate=True):
        scale = torch.ones(len(keypoints), dtype=keypoints.dtype, device=keypoints.device)
        a, b = capsule_axes(keypoints, scale)
        logits = SHARPNESS * (self.radii.to(points.dtype) - point_segment_distance(points, a, b))
        occ = torch.sigmoid(logits).max(dim=-1).values
        return OccupancyOutput(occ, logits.argmax(-1), logits, None)

    def occupancy(self, points, keypoints, is_left=None, return_parts=False, validate=True):
        return self.forward(points, keypoints).occupancy


def capsule_surface(keypoints: np.ndarray, n: int = 6000, seed: int = 0) -> HandSurface:
    """Exact surface samples (+ outward normals) of the capsule union around ``keypoints``."""
    rng = np.random.default_rng(seed)
    kp = torch.tensor(keypoints[None], dtype=torch.float64)
    a, b = (x[0].numpy() for x in capsule_axes(kp, torch.ones(1, dtype=torch.float64)))
    radii = capsule_radii()
    area = radii * (np.linalg.norm(b - a, axis=1) + 2 * radii)
    seg = rng.choice(len(a), 8 * n, p=area / area.sum())
    t = rng.uniform(-0.3, 1.3, 8 * n)
    direction = rng.normal(size=(8 * n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    axis = a[seg] + np.clip(t, 0, 1)[:, None] * (b[seg] - a[seg])
    pts = axis + radii[seg, None] * direction
    # Keep points on the union's boundary: on their own capsule's wall, inside no other capsule.
    d = point_segment_distance(torch.tensor(pts[None]), torch.tensor(a[None]), torch.tensor(b[None]))[
        0
    ].numpy()
    own = np.abs(d[np.arange(len(pts)), seg] - radii[seg]) < 1e-9
    outside_others = (d - radii[None] >= -1e-9).all(axis=1)
    keep = own & outside_others
    pts, normals = pts[keep][:n], ((pts - axis) / radii[seg, None])[keep][:n]
    return HandSurface(pts, normals, closed=True, name="<capsule hand>")


def relaxed_hand(rotation: np.ndarray) -> np.ndarray:
    """(21,3) the mean hand in the relaxed start pose, rotated by ``rotation`` (3,3), wrist at 0."""
    params = HandParameters.initial(
        torch.tensor(rotation[None]),
        torch.zeros(1, 3, dtype=torch.float64),
        torch.ones(1, dtype=torch.float64),
        torch.tensor(start_angles("relaxed"))[None],
    )
    with torch.no_grad():
        return KinematicHand().double()(params)[0].numpy()
