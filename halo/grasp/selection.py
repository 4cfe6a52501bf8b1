"""Which sampled grasps to keep: the ones that touch their object from opposing sides.

A hand that touches an object on one side only cannot hold it.  The measure is the length of
the mean outward normal of the object surface points the hand touches (:func:`contact_balance`):
1 when every touched point faces the same way (a hand resting on a face), near 0 when the
touched points face each other (a thumb opposing the fingers).  Touch is soft and read from
HALO's occupancy logit (release units), so it works on raw samples that still penetrate.

Measured (README, Why refined grasps drop): the held-out training grasps that the pybullet
simulation holds have a median balance of 0.43, the ones it drops 0.52 (refined through HALO
with the grip: 0.34 / 0.62).  ``halo generate grasps --oversample K`` draws K x n samples,
refines them all and keeps the n most balanced *refined* hands (:func:`choose_grasps`): chosen
on the raw samples instead, the refined hands held no better.

When gravity's direction is known (``--support-axis``), a second measure joins it: whether the
contacts could hold the object still at all (:func:`static_hold_residual`): the net force and
torque that forces inside Coulomb friction cones at the touched points cannot cancel, at the
points that press on the object as it falls.  :func:`choose_grasps` then ranks by the sum of the
two ranks (README, Choosing the hands that hold).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import trimesh
from scipy.optimize import linprog
from scipy.stats import rankdata

from halo.core.model import HaloModel
from halo.grasp.halo_terms import REFERENCE_SKIN_SLOPE, halo_logit_scale, halo_occupancy_logit
from halo.grasp.refine import object_solid, surface_samples

__all__ = [
    "GraspChoice",
    "choose_grasps",
    "contact_balance",
    "hold_frame",
    "hold_residuals",
    "keep_indices",
    "static_hold_residual",
    "surface_with_normals",
    "touch_logits",
]

#: The simulation's friction coefficient (halo.grasp.simulation.simulation_displacement_m).
SIM_FRICTION = 3.0


def surface_with_normals(
    mesh: trimesh.Trimesh, n: int = 3000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(n,3) surface samples of ``mesh`` (its convex hull when not watertight, the solid the
    grasp metrics use) and their (n,3) outward unit normals, float32."""
    solid, _ = object_solid(mesh)
    return surface_samples(solid, n, seed)


def touch_logits(halo_model: HaloModel, keypoints: torch.Tensor, surface: torch.Tensor) -> torch.Tensor:
    """(B,S) HALO's occupancy logit, in the release's units, at the object surface samples
    ``surface`` (S,3) for the hands ``keypoints`` (B,21,3) (metres), on the CPU; no gradient."""
    device = next(halo_model.parameters()).device
    kp = torch.as_tensor(keypoints, dtype=torch.float32).to(device)
    pts = torch.as_tensor(surface, dtype=torch.float32, device=device)[None].expand(len(kp), -1, -1)
    with torch.no_grad():
        return (halo_logit_scale(halo_model) * halo_occupancy_logit(halo_model, pts, kp)).cpu()


