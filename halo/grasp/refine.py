"""Test-time grasp refinement through HALO: move given hands out of an object, keep them on it.

Input: grasps as 21 keypoints (B,21,3), metres, MANO order, in the object mesh's frame, from any
method.  Each grasp is re-posed with its bone lengths held exactly
(:func:`pose_keypoints`): a rotation about the palm centre + a translation (stage 1: these
only), then per-bone rotations down every finger chain (stage 2: all), optimised with Adam
against

* penetration: a sharp ``softplus`` (``penetration_sharpness``; about zero just outside the
  hand's surface, so a touching hand is not pushed away) of HALO's occupancy logit minus
  ``penetration_margin`` (0: out of the object; a few logits: a skin-deep overlap is tolerated,
  which is what lets a static hand hold an object in a physics simulation, measured in the README) (:func:`halo.grasp.halo_terms.halo_occupancy_logit`,
  the one HALO forward pass) at the ``inside_points`` interior points of the object that HALO
  finds most inside the current hand, out of the ``candidate_points`` nearest to its skeleton (a
  dense interior sample of the object is drawn once per object).  Ranking by HALO, not by distance
  alone: a hand wrapped round a thin object has many interior points near its finger bones that
  it does not cover, and a penetrating palm further away (a toothpaste grasp: 1 of 104 penetrating
  points among the 256 nearest, so 3.2 cm³ stayed);
* contact: the joints that touched the object in the input (within ``contact_threshold_m``, or
  inside) stay within ``contact_distance_m`` of its surface (keypoints sit inside the fingers,
  about a finger radius under the skin), squared excess in cm;
* touch: the hand's skin reaches the object: of the ``touch_candidates`` object surface points
  nearest to the skeleton, the ``touch_points`` HALO finds most occupied get a ``softplus`` of
  minus their logit (in the release's units), with ``touch_distance_m`` of slack (logit
  ``REFERENCE_SKIN_SLOPE x touch_distance_m``).  Why: a joint within ``contact_distance_m`` does
  not make the skin touch (a palm joint sits ~1 cm under it), so hands that floated in the input
  stayed 6-13 mm off after refinement (seed 0, synthetic objects: 7 of 40);
* pose prior: squared keypoint displacement from the input (cm^2), so hands move no more than
  needed;
* anatomy: flexion / abduction of the 15 finger bones (the canonicalization's angles) inside
  anatomical ranges (:data:`FLEXION_RANGE`, :data:`ABDUCTION_RANGE`), squared excess.

Objects that are not watertight are replaced by their convex hull for the inside test (the
result says so: :attr:`RefineResult.object_note`).  Batched over the grasps of one object; any
torch device (the HALO model's).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch.nn import functional as F

from halo.core.canonicalization import canonicalize
from halo.core.model import HaloModel
from halo.core.skeleton import FINGER_JOINTS, NUM_JOINTS
from halo.geometry.inside import sample_inside_points
from halo.grasp.halo_terms import (
    REFERENCE_SKIN_SLOPE,
    gather_points,
    halo_logit_scale,
    halo_occupancy_logit,
    most_occupied_indices_grouped,
    most_occupied_points,
    plausible_hands,
)
from halo.grasp.kinematics import PALM_JOINTS, axis_angle_to_matrix
from halo.utils.allocator import flush_denormals
from halo.utils.errors import InputError

__all__ = [
    "ABDUCTION_RANGE",
    "FLEXION_RANGE",
    "RefineConfig",
    "RefineError",
    "RefineResult",
    "anatomy_penalty",
    "interior_sample_count",
    "object_interior",
    "object_solid",
    "pose_keypoints",
    "refine_grasps",
]

CM_PER_M = 100.0
#: Flexion range (rad) of every finger bone: slight hyperextension to a full bend.
FLEXION_RANGE = (-0.35, 1.9)
#: Abduction range (rad) per finger (thumb, index, middle, ring, pinky): the thumb swings wide.
ABDUCTION_RANGE = ((-1.2, 1.6), (-0.45, 0.45), (-0.45, 0.45), (-0.45, 0.45), (-0.5, 0.5))


class RefineError(InputError):
    """Bad grasp keypoints, object mesh or settings (names the argument, shape or value)."""


@dataclass
class RefineConfig:
    """Settings of :func:`refine_grasps` (distances in metres)."""

    steps: int = 80  # Adam steps in total
    global_fraction: float = 0.4  # share of the steps that move only the rigid hand (stage 1)
    lr_rotation: float = 0.01  # rad per step scale (global and finger rotations)
    lr_translation_cm: float = 0.2
    inside_points: int = 256  # interior points per grasp in the loss (the most occupied of the candidates)
    candidate_points: int = 1024  # interior points nearest to the skeleton that HALO ranks (>= inside_points)
    # Dense interior sample of the object, drawn once per object: interior_per_cm3 points per cm³ of
    # the solid, at least interior_samples and at most interior_samples_max.  Why a density and not
    # a count: 6,000 points in the 600 cm³ hull of pybullet_data's mug (10 per cm³) left refined
    # hands 1.15 cm³ in it on average (up to 5.8 cm³, 2.8 cm deep); 40 per cm³ 0.13 cm³, at ~25 %
    # more refinement time on that mesh (README, HALO-VAE: interior density).
    interior_samples: int = 6000
    interior_per_cm3: float = 40.0
    interior_samples_max: int = 60000
    surface_samples: int = 3000
    contact_threshold_m: float = 0.02
    contact_distance_m: float = 0.010
    penetration_sharpness: float = 4.0  # softplus(beta * logit) / beta: ~0 outside the hand's surface
    cull: bool = True  # evaluate each HALO part only near its bone (radii calibrated once)
    cull_margin: float = 0.1  # relative margin on the calibrated radii
    reselect_every: int = 2  # steps between re-ranking the interior points (1: every step, ~1.6x the time; pushed grasps -87..-100 % either way)
    penetration_margin: float = 0.0  # HALO logit tolerated at interior points (> 0: a skin-deep overlap)
    exact_gradient: bool = True  # HaloModel.forward(exact_gradient): the true keypoint gradient (False: the original's detached one)
    w_penetration: float = 10.0
    w_contact: float = 3.0
    touch_points: int = 8  # object surface points per grasp in the touch term (the most occupied candidates)
    touch_candidates: int = 256  # object surface points nearest to the skeleton that HALO ranks
    touch_distance_m: float = 0.002  # slack of the touch term: the skin within ~2 mm of the surface counts
    w_touch: float = 0.3
    # Grip (off at 0): fingers that touched the object in the input close onto it until their skin
    # is grip_depth_m inside it, and the object's interior points shallower than that within
    # grip_radius_m of a gripping finger's last two bones do not count as penetration.  Why: a
    # finger that closes onto the object presses it where the pybullet simulation's contacts are
    # made; measured, it lowers the median drop of refined synthetic grasps, not of the real
    # meshes (README, the grip).
    grip_depth_m: float = 0.0
    grip_radius_m: float = 0.012
    grip_candidates: int = 64  # object surface points nearest to each finger's last two bones that HALO ranks
    grip_points: int = 3  # of those, the most occupied per finger enter the grip term
    w_grip: float = 1.0
    # Support (off when None): the direction of gravity in the object's frame (e.g. (0, 0, -1)).
    # The hand's skin must reach the object's underside (surface points whose outward normal
    # points along gravity by more than support_normal_cos): of the support_candidates underside
    # points nearest to the skeleton, the support_points HALO finds most occupied get the touch
    # term's softplus.  Why: refined samples that the pybullet simulation holds touch the
    # underside (median touch weight there 37 against 0.07 for the ones it drops; README).
    support_direction: tuple[float, float, float] | None = None
    support_normal_cos: float = 0.2
    support_points: int = 8
    support_candidates: int = 256
    w_support: float = 1.0
    w_pose: float = 0.1
    w_anatomy: float = 10.0
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.steps) < 0:
            raise RefineError(f"steps must be >= 0, got {self.steps}")
        if not (math.isfinite(self.penetration_margin) and self.penetration_margin >= 0.0):
            raise RefineError(
                f"penetration_margin must be a finite logit >= 0, got {self.penetration_margin}"
            )
        if not 0.0 <= self.global_fraction <= 1.0:
            raise RefineError(f"global_fraction must be in [0, 1], got {self.global_fraction}")
        for name in (
            "inside_points",
            "candidate_points",
            "interior_samples",
            "interior_samples_max",
            "surface_samples",
            "reselect_every",
            "touch_points",
            "touch_candidates",
            "grip_candidates",
            "grip_points",
            "support_points",
            "support_candidates",
        ):
            if int(getattr(self, name)) < 1:
                raise RefineError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.interior_per_cm3) and self.interior_per_cm3 >= 0.0):
            raise RefineError(f"interior_per_cm3 must be a finite density >= 0, got {self.interior_per_cm3}")
        if int(self.interior_samples_max) < int(self.interior_samples):
            raise RefineError(
                f"interior_samples_max ({self.interior_samples_max}) must be >= interior_samples "
                f"({self.interior_samples})"
            )
        if not (math.isfinite(self.touch_distance_m) and self.touch_distance_m >= 0.0):
            raise RefineError(f"touch_distance_m must be a finite distance >= 0, got {self.touch_distance_m}")
        for name in ("grip_depth_m", "grip_radius_m"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value >= 0.0):
                raise RefineError(f"{name} must be a finite distance >= 0, got {value}")
        if int(self.grip_candidates) < int(self.grip_points):
            raise RefineError(
                f"grip_candidates ({self.grip_candidates}) must be >= grip_points ({self.grip_points})"
            )
        if self.support_direction is not None:
            g = np.asarray(self.support_direction, dtype=np.float64).reshape(-1)
            if g.shape != (3,) or not np.isfinite(g).all() or np.linalg.norm(g) < 1e-9:
                raise RefineError(
                    f"support_direction must be a non-zero 3-vector (gravity in the object's frame), "
                    f"got {self.support_direction!r}"
                )
            self.support_direction = tuple(float(v) for v in g / np.linalg.norm(g))
        if int(self.support_candidates) < int(self.support_points):
            raise RefineError(
                f"support_candidates ({self.support_candidates}) must be >= support_points ({self.support_points})"
            )
        if int(self.touch_candidates) < int(self.touch_points):
            raise RefineError(
                f"touch_candidates ({self.touch_candidates}) must be >= touch_points ({self.touch_points})"
            )
        if int(self.candidate_points) < int(self.inside_points):
            raise RefineError(
                f"candidate_points ({self.candidate_points}) must be >= inside_points ({self.inside_points})"
            )


@dataclass
class RefineResult:
    keypoints: torch.Tensor  # (B,21,3) refined, metres, the input's frame, on the CPU
    displacement_m: torch.Tensor  # (B,) mean joint displacement from the input
    penetration_before: torch.Tensor  # (B,) mean softplus(logit) at the interior points the loss sees
    # (logits in the release's units: x REFERENCE_SKIN_SLOPE / skin_logit_slope(base))
    penetration_after: torch.Tensor  # (B,)
    object_note: str  # "watertight" or "convex hull (not watertight)"
    seconds: float


def anatomy_penalty(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,) squared excess (rad^2) of the 15 finger bones' flexion / abduction over their ranges."""
    angles = canonicalize(keypoints, validate=False).bone_angles.view(-1, 5, 3, 2)
    flex, abd = angles[..., 0], angles[..., 1]
    lo = torch.tensor([r[0] for r in ABDUCTION_RANGE], dtype=abd.dtype, device=abd.device)[None, :, None]
    hi = torch.tensor([r[1] for r in ABDUCTION_RANGE], dtype=abd.dtype, device=abd.device)[None, :, None]
    excess = (
        F.relu(flex - FLEXION_RANGE[1])
        + F.relu(FLEXION_RANGE[0] - flex)
        + F.relu(abd - hi)
        + F.relu(lo - abd)
    )
    return excess.pow(2).flatten(1).sum(-1)


