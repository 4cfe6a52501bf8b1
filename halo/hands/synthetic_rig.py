"""The synthetic hand's rig: skinning weights, joint regressor, anatomical joint frames
(pose <-> flexion/abduction/twist angles) and the shape blend shapes.

Skinning weights come from each vertex's position along its finger chain with smooth
blends across joints, diffused over the surface; the joint regressor is convex and
reproduces the joint centres; 10 shape blend shapes (size, palm width/length/thickness,
finger length/thickness, thumb, index vs ring, pinky, fleshiness).  Vertex normals are
area-weighted (trimesh's ``vertex_normals`` weight faces differently, which would change
the fleshiness direction and the model's arrays).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy.spatial.transform import Rotation

from halo.core.skeleton import FINGER_NAMES, MANO_FINGER_JOINTS, MANO_FINGER_ORDER
from halo.hands.mano_file import MANO_PARENTS
from halo.hands.synthetic_design import Finger, component_sdfs, design_joints, rest_skeleton, unit
from halo.hands.synthetic_mesh import vertex_adjacency

__all__ = [
    "POSE_LIMITS_DEG",
    "angles_to_pose",
    "joint_frames",
    "joint_regressor",
    "local_rotations",
    "pose_to_angles",
    "shape_blend_shapes",
    "skinning_weights",
]

# ----------------------------------------------------------------------------
# Skinning weights and joint regressor
# ----------------------------------------------------------------------------

#: Full width (metres) of the weight blend across each joint: root, 2nd, 3rd joint.
_BLEND_WIDTH = {"long": (0.016, 0.011, 0.009), "thumb": (0.030, 0.013, 0.010)}


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below -0.5, 1 above 0.5, C1-smooth in between."""
    t = np.clip(x + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _chain_coords(p: np.ndarray, finger: Finger) -> tuple[np.ndarray, np.ndarray]:
    """Arc length along the chain (N,) (negative before the root) and distance to the chain axis (N,)."""
    pts = finger.points
    cum = np.concatenate([[0.0], np.cumsum(finger.lengths)])
    best_d = np.full(len(p), np.inf)
    best_s = np.zeros(len(p))
    for i in range(3):
        rel = p - pts[i]
        t = rel @ finger.dirs[i]
        lo = -np.inf if i == 0 else 0.0
        hi = np.inf if i == 2 else finger.lengths[i]
        t = np.clip(t, lo, hi)
        dist = np.linalg.norm(rel - t[:, None] * finger.dirs[i], axis=1)
        better = dist < best_d
        best_d = np.where(better, dist, best_d)
        best_s = np.where(better, cum[i] + t, best_s)
    return best_s, best_d


def _chain_weights(s: np.ndarray, finger: Finger, widths: tuple[float, float, float]) -> np.ndarray:
    """(N,4) weights of (palm, bone 1, bone 2, bone 3) from the arc length s."""
    cum = np.concatenate([[0.0], np.cumsum(finger.lengths)])
    alpha = [_smoothstep((s - cum[i]) / widths[i]) for i in range(3)]
    return np.stack([1 - alpha[0], alpha[0] - alpha[1], alpha[1] - alpha[2], alpha[2]], axis=1)


def skinning_weights(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,16) weights: each vertex follows its finger chain, blended smoothly across joints."""
    fingers = rest_skeleton()
    comps = component_sdfs(verts)
    names = ["palm", *MANO_FINGER_ORDER]
    d = np.stack([comps[n] for n in names], axis=1)
    own = np.exp(-(d - d.min(1, keepdims=True)) / 0.0015)
    own /= own.sum(1, keepdims=True)

    nv = len(verts)
    w = np.zeros((nv, 16))
    # Palm-owned vertices follow the chain of the finger whose axis (extended
    # into the palm) is nearest, so the knuckles and thenar bend with it.
    axis_dist = []
    chains = {}
    for name in MANO_FINGER_ORDER:
        f = fingers[name]
        s, dist = _chain_coords(verts, f)
        axis_dist.append(dist)  # before the root: distance to the root bone's line, extended
        kind = "thumb" if name == "thumb" else "long"
        chains[name] = _chain_weights(s, f, _BLEND_WIDTH[kind])
    axis_dist = np.stack(axis_dist, axis=1)
    near = np.exp(-(axis_dist - axis_dist.min(1, keepdims=True)) / 0.003)
    near /= near.sum(1, keepdims=True)
    for i, name in enumerate(MANO_FINGER_ORDER):
        j1, j2, j3 = MANO_FINGER_JOINTS[name]
        cw = chains[name]
        for weight in (own[:, 0] * near[:, i], own[:, 1 + i]):
            w[:, 0] += weight * cw[:, 0]
            w[:, j1] += weight * cw[:, 1]
            w[:, j2] += weight * cw[:, 2]
            w[:, j3] += weight * cw[:, 3]
    # Diffuse a little over the surface to remove any seams of the ownership switch.
    adj = vertex_adjacency(faces, nv)
    deg = np.asarray(adj.sum(1)).ravel()
    for _ in range(4):
        w = 0.5 * w + 0.5 * (adj @ w) / deg[:, None]
    w[w < 1e-4] = 0.0
    return w / w.sum(1, keepdims=True)


def _convex_weights(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 with ``weights @ points == target``, as uniform as possible."""
    from scipy.optimize import minimize

    n = len(points)
    centred = points - target
    # Closed form: the least-change projection of uniform weights onto the two
    # equality constraints; vertices whose weight comes out negative are dropped
    # and the projection repeated (usually converges in a few steps).
    active = np.arange(n)
    for _ in range(20):
        a = np.vstack([centred[active].T, np.ones((1, len(active)))])
        u = np.full(len(active), 1.0 / n)
        try:
            w_act = u + a.T @ np.linalg.solve(a @ a.T, np.array([0.0, 0.0, 0.0, 1.0]) - a @ u)
        except np.linalg.LinAlgError:
            break
        if w_act.min() >= 0.0:
            w = np.zeros(n)
            w[active] = w_act
            return w
        active = active[w_act > 0.0]
        if len(active) < 4:
            break
    cons = [
        {"type": "eq", "fun": lambda w: np.concatenate([w @ centred, [w.sum() - 1.0]]),
         "jac": lambda w: np.vstack([centred.T, np.ones((1, n))])},
    ]  # fmt: skip
    res = minimize(
        lambda w: 0.5 * np.sum((w - 1.0 / n) ** 2),
        np.full(n, 1.0 / n),
        jac=lambda w: w - 1.0 / n,
        bounds=[(0.0, 1.0)] * n,
        constraints=cons,
        method="SLSQP",
        options={"ftol": 1e-15, "maxiter": 500},
    )
    w = np.clip(res.x, 0.0, None)
    w /= w.sum()
    if np.linalg.norm(w @ points - target) > 1e-7:
        raise RuntimeError(
            f"joint regressor fit failed (residual {np.linalg.norm(w @ points - target):.2e} m)"
        )
    return w


def joint_regressor(verts: np.ndarray) -> np.ndarray:
    """(16,V) convex regressor rows; each joint centre is a weighted mean of a ring of nearby vertices."""
    fingers = rest_skeleton()
    joints = design_joints()
    reg = np.zeros((16, len(verts)))
    # Wrist: the cross-section ring around x = 0.
    for band in (0.003, 0.005, 0.008):
        idx = np.flatnonzero(np.abs(verts[:, 0] - joints[0, 0]) < band)
        try:
            reg[0, idx] = _convex_weights(verts[idx], joints[0])
            break
        except RuntimeError:
            continue
    for name in MANO_FINGER_ORDER:
        f = fingers[name]
        s, dist = _chain_coords(verts, f)
        cum = np.concatenate([[0.0], np.cumsum(f.lengths)])
        for level, j in enumerate(MANO_FINGER_JOINTS[name]):
            # Root joints sit inside the palm: take the ring around the finger axis there.
            radius = (0.026 if name == "thumb" else 1.7 * f.radii[0]) if level == 0 else 1.5 * f.radii[level]
            for band in (0.0025, 0.004, 0.006, 0.009):
                idx = np.flatnonzero((np.abs(s - cum[level]) < band) & (dist < radius))
                if len(idx) < 6:
                    continue
                try:
                    reg[j, idx] = _convex_weights(verts[idx], joints[j])
                    break
                except RuntimeError:
                    continue
            else:
                raise RuntimeError(f"could not build the regressor row of joint {j} ({name})")
    return reg


# ----------------------------------------------------------------------------
# Anatomical joint frames and pose <-> angle conversion
# ----------------------------------------------------------------------------


def joint_frames(rest_joints: np.ndarray | None = None, tips: np.ndarray | None = None) -> np.ndarray:
    """(15,3,3) anatomical frames of MANO joints 1..15, columns (flexion axis, abduction axis, bone).

    Flexion about column 0 curls the bone towards the palm, abduction about
    column 1 turns it towards the thumb side (for the thumb: out of the palm
    plane, palmar abduction), twist is about the bone (column 2).

    Args:
        rest_joints: (16,3) rest joints in MANO internal order; default the
            synthetic skeleton.  Any MANO-like right hand with fingers along -x
            and the back of the hand towards +y gives usable frames.
        tips: (5,3) rest fingertips (thumb, index, middle, ring, pinky).
    """
    if rest_joints is None:
        return _default_frames().copy()
    if tips is None:
        raise ValueError("joint_frames: tips (5,3) are required with rest_joints")
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    tip_of = {n: np.asarray(tips[i], dtype=np.float64) for i, n in enumerate(FINGER_NAMES)}
    back = unit(np.cross(rest_joints[4] - rest_joints[0], rest_joints[1] - rest_joints[0]))
    frames = np.zeros((15, 3, 3))
    for name, ids in MANO_FINGER_JOINTS.items():
        chain = [*rest_joints[list(ids)], tip_of[name]]
        for level, j in enumerate(ids):
            d = unit(chain[level + 1] - chain[level])
            if name == "thumb":
                # The thumb is pronated: its nail faces radially and up.
                radial = unit(np.cross(back, d))
                dorsal = 0.55 * back + 0.85 * radial
            else:
                dorsal = back
            palmar = -unit(dorsal - np.dot(dorsal, d) * d)
            flex = unit(np.cross(d, palmar))
            frames[j - 1] = np.stack([flex, np.cross(d, flex), d], axis=1)
    return frames


@functools.lru_cache(maxsize=1)
def _default_frames() -> np.ndarray:
    tips = np.array([rest_skeleton()[n].points[3] for n in FINGER_NAMES])
    return joint_frames(design_joints(), tips)


#: Joint limits in degrees, rows = MANO joints 1..15, columns = (flexion, abduction, twist) as (min, max).
POSE_LIMITS_DEG: np.ndarray = np.array(
    [
        # index MCP, PIP, DIP
        [(-20, 90), (-15, 25), (-10, 10)], [(-5, 110), (-5, 5), (-5, 5)], [(-10, 85), (-5, 5), (-5, 5)],
        # middle
        [(-20, 90), (-15, 15), (-10, 10)], [(-5, 110), (-5, 5), (-5, 5)], [(-10, 85), (-5, 5), (-5, 5)],
        # pinky
        [(-20, 90), (-30, 15), (-10, 10)], [(-5, 110), (-5, 5), (-5, 5)], [(-10, 85), (-5, 5), (-5, 5)],
        # ring
        [(-20, 90), (-20, 15), (-10, 10)], [(-5, 110), (-5, 5), (-5, 5)], [(-10, 85), (-5, 5), (-5, 5)],
        # thumb CMC, MCP, IP
        [(-25, 55), (-15, 70), (-50, 20)], [(-15, 65), (-10, 10), (-10, 10)], [(-20, 85), (-5, 5), (-5, 5)],
    ],
    dtype=np.float64,
)  # fmt: skip


def angles_to_pose(angles_deg: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
    """(n,15,3) flexion/abduction/twist in degrees -> (n,45) MANO axis-angle pose (radians).

    Each joint rotates by ``B Rx(flex) Ry(abd) Rz(twist) B^T`` with ``B`` its
    anatomical frame (:func:`joint_frames`).
    """
    world = local_rotations(angles_deg, frames)
    return Rotation.from_matrix(world.reshape(-1, 3, 3)).as_rotvec().reshape(-1, 45)


def local_rotations(angles_deg: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
    """(n,15,3) degrees -> (n,15,3,3) joint rotations in the rest-aligned parent frame."""
    frames = _default_frames() if frames is None else frames
    angles = np.array(angles_deg, dtype=np.float64).reshape(-1, 15, 3)
    # Intrinsic X-Y-Z: flexion, then abduction and twist in the flexed frame.  Abduction (small)
    # is the middle angle, so the decomposition in pose_to_angles has no singularity in range.
    local = Rotation.from_euler("XYZ", angles.reshape(-1, 3), degrees=True).as_matrix().reshape(-1, 15, 3, 3)
    return frames[None] @ local @ np.swapaxes(frames, -1, -2)[None]


def pose_to_angles(pose: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
    """Inverse of :func:`angles_to_pose`: (n,45) axis-angle -> (n,15,3) degrees."""
    frames = _default_frames() if frames is None else frames
    rot = (
        Rotation.from_rotvec(np.array(pose, dtype=np.float64).reshape(-1, 3))
        .as_matrix()
        .reshape(-1, 15, 3, 3)
    )
    local = np.swapaxes(frames, -1, -2)[None] @ rot @ frames[None]
    return Rotation.from_matrix(local.reshape(-1, 3, 3)).as_euler("XYZ", degrees=True).reshape(-1, 15, 3)


# ----------------------------------------------------------------------------
# Shape space and PCA pose space
# ----------------------------------------------------------------------------


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return unit(vn)


def shape_blend_shapes(
    verts: np.ndarray, faces: np.ndarray, weights: np.ndarray, joints: np.ndarray
) -> np.ndarray:
    """(V,3,10) shape directions; one unit of beta is about one population standard deviation.

    Each direction scales parts of the skeleton (palm about the wrist, bones
    along or across their axis); children follow their parent's joint, and
    vertices blend the parts' displacements with the skinning weights, so
    the joints regressed from the shaped mesh move consistently.
    """
    fingers = rest_skeleton()
    bone_dir = np.zeros((16, 3))
    for name, ids in MANO_FINGER_JOINTS.items():
        bone_dir[list(ids)] = fingers[name].dirs
    ex, ey, ez = np.eye(3)
    outer = lambda u: np.outer(u, u)  # noqa: E731

    def along(names: tuple[str, ...], s: float) -> dict[int, np.ndarray]:
        return {j: s * outer(bone_dir[j]) for n in names for j in MANO_FINGER_JOINTS[n]}

    longs = ("index", "middle", "ring", "pinky")
    specs: list[dict[int, np.ndarray]] = [
        {j: 0.06 * np.eye(3) for j in range(16)},  # 0 overall size
        {0: 0.05 * outer(ez)},  # 1 palm width
        {**along(longs, 0.06), **along(("thumb",), 0.04)},  # 2 finger length
        {j: 0.05 * (np.eye(3) - outer(bone_dir[j])) for j in range(1, 16)},  # 3 finger thickness
        {0: 0.05 * outer(ex)},  # 4 palm length
        {0: 0.08 * outer(ey)},  # 5 palm thickness
        along(("thumb",), 0.07),  # 6 thumb length
        {**along(("index",), 0.05), **along(("ring",), -0.05)},  # 7 index vs ring length
        along(("pinky",), 0.07),  # 8 pinky length
    ]
    dirs = np.zeros((len(verts), 3, 10))
    for b, spec in enumerate(specs):
        scale = {j: spec.get(j, np.zeros((3, 3))) for j in range(16)}
        shift = np.zeros((16, 3))
        for j in range(1, 16):
            p = MANO_PARENTS[j]
            shift[j] = shift[p] + scale[p] @ (joints[j] - joints[p])
        disp = np.zeros_like(verts)
        for j in range(16):
            disp += weights[:, j : j + 1] * ((verts - joints[j]) @ scale[j].T + shift[j])
        dirs[:, :, b] = disp
    dirs[:, :, 9] = 0.0005 * _vertex_normals(verts, faces)  # 9 fleshiness (soft tissue thickness)
    return dirs
