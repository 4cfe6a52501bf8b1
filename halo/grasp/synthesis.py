"""Grasp synthesis: close a MANO-format right hand around one object.

:class:`GraspSynthesizer` poses a MANO-format right hand (the synthetic hand
of :mod:`halo.hands.synthetic_hand`, shaped per subject) around one object:
approach along the inward normal of a sampled surface point (jittered), roll
about that direction, slide the pre-shaped open hand along it until it
touches, then close every finger (and the opposing thumb) independently
until it touches the surface, wrap the distal joints of fingers that touched
with a proximal segment, and keep the grasp only when the thumb and at least one
other finger touch, the contacts oppose each other and the hand penetrates
the object by at most a few millimetres.  Every step is batched over
candidates and closing levels (one :class:`halo.hands.mano.ManoLayer` call each)
and distances come from open3d's ``RaycastingScene``.  Writing such grasps as
GRAB-layout sequences is :mod:`halo.grasp.synthetic_grab`.

Conventions (metres, right hand):

* hand "local" frame = :class:`ManoLayer` output of the subject model with zero
  global orientation and translation (wrist at the rest wrist joint, fingers
  along -x, palm towards -y, thumb towards +z);
* a grasp stores the rigid map ``v_object_frame = R @ v_local + t`` (column vectors)
  into the object's template frame (object centred at its bounding-box centre).

The module is one cohesive thing over 500 lines: the synthesizer class is a single
batched algorithm whose stages share their candidate arrays.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import trimesh

from halo.core.skeleton import MANO_FINGER_JOINTS
from halo.geometry.inside import o3d_points, raycasting_scene
from halo.hands.mano import ManoLayer, ManoModel

# finger_clearances: kinematic finger-tube clearances of the synthetic hand (the design skeleton, so
# approximate for shaped subjects); the pose sampler uses it for the same purpose.
from halo.hands.synthetic_hand import POSE_LIMITS_DEG, angles_to_pose, finger_clearances

__all__ = [
    "FINGER_NAMES",
    "GRAB_PALM_ID",
    "Grasp",
    "GraspSynthConfig",
    "GraspSynthesizer",
    "SynthStats",
    "grab_part_ids",
    "shaped_rest_vertices",
    "subject_model",
]

FINGER_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
#: GRAB contact id of the right hand (palm / wrist segment); fingers are 40 + MANO joint (41..55).
GRAB_PALM_ID = 22
_GRAB_FINGER_OFFSET = 40
#: Long fingers: flexion (degrees) of MCP, PIP, DIP at curl 1; closing runs from curl
#: _LONG_OPEN (slightly extended) to _LONG_CLOSED.
_LONG_FLEX = np.array([80.0, 100.0, 70.0])
_LONG_OPEN = -0.1
_LONG_CLOSED = 0.95
#: The sliding hand stops this far before touching the object (metres).
_SLIDE_GAP_M = 0.0005
#: MCP abduction (degrees) of the long fingers at full spread (fingers fan out).
_SPREAD_DEG = {"index": 10.0, "middle": 1.0, "ring": -6.0, "pinky": -14.0}


def grab_part_ids(weights: np.ndarray) -> np.ndarray:
    """(V,) GRAB contact id of every hand vertex from its dominant skinning joint.

    MANO joint ``j`` in 1..15 (index 1-3, middle 4-6, pinky 7-9, ring 10-12, thumb
    13-15) has GRAB id ``40 + j`` (right-hand finger segments 41..55 in the
    same order); the wrist joint (palm) is GRAB's right hand, 22.

    Args:
        weights: (V,16) skinning weights.
    """
    joint = np.asarray(weights).argmax(axis=1)
    return np.where(joint == 0, GRAB_PALM_ID, _GRAB_FINGER_OFFSET + joint).astype(np.int64)


# ----------------------------------------------------------------------------
# Grasp synthesis
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GraspSynthConfig:
    """Parameters of :class:`GraspSynthesizer` (metres and degrees).

    Attributes:
        contact_tol_m: a finger touches the object when some vertex is this close.
        max_penetration_m: deepest hand vertex inside the object (and object vertex
            inside the hand) an accepted grasp may have.
        levels: closing levels of the coarse sweep (one batched MANO call).
        refine: sub-levels between the last free and the first touching level.
        wrap_levels: closing levels of the wrap sweeps (distal joints after a proximal contact).
        batch: candidates tried together.
        max_candidates_per_grasp: give up after this many candidates per requested grasp.
        approach_jitter_deg: approach direction = inward surface normal turned by up to this.
        require_opposition: the thumb's contact normal must oppose another contact's.
        forearm_clearance_m: radius of the forearm capsule behind the wrist that
            must stay outside the object (0 disables the check).
        self_collision_m: reject grasps whose finger tubes (thumb against fingers, fingers
            against the palm or their neighbours; kinematic capsules of the synthetic
            hand) overlap by more than this.
        roll_bias: fraction of candidates whose fingers run across the object's longest
            principal axis (within ``roll_sigma_deg``); the rest roll uniformly.
    """

    contact_tol_m: float = 0.002
    max_penetration_m: float = 0.003
    levels: int = 22
    wrap_levels: int = 10
    refine: int = 6
    batch: int = 16
    max_candidates_per_grasp: int = 40
    approach_jitter_deg: float = 25.0
    require_opposition: bool = True
    forearm_clearance_m: float = 0.03
    self_collision_m: float = 0.001
    roll_bias: float = 0.7
    roll_sigma_deg: float = 30.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Grasp:
    """One accepted grasp, in the object's template frame (metres).

    Attributes:
        pose: (45,) MANO axis-angle of joints 1..15 (``fullpose``).
        rotation: (3,3) hand local -> object frame (column vectors).
        translation: (3,) so that ``v_object = rotation @ v_local + translation``.
        vertices: (V,3) posed hand vertices in the object frame.
        finger_distance_m: (5,) signed distance of each finger (thumb, index, middle,
            ring, pinky) to the object (negative = pressing in).
        penetration_m: deepest hand vertex inside the object (>= 0).
        object_penetration_m: deepest object vertex inside the hand (>= 0).
        approach: (3,) unit approach direction (palm normal) in the object frame.
    """

    pose: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    vertices: np.ndarray
    finger_distance_m: np.ndarray
    penetration_m: float
    object_penetration_m: float
    approach: np.ndarray


@dataclass
class SynthStats:
    """Counters of one :meth:`GraspSynthesizer.sample` call."""

    candidates: int = 0
    passed: int = 0  # candidates that passed every check (some may be surplus to the request)
    accepted: int = 0  # grasps returned
    rejected: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def acceptance_rate(self) -> float:
        """Fraction of candidates that pass every check."""
        return self.passed / self.candidates if self.candidates else float("nan")

    def reject(self, reason: str, n: int = 1) -> None:
        if n:
            self.rejected[reason] = self.rejected.get(reason, 0) + int(n)

    def merge(self, other: SynthStats) -> None:
        self.candidates += other.candidates
        self.passed += other.passed
        self.accepted += other.accepted
        self.seconds += other.seconds
        for k, v in other.rejected.items():
            self.reject(k, v)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _perpendicular(d: np.ndarray) -> np.ndarray:
    """(n,3) unit vectors perpendicular to the unit vectors d (n,3)."""
    helper = np.where(np.abs(d[:, :1]) < 0.9, np.array([[1.0, 0.0, 0.0]]), np.array([[0.0, 1.0, 0.0]]))
    return _unit(np.cross(d, helper))


class GraspSynthesizer:
    """Close a MANO-format right hand around one object (see the module docstring).

    Args:
        hand_model: the subject's hand (e.g. :func:`subject_model`); its rest
            hand must follow the synthetic hand's frame (fingers -x, palm -y) and
            its joint frames (:func:`halo.hands.synthetic_hand.joint_frames`).
        obj: watertight object mesh (metres), any placement.
        config: :class:`GraspSynthConfig`.
    """

    def __init__(self, hand_model: ManoModel, obj: trimesh.Trimesh, config: GraspSynthConfig | None = None):
        self.config = config or GraspSynthConfig()
        self.model = hand_model
        self.layer = ManoLayer(hand_model, flat_hand_mean=True)
        self.faces = np.asarray(hand_model.f, dtype=np.int64)
        if not obj.is_watertight:
            raise ValueError("GraspSynthesizer: the object mesh must be watertight (closed)")
        self.obj = obj
        self.obj_vertices = np.asarray(obj.vertices, dtype=np.float64)
        self.obj_scene = raycasting_scene(obj.vertices, obj.faces)
        from scipy.spatial import cKDTree

        # Object vertices + the longest edge bound which points can be near the surface.
        self._obj_tree = cKDTree(self.obj_vertices)
        self._obj_max_edge = float(obj.edges_unique_length.max())
        # Longest principal axis of the object's surface (for the roll bias).
        centred = self.obj_vertices - self.obj_vertices.mean(axis=0)
        self._long_axis = np.linalg.svd(centred, full_matrices=False)[2][0]
        joint = np.asarray(hand_model.weights).argmax(axis=1)
        #: vertex ids of each finger (FINGER_NAMES order) and of the palm
        self.finger_vertices = [np.flatnonzero(np.isin(joint, MANO_FINGER_JOINTS[f])) for f in FINGER_NAMES]
        self.palm_vertices = np.flatnonzero(joint == 0)
        self._finger_ids = np.concatenate(self.finger_vertices)
        bounds = np.cumsum([0] + [len(ids) for ids in self.finger_vertices])
        self._finger_cols = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        # Segment (0 proximal, 1 middle, 2 distal) of every finger vertex.
        self._segment = np.concatenate(
            [
                np.searchsorted(MANO_FINGER_JOINTS[f], joint[ids])
                for f, ids in zip(FINGER_NAMES, self.finger_vertices, strict=True)
            ]
        )
        rest = self.layer(batch_size=1)
        rv = rest.vertices[0].double().numpy()
        self.rest_joints = rest.joint_transforms[0, :, :3, 3].double().numpy()
        # Palm centre: on the palm surface (-y side) about halfway from the wrist to the middle knuckle.
        mid_x = 0.55 * self.rest_joints[4, 0]
        near = (
            (joint == 0)
            & (np.abs(rv[:, 0] - mid_x) < 0.012)
            & (np.abs(rv[:, 2] - self.rest_joints[4, 2]) < 0.015)
        )
        below = near & (rv[:, 1] < self.rest_joints[0, 1])
        if not below.any():
            raise ValueError(
                "GraspSynthesizer: no palm vertices found; the hand must have its palm towards -y"
            )
        self.palm_centre = np.array([rv[below, 0].mean(), rv[below, 1].min(), rv[below, 2].mean()])

    # -- pose parametrisation -------------------------------------------------
    @staticmethod
    def _flex_range(pre: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(n,5,3) flexion (degrees) of every finger's 3 joints when open and when fully closed."""
        n = len(pre["spread"])
        ratios = np.stack([pre["mcp_ratio"], np.ones(n), pre["dip_ratio"]], axis=1)[:, None]  # (n,1,3)
        open_ = np.repeat((_LONG_OPEN * _LONG_FLEX) * ratios, 5, axis=1)
        closed = np.repeat((_LONG_CLOSED * _LONG_FLEX) * ratios, 5, axis=1)
        open_[:, 0] = np.stack([pre["thumb_flex0"] - 10.0, np.zeros(n), np.zeros(n)], axis=1)
        closed[:, 0] = np.stack([pre["thumb_flex0"] + 45.0, np.full(n, 55.0), np.full(n, 75.0)], axis=1)
        return open_, closed

    @staticmethod
    def _angles(flex: np.ndarray, pre: dict[str, np.ndarray]) -> np.ndarray:
        """(n,15,3) joint angles (flexion, abduction, twist; degrees) from (n,5,3) flexions + pre-shape."""
        n = len(flex)
        a = np.zeros((n, 15, 3))
        for f, name in enumerate(FINGER_NAMES):
            r = MANO_FINGER_JOINTS[name][0] - 1
            a[:, r : r + 3, 0] = flex[:, f]
            if name != "thumb":
                curl = np.clip(flex[:, f, 0] / _LONG_FLEX[0], 0.0, 1.0)
                a[:, r, 1] = _SPREAD_DEG[name] * pre["spread"] * (1.0 - 0.7 * curl)
        r = MANO_FINGER_JOINTS["thumb"][0] - 1
        a[:, r, 1] = pre["thumb_abd"]
        a[:, r, 2] = pre["thumb_twist"]
        return np.clip(a, POSE_LIMITS_DEG[None, :, :, 0], POSE_LIMITS_DEG[None, :, :, 1])

    def _local_vertices(self, poses: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.layer(torch.as_tensor(poses, dtype=torch.float32))
        return out.vertices.double().numpy()

    def _signed_distance(self, points: np.ndarray) -> np.ndarray:
        shape = points.shape[:-1]
        flat = o3d_points(points.reshape(-1, 3))
        return (
            self.obj_scene.compute_signed_distance(flat, nthreads=1).numpy().reshape(shape).astype(np.float64)
        )

    def _near_signed_distance(self, points: np.ndarray, within: float) -> np.ndarray:
        """(N,) signed distances, exact where ``|d| <= within``; +inf / -inf for points farther outside / inside.

        Only points near an object vertex get the (costly) closest-point query.
        """
        near = np.isfinite(self._obj_tree.query(points, distance_upper_bound=within + self._obj_max_edge)[0])
        out = np.full(len(points), np.inf)
        if not near.all():
            far_inside = self.obj_scene.compute_occupancy(o3d_points(points[~near]), nthreads=1).numpy() > 0.5
            out[np.flatnonzero(~near)[far_inside]] = -np.inf
        if near.any():
            out[near] = self._signed_distance(points[near])
        return out

    # -- candidates ----------------------------------------------------------------
    def _sample_candidates(self, n: int, rng: np.random.Generator) -> dict[str, Any]:
        cfg = self.config
        points, face_ids = trimesh.sample.sample_surface(self.obj, n, seed=rng)
        inward = -self.obj.face_normals[face_ids]
        # Approach = inward normal turned by a random angle (uniform on a spherical cap).
        cos_t = rng.uniform(np.cos(np.radians(cfg.approach_jitter_deg)), 1.0, n)
        sin_t = np.sqrt(1.0 - cos_t**2)
        phi = rng.uniform(0.0, 2 * np.pi, n)
        u = _perpendicular(inward)
        w = np.cross(inward, u)
        approach = _unit(
            cos_t[:, None] * inward + sin_t[:, None] * (np.cos(phi)[:, None] * u + np.sin(phi)[:, None] * w)
        )
        # Roll about the approach: mostly with the fingers across the object's long axis (they wrap
        # around a handle instead of lying along it), otherwise uniform.
        across = np.cross(approach, self._long_axis)
        degenerate = np.linalg.norm(across, axis=1) < 0.2
        ref = np.where(degenerate[:, None], _perpendicular(approach), across)
        ref = _unit(ref)
        biased = (rng.uniform(size=n) < cfg.roll_bias) & ~degenerate
        roll = np.where(
            biased,
            rng.normal(0.0, np.radians(cfg.roll_sigma_deg), n) + np.pi * rng.integers(0, 2, n),
            rng.uniform(0.0, 2 * np.pi, n),
        )
        finger_dir = np.cos(roll)[:, None] * ref + np.sin(roll)[:, None] * np.cross(approach, ref)
        # Hand rotation (local -> object): local -y -> approach, local -x -> finger direction.
        rot = np.stack([-finger_dir, -approach, np.cross(finger_dir, approach)], axis=2)
        pre = {
            "mcp_ratio": rng.uniform(0.85, 1.1, n),
            "dip_ratio": rng.uniform(0.8, 1.1, n),
            "spread": rng.uniform(-0.2, 0.8, n),
            "thumb_flex0": rng.uniform(-10.0, 10.0, n),
            "thumb_abd": rng.uniform(30.0, 60.0, n),
            "thumb_twist": rng.uniform(-35.0, -15.0, n),
            "free_curl": rng.uniform(0.3, 0.6, n),
            "free_extra": rng.uniform(0.0, 0.15, n),
        }
        # The object point the palm centre aims at, moved along the fingers (object nearer the
        # fingertips or nearer the wrist).
        aim = points - rng.uniform(-0.01, 0.025, n)[:, None] * finger_dir
        return {"aim": aim, "approach": approach, "rot": rot, "pre": pre}

    def _slide(self, local: np.ndarray, rot: np.ndarray, aim: np.ndarray, approach: np.ndarray) -> np.ndarray:
        """Translation that brings each open hand along ``approach`` until it touches the object.

        Args:
            local: (n,V,3) hand vertices in the local frame.
            rot: (n,3,3); aim: (n,3) object point the palm centre aims at; approach: (n,3).

        Returns:
            (n,3) translations (NaN where the hand never meets the object).
        """
        n = len(local)
        back = 0.25  # start this far behind the aim point
        start = aim - back * approach - np.einsum("nij,j->ni", rot, self.palm_centre)
        world = np.einsum("nij,nvj->nvi", rot, local) + start[:, None]
        rays = np.concatenate([world, np.broadcast_to(approach[:, None], world.shape)], axis=2)
        hit = (
            self.obj_scene.cast_rays(o3d_points(rays.reshape(-1, 6)), nthreads=1)["t_hit"]
            .numpy()
            .reshape(n, -1)
        )
        travel = hit.min(axis=1).astype(np.float64)
        travel[~np.isfinite(travel)] = np.nan
        # Stop just short of contact so that the closing sweeps start from a free hand.
        return start + (travel - _SLIDE_GAP_M)[:, None] * approach

    # -- closing ---------------------------------------------------------------------
    def _sweep(
        self, cand: dict, trans: np.ndarray, start: np.ndarray, end: np.ndarray, k: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Move every finger's flexions from ``start`` to ``end`` (n,5,3) through levels ``k`` (K,) in [0,1].

        Returns:
            first: (n,5) first level at which some vertex of the finger is inside the
                object (``K`` when none is); inside tests (ray parity) are ~50x cheaper
                than distances, which is what makes the dense sweep affordable.
            segment: (n,5) most proximal finger segment (0..2) inside at that level.
        """
        n, nk = len(trans), len(k)
        flex = start[:, None] + k[None, :, None, None] * (end - start)[:, None]  # (n,K,5,3)
        pre = {key: np.repeat(v, nk) for key, v in cand["pre"].items()}
        poses = angles_to_pose(self._angles(flex.reshape(n * nk, 5, 3), pre))
        local = self._local_vertices(poses).reshape(n, nk, -1, 3)[:, :, self._finger_ids]
        world = np.einsum("nij,nkvj->nkvi", cand["rot"], local) + trans[:, None, None]
        inside = self.obj_scene.compute_occupancy(o3d_points(world.reshape(-1, 3)), nthreads=1).numpy()
        inside = inside.reshape(n, nk, -1) > 0.5
        first = np.full((n, 5), nk)
        segment = np.full((n, 5), 3)
        for f, cols in enumerate(self._finger_cols):
            hit = inside[:, :, cols].any(axis=2)  # (n,K)
            rows = np.flatnonzero(hit.any(axis=1))
            first[rows, f] = hit[rows].argmax(axis=1)
            at_first = inside[rows, first[rows, f]][:, cols]  # (m, finger vertices)
            seg = np.where(at_first, self._segment[cols][None], 3)
            segment[rows, f] = seg.min(axis=1)
        return first, segment

    def _close_stage(
        self, cand: dict, trans: np.ndarray, start: np.ndarray, end: np.ndarray, coarse: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Close from ``start`` towards ``end``: a coarse sweep, then a fine one before the first contact.

        Returns:
            flex: (n,5,3) the last free level (``end`` for fingers that never touch).
            touched: (n,5) bool.  segment: (n,5) segment that touched.
            blocked: (n,5) bool, inside already at ``start``.
        """
        cfg = self.config
        first, seg_coarse = self._sweep(cand, trans, start, end, np.linspace(0.0, 1.0, coarse))
        step = (end - start) / (coarse - 1)
        lo = start + np.maximum(first - 1, 0)[..., None] * step
        first2, seg_fine = self._sweep(cand, trans, lo, lo + step, np.arange(1, cfg.refine + 1) / cfg.refine)
        flex = lo + (first2 / cfg.refine)[..., None] * step
        touched = first < coarse
        segment = np.where(first2 < cfg.refine, seg_fine, seg_coarse)
        flex = np.where(touched[..., None], flex, end)
        return flex, touched, segment, touched & (first == 0)

    def _close(self, cand: dict, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(n,5,3) closed flexions and (n,) bool "some finger starts inside the object".

        Every finger closes (all its joints together) until it touches; a finger
        touching with its proximal or middle segment then wraps: the joints beyond
        the touching segment keep closing until the next contact.  Long fingers
        that never touch curl like their touching neighbours.
        """
        open_, closed = self._flex_range(cand["pre"])
        flex, touched, segment, blocked = self._close_stage(cand, trans, open_, closed, self.config.levels)
        done = ~touched | (segment >= 2)
        for _ in range(2):  # wrap: after a proximal contact, then after a middle one
            rows = np.flatnonzero((~done).any(axis=1))
            if len(rows) == 0:
                break
            sub = _take(cand, rows)
            moving = (~done[rows])[..., None] & (np.arange(3)[None, None] > segment[rows][..., None])
            target = np.where(moving, np.maximum(closed[rows], flex[rows]), flex[rows])
            f2, t2, s2, _ = self._close_stage(sub, trans[rows], flex[rows], target, self.config.wrap_levels)
            upd = ~done[rows]
            flex[rows] = np.where(upd[..., None], f2, flex[rows])
            segment[rows] = np.where(upd & t2, s2, 3)
            done[rows] = done[rows] | ~t2 | (s2 >= 2)
        # Free long fingers: the mean curl of the touching ones (or a relaxed one) plus a little.
        pre = cand["pre"]
        long_touch = touched[:, 1:]
        curl = flex[:, 1:, 0] / closed[:, 1:, 0] * _LONG_CLOSED
        mean_touch = np.where(
            long_touch.any(axis=1),
            (curl * long_touch).sum(axis=1) / np.maximum(long_touch.sum(axis=1), 1),
            pre["free_curl"],
        )
        free = (
            np.clip(mean_touch + pre["free_extra"], 0.0, _LONG_CLOSED)[:, None, None]
            / _LONG_CLOSED
            * closed[:, 1:]
        )
        flex[:, 1:] = np.where(long_touch[..., None], flex[:, 1:], free)
        return flex, blocked.any(axis=1)

    # -- main loop ---------------------------------------------------------------------
    def sample(self, n: int, rng: np.random.Generator | int | None = 0) -> tuple[list[Grasp], SynthStats]:
        """Up to ``n`` accepted grasps (fewer when ``n * max_candidates_per_grasp`` candidates run out).

        Deterministic for a given seed / generator state.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        cfg = self.config
        stats = SynthStats()
        t0 = time.perf_counter()
        grasps: list[Grasp] = []
        budget = n * cfg.max_candidates_per_grasp
        while len(grasps) < n and stats.candidates < budget:
            # Batch size from the acceptance so far: few wasted candidates, few small batches.
            remaining = n - len(grasps)
            rate = stats.passed / stats.candidates if stats.candidates else 0.5
            b = int(np.clip(np.ceil(1.3 * remaining / max(rate, 0.1)), 4, cfg.batch))
            new = self._try(min(b, budget - stats.candidates), rng, stats)
            stats.passed += len(new)
            grasps += new[:remaining]
        stats.accepted = len(grasps)
        stats.seconds = time.perf_counter() - t0
        return grasps, stats

    def open_pose(self, pre: dict[str, np.ndarray]) -> np.ndarray:
        """(n,45) open pre-grasp poses of candidates' pre-shape parameters."""
        open_, closed = self._flex_range(pre)
        c = pre["open_curl"][:, None, None]
        return angles_to_pose(self._angles(open_ + c * (closed - open_), pre))

    def _try(self, b: int, rng: np.random.Generator, stats: SynthStats) -> list[Grasp]:
        cand = self._sample_candidates(b, rng)
        stats.candidates += b
        open_, _ = self._flex_range(cand["pre"])
        open_local = self._local_vertices(angles_to_pose(self._angles(open_, cand["pre"])))
        trans = self._slide(open_local, cand["rot"], cand["aim"], cand["approach"])
        ok = np.isfinite(trans).all(axis=1)
        stats.reject("missed object", int((~ok).sum()))
        if not ok.any():
            return []
        cand = _take(cand, np.flatnonzero(ok))
        trans = trans[ok]
        flex, blocked = self._close(cand, trans)
        angles = self._angles(flex, cand["pre"])
        poses = angles_to_pose(angles)
        self_hit = np.min(list(finger_clearances(angles).values()), axis=0) < -self.config.self_collision_m
        world = np.einsum("nij,nvj->nvi", cand["rot"], self._local_vertices(poses)) + trans[:, None]
        out = []
        for i in range(len(world)):
            if blocked[i]:
                stats.reject("finger starts inside object")
            elif self_hit[i]:
                stats.reject("fingers collide")
            else:
                g = self._check(world[i], poses[i], cand["rot"][i], trans[i], cand["approach"][i], stats)
                if g is not None:
                    out.append(g)
        return out

    def _check(self, verts, pose, rot, trans, approach, stats: SynthStats) -> Grasp | None:
        """Contact, penetration, forearm and opposition tests of one closed hand (object frame)."""
        cfg = self.config
        sd = self._near_signed_distance(verts, max(cfg.contact_tol_m, cfg.max_penetration_m))
        finger_d = np.array([sd[ids].min() for ids in self.finger_vertices])
        touching = finger_d <= cfg.contact_tol_m
        if not touching[0]:
            stats.reject("thumb not touching")
            return None
        if not touching[1:].any():
            stats.reject("no finger touching")
            return None
        pen = float(max(0.0, -sd.min()))
        if pen > cfg.max_penetration_m:
            stats.reject("hand penetrates object")
            return None
        hand_scene = raycasting_scene(verts, self.faces)
        inside = hand_scene.compute_occupancy(o3d_points(self.obj_vertices), nthreads=1).numpy() > 0.5
        obj_pen = 0.0
        if inside.any():
            obj_pen = float(
                hand_scene.compute_distance(o3d_points(self.obj_vertices[inside]), nthreads=1).numpy().max()
            )
        if obj_pen > cfg.max_penetration_m:
            stats.reject("object penetrates hand")
            return None
        if cfg.forearm_clearance_m > 0:
            wrist = rot @ self.rest_joints[0] + trans
            pts = wrist + np.linspace(0.02, 0.2, 12)[:, None] * rot[:, 0]  # local +x: towards the elbow
            if (self._signed_distance(pts) < cfg.forearm_clearance_m).any():
                stats.reject("forearm hits object")
                return None
        if cfg.require_opposition and not self._opposed(verts, sd, touching):
            stats.reject("no opposing contacts")
            return None
        return Grasp(
            pose=pose,
            rotation=rot,
            translation=trans,
            vertices=verts,
            finger_distance_m=finger_d,
            penetration_m=pen,
            object_penetration_m=obj_pen,
            approach=approach,
        )

    def _opposed(self, verts: np.ndarray, sd: np.ndarray, touching: np.ndarray) -> bool:
        """Does the thumb's contact normal oppose the normal at another finger's or the palm's contact?"""
        tol = self.config.contact_tol_m
        groups = [ids for ids, t in zip(self.finger_vertices, touching, strict=True) if t]
        palm = self.palm_vertices[sd[self.palm_vertices] <= tol]
        if len(palm):
            groups.append(palm)
        normals = []
        for ids in groups:
            close = ids[sd[ids] <= tol]
            res = self.obj_scene.compute_closest_points(o3d_points(verts[close]), nthreads=1)
            normals.append(_unit(res["primitive_normals"].numpy().astype(np.float64).mean(axis=0)))
        return any(float(normals[0] @ other) < -0.2 for other in normals[1:])


def _take(cand: dict, rows: np.ndarray) -> dict:
    return {k: (_take(v, rows) if isinstance(v, dict) else v[rows]) for k, v in cand.items()}


# ----------------------------------------------------------------------------
# Subjects
# ----------------------------------------------------------------------------


def subject_model(base: ManoModel, v_template: np.ndarray) -> ManoModel:
    """The base hand with a subject's rest mesh as template (GRAB: ``v_template`` = ``vtemp`` mesh)."""
    v_template = np.asarray(v_template, dtype=np.float64)
    if v_template.shape != base.v_template.shape:
        raise ValueError(
            f"subject template has shape {v_template.shape}, the hand model needs {base.v_template.shape}"
        )
    return dataclasses.replace(base, v_template=v_template)


def shaped_rest_vertices(base: ManoModel, betas: np.ndarray) -> np.ndarray:
    """(V,3) rest vertices of the hand shaped by ``betas`` (zero pose)."""
    betas = np.asarray(betas, dtype=np.float64)
    return base.v_template + base.shapedirs[:, :, : len(betas)] @ betas