def pose_keypoints(
    keypoints: torch.Tensor, rotation: torch.Tensor, translation: torch.Tensor, finger_rotations: torch.Tensor
) -> torch.Tensor:
    """Re-pose (B,21,3) hands with their bone lengths held.

    ``rotation`` (B,3) axis-angle about the palm centre (mean of the wrist and finger roots),
    ``translation`` (B,3) metres, ``finger_rotations`` (B,5,3,3) axis-angle per finger bone
    (root->2nd, 2nd->3rd, 3rd->tip), each turning its bone and everything beyond it (a kinematic
    chain; axes in the input's frame).  All zeros return the input.
    """
    centre = keypoints[:, list(PALM_JOINTS)].mean(1, keepdim=True)
    rot = axis_angle_to_matrix(rotation)  # (B,3,3)
    out = [None] * NUM_JOINTS
    for j in PALM_JOINTS:
        out[j] = ((keypoints[:, j : j + 1] - centre) @ rot.transpose(-1, -2) + centre + translation[:, None])[
            :, 0
        ]
    local = axis_angle_to_matrix(finger_rotations)  # (B,5,3,3,3)
    for k, finger in enumerate(FINGER_JOINTS):
        chain = rot
        for level in range(3):
            chain = chain @ local[:, k, level]
            bone = keypoints[:, finger[level + 1]] - keypoints[:, finger[level]]
            out[finger[level + 1]] = out[finger[level]] + (chain @ bone[..., None])[..., 0]
    return torch.stack(out, dim=1)