def contact_balance(
    halo_model: HaloModel,
    keypoints: torch.Tensor,
    surface: torch.Tensor,
    normals: torch.Tensor,
    *,
    touch_distance_m: float = 0.002,
    logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B,) length of the mean outward normal of the surface points each hand touches, in [0, 1].

    ``keypoints`` (B,21,3) metres; ``surface``, ``normals`` (S,3) object surface samples and
    their outward unit normals in the same frame.  A point's touch weight is
    ``sigmoid((logit + slope * touch_distance_m) / (slope * 1 mm))`` with HALO's logit in the
    release's units (``slope`` = :data:`REFERENCE_SKIN_SLOPE`): ~1 inside the skin, 0.5 at
    ``touch_distance_m`` outside it, ~0 a few mm further.  A hand that touches nothing scores 1.
    ``logits``: :func:`touch_logits` already computed for these hands and points.  No gradient.
    """
    logit = touch_logits(halo_model, keypoints, surface) if logits is None else logits
    nrm = torch.as_tensor(normals, dtype=torch.float32)
    weight = torch.sigmoid((logit + REFERENCE_SKIN_SLOPE * touch_distance_m) / (REFERENCE_SKIN_SLOPE * 1e-3))
    total = weight.sum(-1, keepdim=True)
    mean = (weight @ nrm) / total.clamp_min(1e-6)
    balance = torch.where(total[:, 0] > 1e-3, mean.norm(dim=-1), torch.ones_like(total[:, 0]))
    return balance.clamp(0.0, 1.0)


def _friction_cone_edges(normals: np.ndarray, friction: float, edges: int) -> np.ndarray:
    """(C,E,3) unit edges of the linearised friction cones of forces pushing into the object at
    points with outward normals ``normals`` (C,3)."""
    axis = -normals / np.linalg.norm(normals, axis=1, keepdims=True)
    helper = np.where(np.abs(axis[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(axis, u)
    angle = 2.0 * np.pi * np.arange(edges) / edges
    ring = np.cos(angle)[None, :, None] * u[:, None] + np.sin(angle)[None, :, None] * v[:, None]
    e = axis[:, None] + friction * ring
    return e / np.linalg.norm(e, axis=-1, keepdims=True)


def static_hold_residual(
    points: np.ndarray,
    normals: np.ndarray,
    centre_of_mass: np.ndarray,
    gravity: np.ndarray,
    *,
    torque_length_m: float,
    friction: float = SIM_FRICTION,
    max_force: float = 1.0,
    cone_edges: int = 8,
) -> float:
    """How far contacts are from holding an object still against gravity: 0 when they can.

    ``points`` (C,3) contact points on the object and ``normals`` (C,3) the object's outward
    normals there (metres, one frame); the hand may push into the object at each point within a
    Coulomb friction cone (coefficient ``friction``, linearised with ``cone_edges`` edges), with
    normal forces of at most ``max_force`` times the object's weight in all: a static hand
    pushes back about as hard as the object presses on it, so holds that need a squeeze (normal
    forces far above the weight, friction carrying it) count as holds only that far (a bound of
    3 chose neither better nor worse on seed 0; README).  The result is the smallest L1 norm
    of the net wrench those forces and gravity (direction ``gravity`` (3,)) leave on the object:
    force in units of its weight, torque about ``centre_of_mass`` in weight x
    ``torque_length_m``.  No contacts, or none that can push against gravity: 1 (the whole
    weight unbalanced).  A linear programme (scipy's HiGHS).
    """
    g = np.asarray(gravity, dtype=np.float64).reshape(3)
    g = g / np.linalg.norm(g)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return 1.0
    edges = _friction_cone_edges(np.asarray(normals, dtype=np.float64).reshape(-1, 3), friction, cone_edges)
    arm = pts - np.asarray(centre_of_mass, dtype=np.float64).reshape(1, 3)
    torque = np.cross(arm[:, None], edges) / float(torque_length_m)  # (C,E,3)
    wrench = np.concatenate([edges, torque], -1).reshape(-1, 6).T  # (6, C*E)
    k = wrench.shape[1]
    # variables: edge magnitudes a >= 0, then the residual's positive and negative parts
    a_eq = np.concatenate([wrench, -np.eye(6), np.eye(6)], axis=1)
    b_eq = np.concatenate([-g, np.zeros(3)])  # the hand's forces must carry the weight, no torque
    cost = np.concatenate([np.zeros(k), np.ones(12)])
    normal_part = 1.0 / np.sqrt(1.0 + friction**2)  # of a unit cone edge, along the cone's axis
    a_ub = np.concatenate([np.full(k, normal_part), np.zeros(12)])[None]
    result = linprog(
        cost, A_ub=a_ub, b_ub=[max_force], A_eq=a_eq, b_eq=b_eq, bounds=(0, None), method="highs"
    )
    if not result.success:  # a = 0 is always feasible, so this is a solver failure
        raise RuntimeError(f"static_hold_residual: the linear programme failed: {result.message}")
    return float(result.fun)


def hold_frame(mesh: trimesh.Trimesh) -> tuple[np.ndarray, float]:
    """The centre of mass (3,) and torque unit (metres) :func:`hold_residuals` uses for ``mesh``:
    its vertex mean, where the simulation puts the centre of mass, and half the bounding-box
    diagonal of its solid (the convex hull when it is not watertight)."""
    solid, _ = object_solid(mesh)
    centre = np.asarray(mesh.vertices, dtype=np.float64).mean(axis=0)
    return centre, 0.5 * float(np.linalg.norm(solid.extents))


def hold_residuals(
    logits: torch.Tensor,
    surface: np.ndarray,
    normals: np.ndarray,
    centre_of_mass: np.ndarray,
    gravity: np.ndarray,
    *,
    torque_length_m: float,
    touch_distance_m: float = 0.002,
    preload_depth_m: float = 0.0005,
    facing_cos: float = -0.1,
    max_contacts: int = 40,
    friction: float = SIM_FRICTION,
    max_force: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """(B,) :func:`static_hold_residual` of each hand's contacts with an object under gravity.

    ``logits`` (B,S): :func:`touch_logits` of the hands at the object's surface samples
    ``surface`` (S,3) with outward normals ``normals`` (S,3).  A sample is a contact where HALO's
    skin reaches within ``touch_distance_m`` of it and it presses on the object as the object
    falls: its outward normal faces along gravity (cosine > ``facing_cos``: the underside, and
    sides a falling object slides down onto) or the skin already overlaps it by
    ``preload_depth_m`` (a grip's squeeze).  At most ``max_contacts`` of them (a seeded random
    subset) enter the programme.
    """
    logit = torch.as_tensor(logits, dtype=torch.float32).numpy()
    nrm = np.asarray(normals, dtype=np.float64)
    g = np.asarray(gravity, dtype=np.float64).reshape(3)
    facing = nrm @ (g / np.linalg.norm(g)) > facing_cos
    out = np.empty(len(logit))
    for i, row in enumerate(logit):
        touched = row > -REFERENCE_SKIN_SLOPE * touch_distance_m
        pressing = touched & (facing | (row > REFERENCE_SKIN_SLOPE * preload_depth_m))
        index = np.flatnonzero(pressing)
        if len(index) > max_contacts:
            index = np.random.default_rng(seed + i).choice(index, max_contacts, replace=False)
        out[i] = static_hold_residual(
            surface[index],
            nrm[index],
            centre_of_mass,
            g,
            torque_length_m=torque_length_m,
            friction=friction,
            max_force=max_force,
        )
    return out


def keep_indices(balance: np.ndarray, hold_residual: np.ndarray | None, n: int) -> np.ndarray:
    """Indices (ascending) of the ``n`` grasps to keep: the lowest balance, or with hold residuals
    the lowest sum of the two ranks (tied values share their mean rank); ties keep the earlier
    draw."""
    score = np.asarray(balance, dtype=np.float64)
    if hold_residual is not None:
        score = rankdata(score, method="average") + rankdata(hold_residual, method="average")
    return np.sort(np.argsort(score, kind="stable")[: int(n)])


class GraspChoice(NamedTuple):
    """The grasps :func:`choose_grasps` keeps and the scores it ranked them by."""

    keep: np.ndarray  # (n,) indices, ascending
    balance: torch.Tensor  # (M,) contact_balance
    hold_residual: np.ndarray | None  # (M,) hold_residuals; None without gravity


def choose_grasps(
    halo_model: HaloModel,
    keypoints: torch.Tensor | np.ndarray,
    mesh: trimesh.Trimesh,
    n: int,
    *,
    gravity: tuple[float, float, float] | np.ndarray | None = None,
    surface_points: int = 3000,
    seed: int = 0,
) -> GraspChoice:
    """The ``n`` grasps of ``keypoints`` (M,21,3) most likely to hold ``mesh``, in their order.

    Without ``gravity``: the lowest :func:`contact_balance`.  With gravity's direction in the
    mesh's frame: also the :func:`hold_residuals` (in :func:`hold_frame`), ranked together by
    :func:`keep_indices`.  ``n >= M`` keeps them all.
    """
    kp = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    if kp.dim() != 3 or kp.shape[1:] != (21, 3):
        raise ValueError(f"keypoints must have shape (M, 21, 3), got {tuple(kp.shape)}")
    if int(n) < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    surface, normals = surface_with_normals(mesh, surface_points, seed)
    logits = touch_logits(halo_model, kp, torch.from_numpy(surface))
    balance = contact_balance(halo_model, kp, surface, normals, logits=logits)
    residual = None
    if gravity is not None:
        centre, torque_length = hold_frame(mesh)
        residual = hold_residuals(
            logits, surface, normals, centre, np.asarray(gravity), torque_length_m=torque_length, seed=seed
        )
    return GraspChoice(keep_indices(balance.numpy(), residual, n), balance, residual)
