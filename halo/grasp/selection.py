"""Which sampled grasps to keep: the ones that touch their object from opposing sides.

A hand that touches an object on one side only cannot hold it.  The measure is the length of
the mean outward normal of the object surface points the hand touches (:func:`contact_balance`):
1 when every touched point faces the same way (a hand resting on a face), near 0 when the
touched points face each other (a thumb opposing the fingers).  Touch is soft and read from
HALO's occupancy logit (release units), so it works on raw samples that still penetrate.

Measured (README, Why refined grasps drop): the held-out training grasps that the pybullet
simulation holds have a median balance of 0.43, the ones it drops 0.52 (refined through HALO
with the grip: 0.34 / 0.62).  ``halo generate grasps --oversample K`` draws K x n samples,
refines them all and keeps the n most balanced *refined* hands (:func:`most_balanced`): chosen
on the raw samples instead, the refined hands held no better.
"""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.grasp.refine import object_solid, surface_samples
from halo.grasp.vae import REFERENCE_SKIN_SLOPE, halo_logit_scale, halo_occupancy_logit

__all__ = ["contact_balance", "most_balanced", "surface_with_normals"]


def surface_with_normals(
    mesh: trimesh.Trimesh, n: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n,3) surface samples of ``mesh`` (its convex hull when not watertight, the solid the
    grasp metrics use) and their (n,3) outward unit normals, float32."""
    solid, _ = object_solid(mesh)
    return surface_samples(solid, n, seed)


def contact_balance(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    surface: torch.Tensor,
    normals: torch.Tensor,
    *,
    touch_distance_m: float = 0.002,
) -> torch.Tensor:
    """(B,) length of the mean outward normal of the surface points each hand touches, in [0, 1].

    ``keypoints`` (B,21,3) metres; ``surface``, ``normals`` (S,3) object surface samples and
    their outward unit normals in the same frame.  A point's touch weight is
    ``sigmoid((logit + slope * touch_distance_m) / (slope * 1 mm))`` with HALO's logit in the
    release's units (``slope`` = :data:`REFERENCE_SKIN_SLOPE`): ~1 inside the skin, 0.5 at
    ``touch_distance_m`` outside it, ~0 a few mm further.  A hand that touches nothing scores 1.
    No gradient.
    """
    kp = torch.as_tensor(keypoints, dtype=torch.float32)
    device = next(halo_model.parameters()).device
    kp = kp.to(device)
    pts = torch.as_tensor(surface, dtype=torch.float32, device=device)[None].expand(len(kp), -1, -1)
    nrm = torch.as_tensor(normals, dtype=torch.float32, device=device)
    with torch.no_grad():
        logit = halo_logit_scale(halo_model) * halo_occupancy_logit(halo_model, pts, kp)
        weight = torch.sigmoid(
            (logit + REFERENCE_SKIN_SLOPE * touch_distance_m) / (REFERENCE_SKIN_SLOPE * 1e-3)
        )
        total = weight.sum(-1, keepdim=True)
        mean = (weight @ nrm) / total.clamp_min(1e-6)
        balance = torch.where(total[:, 0] > 1e-3, mean.norm(dim=-1), torch.ones_like(total[:, 0]))
    return balance.clamp(0.0, 1.0).cpu()


def most_balanced(
    halo_model: HaloModel,
    keypoints: torch.Tensor | np.ndarray,
    mesh: trimesh.Trimesh,
    n: int,
    *,
    surface_points: int = 3000,
    seed: int = 0,
) -> tuple[np.ndarray, torch.Tensor]:
    """Indices (sorted ascending) of the ``n`` grasps of ``keypoints`` (M,21,3) with the lowest
    :func:`contact_balance` against ``mesh``, and the (M,) balances.  ``n >= M`` keeps them all."""
    kp = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    if kp.dim() != 3 or kp.shape[1:] != (21, 3):
        raise ValueError(f"keypoints must have shape (M, 21, 3), got {tuple(kp.shape)}")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    surface, normals = surface_with_normals(mesh, surface_points, seed)
    balance = contact_balance(halo_model, kp, torch.from_numpy(surface), torch.from_numpy(normals))
    keep = np.sort(np.argsort(balance.numpy(), kind="stable")[: int(n)])
    return keep, balance