def object_solid(mesh: trimesh.Trimesh) -> tuple[trimesh.Trimesh, str]:
    """The solid a grasp is refined and chosen against: ``mesh`` when watertight, else its convex
    hull (the grasp metrics' ``--hull-if-open``), and a note saying which."""
    if mesh.is_watertight:
        return mesh, "watertight"
    return mesh.convex_hull, "convex hull (not watertight)"


def surface_samples(solid: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n,3) area-uniform surface samples of ``solid`` and their (n,3) outward unit normals, float32."""
    points, faces = trimesh.sample.sample_surface(solid, int(n), seed=seed)
    return np.asarray(points, dtype=np.float32), np.asarray(solid.face_normals[faces], dtype=np.float32)


def interior_sample_count(solid: trimesh.Trimesh, config: RefineConfig) -> int:
    """How many interior points :func:`refine_grasps` draws in ``solid``: ``interior_per_cm3`` per
    cm³ of its volume, clamped to [``interior_samples``, ``interior_samples_max``]."""
    wanted = float(config.interior_per_cm3) * max(float(solid.volume), 0.0) * 1e6
    return int(min(max(round(wanted), int(config.interior_samples)), int(config.interior_samples_max)))


def object_interior(
    mesh: trimesh.Trimesh, config: RefineConfig
) -> tuple[trimesh.Trimesh, np.ndarray, np.ndarray, np.ndarray, str]:
    """The solid refinement works against (``mesh``, or its convex hull when not watertight), its
    (n,3) uniform interior points (n from :func:`interior_sample_count`), (surface_samples,3)
    surface samples and their outward normals (:func:`surface_samples`), and a note saying which
    solid was used; seeded by ``config.seed``."""
    if len(mesh.faces) == 0:
        raise RefineError("object mesh has no faces")
    solid, note = object_solid(mesh)
    n = interior_sample_count(solid, config)
    try:
        inside = sample_inside_points(solid, n, np.random.default_rng(config.seed), name=f"object ({note})")
    except ValueError as exc:  # flat or inside-out: no interior to push the hand out of
        raise RefineError(
            f"object mesh ({note}) has no interior (volume {solid.volume:.3g} m^3): {exc}"
        ) from exc
    surface, normals = surface_samples(solid, config.surface_samples, config.seed)
    return solid, inside.astype(np.float32), surface, normals, note


def finger_pad_anchors(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,5,5,3): per finger its last three joints and the midpoints of the two bones between
    (the part of a finger that closes onto an object)."""
    joints = torch.stack([keypoints[:, list(f[1:])] for f in FINGER_JOINTS], dim=1)  # (B,5,3,3)
    mid = 0.5 * (joints[:, :, :-1] + joints[:, :, 1:])
    return torch.cat([joints, mid], dim=2)


def interior_depth(
    solid: trimesh.Trimesh, points: np.ndarray, samples: int = 20000, seed: int = 0
) -> np.ndarray:
    """(N,) distance (metres) of interior ``points`` to the surface of ``solid`` (nearest of a dense
    surface sample: ~0.2 mm over-estimate at 1 mm depth on a hand-sized object)."""
    from scipy.spatial import cKDTree

    dense, _ = trimesh.sample.sample_surface(solid, int(samples), seed=seed)
    return cKDTree(np.asarray(dense)).query(points)[0].astype(np.float32)


def _grip_points(
    halo_model: HaloModel, kp: torch.Tensor, surface: torch.Tensor, candidates: int, k: int
) -> torch.Tensor:
    """(B,5,k,3): per finger, of the ``candidates`` object surface points nearest to its pad
    (:func:`finger_pad_anchors`), the ``k`` HALO finds most occupied (not culled; no gradient)."""
    with torch.no_grad():
        bsz = kp.shape[0]
        anchors = finger_pad_anchors(kp)  # (B,5,5,3)
        d = torch.cdist(surface, anchors.flatten(1, 2)).view(bsz, surface.shape[1], 5, 5).amin(-1)  # (B,S,5)
        near = d.topk(min(int(candidates), surface.shape[1]), dim=1, largest=False).indices  # (B,c,5)
        pool = gather_points(surface, near.transpose(1, 2).flatten(1))  # (B,5c,3)
        logit = halo_occupancy_logit(halo_model, pool, kp).view(bsz, 5, -1)
        top = logit.topk(min(int(k), logit.shape[-1]), dim=-1).indices  # (B,5,k)
        pool = pool.view(bsz, 5, -1, 3)
        return torch.gather(pool, 2, top[..., None].expand(-1, -1, -1, 3))


def refine_grasps(
    halo_model: HaloModel,
    keypoints: torch.Tensor | np.ndarray,
    object_mesh: trimesh.Trimesh,
    *,
    config: RefineConfig | None = None,
) -> RefineResult:
    """Refine grasps (B,21,3) of one object (metres, the mesh's frame) through HALO (module docstring).

    Runs on the HALO model's device; the model's parameters get no gradient.  Hands HALO cannot
    canonicalize (degenerate skeletons) are returned unchanged.  This is the function behind
    ``halo refine grasps`` and ``halo generate grasps --refine``.
    """
    cfg = config or RefineConfig()
    t0 = time.perf_counter()
    kp_in = torch.as_tensor(
        np.asarray(keypoints, dtype=np.float32) if not torch.is_tensor(keypoints) else keypoints
    )
    if kp_in.dim() == 2:
        kp_in = kp_in[None]
    if kp_in.dim() != 3 or kp_in.shape[1:] != (NUM_JOINTS, 3):
        raise RefineError(f"keypoints must have shape (B, 21, 3) in metres, got {tuple(kp_in.shape)}")
    if not torch.isfinite(kp_in).all():
        raise RefineError("keypoints hold NaN or inf values")
    device = next(halo_model.parameters()).device
    kp0 = kp_in.to(device, torch.float32)
    bsz = kp0.shape[0]
    solid, inside_np, surface_np, normals_np, note = object_interior(object_mesh, cfg)
    inside = torch.from_numpy(inside_np).to(device)[None].expand(bsz, -1, -1)
    surface = torch.from_numpy(surface_np).to(device)
    ok = plausible_hands(kp0)

    with torch.no_grad():
        d0 = torch.cdist(kp0, surface[None].expand(bsz, -1, -1)).amin(-1)  # (B,21)
        contains = (
            torch.from_numpy(solid.contains(kp0.reshape(-1, 3).cpu().numpy()))
            .view(bsz, NUM_JOINTS)
            .to(device)
        )
        contact = (d0 < cfg.contact_threshold_m) | contains
        none = ~contact.any(-1)
        if bool(none.any()):  # a floating hand: its three joints nearest to the object
            nearest = d0.topk(3, dim=-1, largest=False).indices
            fallback = torch.zeros_like(contact).scatter_(1, nearest, True)
            contact = torch.where(none[:, None], fallback, contact)
        contact = contact.float()
        # A finger grips when any of its last three joints touched the object in the input.
        gripping = torch.stack([contact[:, list(f[1:])].amax(-1) for f in FINGER_JOINTS], dim=-1)  # (B,5)
    grip = float(cfg.grip_depth_m) > 0.0 and float(cfg.w_grip) > 0.0
    support = cfg.support_direction is not None and float(cfg.w_support) > 0.0
    if support:  # the object's underside: the surface samples whose normals point along gravity
        under = normals_np @ np.asarray(cfg.support_direction, dtype=np.float32) > cfg.support_normal_cos
        if not under.any():
            raise RefineError(
                f"support_direction {cfg.support_direction}: no surface of the object faces that way"
            )
        underside = torch.from_numpy(surface_np[under]).to(device)
        support_pool = min(int(cfg.support_candidates), len(underside))  # a small underside: all of it
        support_k = min(int(cfg.support_points), support_pool)
    depth = None
    if grip:
        depth = torch.from_numpy(interior_depth(solid, inside_np, seed=cfg.seed)).to(device)

    rotation = torch.zeros(bsz, 3, device=device, requires_grad=True)
    translation_cm = torch.zeros(bsz, 3, device=device, requires_grad=True)
    fingers = torch.zeros(bsz, 5, 3, 3, device=device, requires_grad=True)
    optimizer = torch.optim.Adam(
        [
            {"params": [rotation], "lr": cfg.lr_rotation},
            {"params": [translation_cm], "lr": cfg.lr_translation_cm},
            {"params": [fingers], "lr": cfg.lr_rotation},
        ]
    )
    stage1 = int(round(cfg.steps * cfg.global_fraction))
    # Cosine decay: big steps to get out of the object, small ones to settle onto its surface.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=max(1, int(cfg.steps)), eta_min=0.0
    )

    def current() -> torch.Tensor:
        return pose_keypoints(kp0, rotation, translation_cm / CM_PER_M, fingers)

    # The release's logit units whatever the base (halo.grasp.halo_terms.skin_logit_slope).
    scale = halo_logit_scale(halo_model)

    def penetration(kp: torch.Tensor) -> torch.Tensor:
        pts = most_occupied_points(halo_model, kp, inside[: len(kp)], cfg.inside_points, cfg.candidate_points)
        logit = halo_occupancy_logit(halo_model, pts, kp)
        return F.softplus(scale * logit, beta=cfg.penetration_sharpness).mean(-1)

    with torch.no_grad():
        pen_before = torch.zeros(bsz, device=device)
        if bool(ok.any()):
            pen_before[ok] = penetration(kp0[ok])
    halo_model.requires_grad_(False)
    # enable_grad: callers may sit in a no_grad scope (``halo generate grasps`` samples under one).
    # flush_denormals: the backward through HALO is full of ~1e-40 gradients (points far outside
    # the hand); flushed, its matrix products run ~15x faster on a CPU (halo.utils.allocator).
    with torch.enable_grad(), flush_denormals():
        if bool(ok.any()):
            inside_ok = inside[ok]
            surface_ok = surface[None].expand(int(ok.sum()), -1, -1)
            if support:
                underside_ok = underside[None].expand(int(ok.sum()), -1, -1)
            c = contact[ok]
            touch_slack = REFERENCE_SKIN_SLOPE * cfg.touch_distance_m

            def skin_gap(logit: torch.Tensor) -> torch.Tensor:
                """(B,) how far HALO's skin stays from the points of ``logit`` (B,k, scaled): the
                touch and support terms."""
                return F.softplus(-(logit + touch_slack), beta=cfg.penetration_sharpness).mean(-1)

            # Part culling with radii calibrated once on the input hands (bones keep their lengths,
            # so the radii hold; + margin for the finger joints' rotation): ~5x fewer part
            # evaluations per step than all 16 parts, ~2x faster per step (measured when added).
            # A model trained with part_radii is defined with them: its own radii, no margin, and
            # then every term's points share one culled HALO call per step.
            radii = None
            trained_radii = halo_model.config.part_radii is not None
            if trained_radii:
                radii = halo_model.culling_radii(kp0[ok])
            elif cfg.cull and not halo_model.config.mixes_parts:
                radii = halo_model.culling_radii(kp0[ok]) * (1.0 + cfg.cull_margin)

            def step_logits(kp_ok: torch.Tensor, culled: torch.Tensor, skin: list[torch.Tensor]):
                """Scaled HALO logits of the interior points ``culled`` (evaluated with ``radii``) and
                of each skin group (touch, support, grip: without calibrated radii, see below), in
                one HALO call for a base with trained radii, two otherwise."""
                groups = [culled, *skin] if trained_radii else [culled]
                sizes = [g.shape[1] for g in groups]
                out = scale * halo_occupancy_logit(
                    halo_model, torch.cat(groups, 1), kp_ok, cull=radii, exact_gradient=cfg.exact_gradient
                )
                parts = list(out.split(sizes, dim=1))
                if not trained_radii and skin:
                    sizes = [g.shape[1] for g in skin]
                    out = scale * halo_occupancy_logit(
                        halo_model, torch.cat(skin, 1), kp_ok, exact_gradient=cfg.exact_gradient
                    )
                    parts += list(out.split(sizes, dim=1))
                return parts

            for step in range(int(cfg.steps)):
                kp_ok = current()[ok]
                gripping_now = grip and step >= stage1  # the fingers close once they may move
                if step % int(cfg.reselect_every) == 0 or (grip and step == stage1):
                    # The interior points HALO finds most inside the hand.  Re-choosing them only
                    # every few steps saves work but moved hands further (measured at 5).
                    # Touch and support points are ranked culled too (beyond the radii, nearest
                    # first) and evaluated below without the calibrated radii: a floating hand's
                    # nearest surface points lie beyond them, where a culled logit is a constant
                    # floor without gradient (a base's own trained radii apply always).  One HALO
                    # call ranks all three sets.
                    groups = [
                        (inside_ok, cfg.inside_points, cfg.candidate_points),
                        (surface_ok, cfg.touch_points, cfg.touch_candidates),
                    ]
                    if support:
                        groups.append((underside_ok, support_k, support_pool))
                    index, touch_index, *support_index = most_occupied_indices_grouped(
                        halo_model, kp_ok, groups, cull=radii
                    )
                    inside_pts = gather_points(inside_ok, index)
                    touch_pts = gather_points(surface_ok, touch_index)
                    if support:
                        support_pts = gather_points(underside_ok, support_index[0])
                    if gripping_now:
                        shallow = depth[index] < cfg.grip_depth_m  # (B,k)
                        grip_pts = _grip_points(
                            halo_model, kp_ok, surface_ok, cfg.grip_candidates, cfg.grip_points
                        ).flatten(1, 2)
                skin = [touch_pts] + ([support_pts] if support else []) + ([grip_pts] if gripping_now else [])
                logit, touch_logit, *rest = step_logits(kp_ok, inside_pts, skin)
                support_logit = rest.pop(0) if support else None
                pen = F.softplus(logit - cfg.penetration_margin, beta=cfg.penetration_sharpness)
                grip_term = torch.zeros_like(pen[:, 0])
                if gripping_now:
                    g = gripping[ok]
                    with torch.no_grad():  # shallow points under a gripping finger's pad are the grip
                        pads = finger_pad_anchors(kp_ok.detach())  # (B,5,5,3)
                        pads = torch.where(g[:, :, None, None] > 0, pads, torch.full_like(pads, 1e3))
                        near_pad = torch.cdist(inside_pts, pads.flatten(1, 2)).amin(-1) < cfg.grip_radius_m
                        keep = (~(shallow & near_pad)).float()
                    pen = (pen * keep).sum(-1) / keep.sum(-1).clamp_min(1.0)
                    grip_logit = rest.pop(0).view(len(g), 5, -1)
                    grip_target = REFERENCE_SKIN_SLOPE * cfg.grip_depth_m
                    per_finger = F.softplus(grip_target - grip_logit, beta=cfg.penetration_sharpness).mean(-1)
                    grip_term = (per_finger * g).sum(-1) / g.sum(-1).clamp_min(1.0)
                else:
                    pen = pen.mean(-1)
                touch = skin_gap(touch_logit)
                support_term = skin_gap(support_logit) if support else torch.zeros_like(touch)
                # Distance to the nearest surface sample, found without autograd: the gradient of
                # the min is the nearest sample's anyway, and a (B,21,S) cdist backward is not free.
                with torch.no_grad():
                    nearest = torch.cdist(kp_ok, surface_ok).argmin(-1)  # (B,21)
                d = (kp_ok - gather_points(surface_ok, nearest)).norm(dim=-1)
                gap = F.relu(d - cfg.contact_distance_m) * CM_PER_M
                contact_term = (gap.pow(2) * c).sum(-1) / c.sum(-1).clamp_min(1.0)
                pose_term = ((kp_ok - kp0[ok]) * CM_PER_M).pow(2).sum(-1).mean(-1)
                anatomy = anatomy_penalty(kp_ok)
                loss = (
                    cfg.w_penetration * pen
                    + cfg.w_contact * contact_term
                    + cfg.w_touch * touch
                    + cfg.w_grip * grip_term
                    + cfg.w_support * support_term
                    + cfg.w_pose * pose_term
                    + cfg.w_anatomy * anatomy
                ).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if step < stage1:
                    fingers.grad = None  # stage 1: the rigid hand only
                optimizer.step()
                schedule.step()
    with torch.no_grad():
        final = current()
        final = torch.where(ok[:, None, None], final, kp0)
        pen_after = torch.zeros(bsz, device=device)
        if bool(ok.any()):
            pen_after[ok] = penetration(final[ok])
        disp = (final - kp0).norm(dim=-1).mean(-1)
    return RefineResult(
        keypoints=final.cpu(),
        displacement_m=disp.cpu(),
        penetration_before=pen_before.cpu(),
        penetration_after=pen_after.cpu(),
        object_note=note,
        seconds=time.perf_counter() - t0,
    )
