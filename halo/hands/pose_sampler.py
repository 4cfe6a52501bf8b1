"""Natural hand poses for the synthetic hand: open hands, fists, pinches, pointing, power grasps.

Poses are drawn as per-joint flexion/abduction/twist angles within anatomical limits
(:data:`halo.hands.synthetic_rig.POSE_LIMITS_DEG`), collisions between finger tubes and
the palm are relaxed kinematically (:func:`finger_clearances`), and the result is a MANO
axis-angle pose for the synthetic hand's joint frames.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from halo.core.skeleton import MANO_FINGER_JOINTS, MANO_FINGER_ORDER
from halo.hands.mano_file import MANO_PARENTS
from halo.hands.synthetic_design import PALM_ORDER, design_joints, palm_region_sdf, palm_sdf, rest_skeleton
from halo.hands.synthetic_rig import POSE_LIMITS_DEG, angles_to_pose, local_rotations

__all__ = ["POSE_KINDS", "finger_clearances", "interpolate_poses", "sample_hand_poses"]

# ----------------------------------------------------------------------------
# Pose sampler
# ----------------------------------------------------------------------------

#: Pose families of :func:`sample_hand_poses`.
POSE_KINDS: tuple[str, ...] = ("open", "fist", "pinch", "point", "grasp")
#: Row of each finger's root joint (MCP; thumb CMC) in the (15,3) angle array.
_ROWS = {"index": 0, "middle": 3, "pinky": 6, "ring": 9, "thumb": 12}
#: MCP abduction (degrees) of each finger at full spread; fingers fan out.
_SPREAD_DEG = {"index": 12.0, "middle": 2.0, "ring": -7.0, "pinky": -16.0}
#: Thumb (CMC flex, CMC abd, CMC twist, MCP flex, IP flex) of a fist; negative CMC twist pronates
#: the thumb (opposition).
_THUMB_FIST = np.array([35.0, 30.0, -25.0, 35.0, 30.0])
_THUMB_OPPOSED = np.array([15.0, 45.0, -30.0, 15.0, 15.0])


def _set_long_finger(
    a: np.ndarray, name: str, curl: np.ndarray, spread: np.ndarray, rng, jitter: bool = True
):
    """Write flexion from a curl in [0,1] (MCP 85, PIP 100, DIP ~75 degrees at 1) and abduction."""
    n = len(curl)
    r = _ROWS[name]
    u = (lambda lo, hi: rng.uniform(lo, hi, n)) if jitter else (lambda lo, hi: np.ones(n))
    g = (lambda s: rng.normal(0.0, s, n)) if jitter else (lambda s: np.zeros(n))
    pip = 100.0 * curl * u(0.85, 1.1) + g(4.0)
    a[:, r, 0] = 85.0 * curl * u(0.85, 1.1) + g(4.0)
    a[:, r + 1, 0] = pip
    a[:, r + 2, 0] = 0.75 * pip * u(0.8, 1.1) + g(3.0)
    a[:, r, 1] = spread * _SPREAD_DEG[name] + g(2.0)
    a[:, r + 1 : r + 3, 1] = g(1.0)[:, None]
    a[:, r : r + 3, 2] = g(1.5)[:, None]


def _set_thumb(a: np.ndarray, values: np.ndarray, noise: np.ndarray, rng) -> None:
    """values (n,5) or (5,): CMC flex/abd/twist, MCP flex, IP flex; gaussian noise per entry (5,)."""
    n = len(a)
    v = np.broadcast_to(values, (n, 5)) + rng.normal(0.0, 1.0, (n, 5)) * noise
    r = _ROWS["thumb"]
    a[:, r] = v[:, :3]
    a[:, r + 1, 0] = v[:, 3]
    a[:, r + 2, 0] = v[:, 4]
    a[:, r + 1, 1:] = rng.normal(0.0, 2.0, (n, 2))
    a[:, r + 2, 1:] = rng.normal(0.0, 1.0, (n, 2))


def _fk(angles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Forward kinematics of the rest skeleton.

    Args:
        angles: (15,3) or (n,15,3) degrees.

    Returns:
        Global joint rotations (...,16,3,3) and posed joints (...,16,3), wrist fixed.
    """
    single = np.asarray(angles).ndim == 2
    local = local_rotations(angles)
    n = len(local)
    joints = design_joints()
    rot = np.zeros((n, 16, 3, 3))
    pos = np.zeros((n, 16, 3))
    rot[:, 0], pos[:, 0] = np.eye(3), joints[0]
    for j in range(1, 16):
        p = MANO_PARENTS[j]
        rot[:, j] = rot[:, p] @ local[:, j - 1]
        pos[:, j] = pos[:, p] + rot[:, p] @ (joints[j] - joints[p])
    return (rot[0], pos[0]) if single else (rot, pos)


def _pinch_point(angles: np.ndarray, name: str, frac: float = 0.7) -> tuple[np.ndarray, float]:
    """Point on the distal tube axis of a finger (``frac`` towards the tip) and the tube radius there."""
    pts, rad = _capsule_chains(angles[None])[name]
    return pts[0, 2] + frac * (pts[0, 3] - pts[0, 2]), rad[2] + frac * (rad[3] - rad[2])


#: Pinch poses: index curls and the thumb angles (CMC flex/abd/twist, MCP flex, IP flex, degrees)
#: that put the thumb's distal pad 1 mm from the index's.  Computed by :func:`_solve_pinch_table`
#: (a few seconds of least squares, so the result is stored here); linear interpolation between
#: rows keeps the gap within about 0.5-2.5 mm (checked by the tests).
_PINCH_CURLS = np.linspace(0.55, 0.8, 6)
_PINCH_THUMB = np.array(
    [
        [40.4, 9.9, -32.1, 4.5, -15.6],
        [34.0, 17.4, -33.9, 13.0, -2.5],
        [30.3, 24.2, -32.6, 19.4, 7.8],
        [29.4, 30.5, -30.5, 25.7, 15.9],
        [32.9, 31.9, -27.5, 30.1, 18.6],
        [28.7, 39.8, -26.1, 48.3, 32.1],
    ]
)


def _pinch_angles(curl: float, thumb: np.ndarray) -> np.ndarray:
    """(15,3) degrees: index curled by ``curl``, thumb set from (5,) angles, everything else 0."""
    a = np.zeros((1, 15, 3))
    _set_long_finger(a, "index", np.array([curl]), np.zeros(1), None, jitter=False)
    a = a[0]
    a[12] = thumb[:3]
    a[13, 0], a[14, 0] = thumb[3], thumb[4]
    return a


def _pinch_gap(curl: float, thumb: np.ndarray) -> tuple[float, float]:
    """Distance between the distal pads (m) and the thumb-index tube clearance (m) of a pinch."""
    a = _pinch_angles(curl, thumb)
    pt, rt = _pinch_point(a, "thumb")
    pi, ri = _pinch_point(a, "index")
    return float(np.linalg.norm(pt - pi) - rt - ri), float(finger_clearances(a[None])["thumb:index"][0])


def _solve_pinch_table(curls: np.ndarray = _PINCH_CURLS) -> np.ndarray:
    """Recompute :data:`_PINCH_THUMB` (development helper; not used at run time).

    Least squares on the thumb angles: pads 1 mm apart, no tube overlap, a weak
    pull towards a typical opposition; solved at the middle curl from several
    starts, then by continuation to both ends so neighbouring rows match.
    """
    from scipy.optimize import least_squares

    lim = POSE_LIMITS_DEG[12:]
    lo = np.array([lim[0, 0, 0], lim[0, 1, 0], lim[0, 2, 0], lim[1, 0, 0], lim[2, 0, 0]])
    hi = np.array([lim[0, 0, 1], lim[0, 1, 1], lim[0, 2, 1], lim[1, 0, 1], lim[2, 0, 1]])

    def solve(curl: float, start: np.ndarray) -> np.ndarray:
        def residual(x):
            gap, clear = _pinch_gap(curl, x)
            return np.concatenate(
                [[gap - 0.001], 4e-5 * (x - _THUMB_OPPOSED), [5.0 * min(clear - 3e-4, 0.0)]]
            )

        return least_squares(residual, np.clip(start, lo + 1e-6, hi - 1e-6), bounds=(lo, hi)).x

    mid = len(curls) // 2
    starts = [
        _THUMB_OPPOSED,
        np.array([30.0, 60.0, -45.0, 30.0, 30.0]),
        np.array([45.0, 10.0, -30.0, 15.0, 25.0]),
    ]

    def cost(x):
        return abs(_pinch_gap(curls[mid], x)[0] - 0.001) + 4e-5 * np.linalg.norm(x - _THUMB_OPPOSED)

    table = {mid: min((solve(curls[mid], x0) for x0 in starts), key=cost)}
    for i in range(mid + 1, len(curls)):
        table[i] = solve(curls[i], table[i - 1])
    for i in range(mid - 1, -1, -1):
        table[i] = solve(curls[i], table[i + 1])
    return np.array([table[i] for i in range(len(curls))])


def _segment_distance(p0: np.ndarray, p1: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Closest distance (...,) between segments p0p1 and q0q1 (...,3), vectorized."""
    d1, d2, r = p1 - p0, q1 - q0, p0 - q0
    a = (d1 * d1).sum(-1)
    e = (d2 * d2).sum(-1)
    b = (d1 * d2).sum(-1)
    c = (d1 * r).sum(-1)
    f = (d2 * r).sum(-1)
    denom = a * e - b * b
    s = np.where(denom > 1e-14, np.clip((b * f - c * e) / np.maximum(denom, 1e-14), 0.0, 1.0), 0.0)
    t = (b * s + f) / e
    s = np.where(t < 0, np.clip(-c / a, 0.0, 1.0), np.where(t > 1, np.clip((b - c) / a, 0.0, 1.0), s))
    t = np.clip(t, 0.0, 1.0)
    return np.linalg.norm(p0 + d1 * s[..., None] - q0 - d2 * t[..., None], axis=-1)


def _capsule_chains(angles: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Posed tube axis of each finger: points (n,4,3) (root, 2 joints, tip-sphere centre), radii (4,)."""
    rot, pos = _fk(angles)
    joints = design_joints()
    out = {}
    for name in MANO_FINGER_ORDER:
        f = rest_skeleton()[name]
        j1, j2, j3 = MANO_FINGER_JOINTS[name]
        centre = f.points[3] - f.dirs[2] * f.radii[3]
        tip = pos[:, j3] + np.einsum("nij,j->ni", rot[:, j3], centre - joints[j3])
        out[name] = (np.stack([pos[:, j1], pos[:, j2], pos[:, j3], tip], axis=1), f.radii)
    return out


def finger_clearances(angles: np.ndarray, margin: float = 0.001) -> dict[str, np.ndarray]:
    """Clearance (n,) in metres of pairs of finger tubes; negative = collision.

    Keys ``palm:<finger>`` (middle/distal phalanx against the palm), ``thumb:<finger>``
    (thumb phalanges against a long finger) and ``<finger>:<finger>`` (neighbours).
    """
    caps = _capsule_chains(angles)
    out: dict[str, np.ndarray] = {}
    fr = np.linspace(0.0, 1.0, 4)
    for name in MANO_FINGER_ORDER:
        pts, rad = caps[name]
        seg = (1, 2)  # middle and distal phalanx (the proximal one starts at the palm)
        q = np.stack([pts[:, i] + (pts[:, i + 1] - pts[:, i]) * t for i in seg for t in fr], axis=1)
        radii = np.array([rad[i] + (rad[i + 1] - rad[i]) * t for i in seg for t in fr])
        # The thumb rests against its own thenar pad: test it against the slab only.
        sdf = palm_sdf(q.reshape(-1, 3)) if name == "thumb" else palm_region_sdf(q.reshape(-1, 3))
        out[f"palm:{name}"] = (sdf.reshape(q.shape[:2]) - radii - margin).min(1)

    def tube_clearance(a: str, b: str, segs_a: tuple[int, ...]) -> np.ndarray:
        (pa, ra), (pb, rb) = caps[a], caps[b]
        best = np.full(len(pa), np.inf)
        for i in segs_a:
            for k in range(3):
                dist = _segment_distance(pa[:, i], pa[:, i + 1], pb[:, k], pb[:, k + 1])
                reach = 0.5 * (ra[i] + ra[i + 1] + rb[k] + rb[k + 1]) + 0.5 * margin
                best = np.minimum(best, dist - reach)
        return best

    for name in PALM_ORDER:
        out[f"thumb:{name}"] = tube_clearance("thumb", name, (1, 2))
    for a, b in zip(PALM_ORDER[:-1], PALM_ORDER[1:], strict=True):
        out[f"{a}:{b}"] = tube_clearance(a, b, (0, 1, 2))
    return out


def _resolve_collisions(angles: np.ndarray, max_iter: int = 40) -> np.ndarray:
    """Relax colliding poses (kinematic tubes, see :func:`finger_clearances`).

    Fingers entering the palm uncurl, a thumb entering a finger or the palm
    unflexes, touching neighbours turn apart (abduction, in whichever sense
    separates them); the joint limits are kept.
    """
    angles = angles.copy()
    lim = POSE_LIMITS_DEG
    todo = np.arange(len(angles))
    for _ in range(max_iter):
        if len(todo) == 0:
            break
        clear = finger_clearances(angles[todo])
        any_hit = np.zeros(len(todo), dtype=bool)
        for key, c in clear.items():
            hit = c < 0
            if not hit.any():
                continue
            any_hit |= hit
            rows = todo[hit]
            a, b = key.split(":")
            if a == "palm" and b != "thumb":
                r = _ROWS[b]
                angles[rows, r : r + 3, 0] *= 0.93
            elif a in ("palm", "thumb"):
                angles[rows, 12, 0] *= 0.96
                angles[rows, 13:15, 0] *= 0.96
            else:
                ra, rb = _ROWS[a], _ROWS[b]
                trial = []
                for sign in (1.0, -1.0):
                    t = angles[rows].copy()
                    t[:, ra, 1] += sign * 2.0
                    t[:, rb, 1] -= sign * 2.0
                    t = np.clip(t, lim[None, :, :, 0], lim[None, :, :, 1])
                    trial.append((t, finger_clearances(t)[key]))
                better = trial[0][1] >= trial[1][1]
                angles[rows] = np.where(better[:, None, None], trial[0][0], trial[1][0])
        angles[todo] = np.clip(angles[todo], lim[None, :, :, 0], lim[None, :, :, 1])
        todo = todo[any_hit]
    return angles


def sample_hand_poses(
    n: int, seed: int | np.random.Generator | None = 0, kind: str | None = None
) -> np.ndarray:
    """Natural hand poses within anatomical limits, as MANO axis-angle vectors.

    Args:
        n: number of poses.
        seed: seed or numpy Generator.
        kind: ``'open'`` (flat to relaxed, fingers fanned), ``'fist'``,
            ``'pinch'`` (thumb pad on the index pad, other fingers random),
            ``'point'`` (index straight, the rest a fist), ``'grasp'`` (power
            grasp around a ~4-6 cm object) or ``None`` (each pose draws one of
            these at random).

    Returns:
        (n,45) float64 axis-angle pose of MANO joints 1..15 (radians) for the
        synthetic model's joint frames (:func:`joint_frames`); flexion,
        abduction and twist of every joint lie within :data:`POSE_LIMITS_DEG`.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if kind is None:
        kinds = rng.integers(0, len(POSE_KINDS), n)
        out = np.zeros((n, 45))
        for i, k in enumerate(POSE_KINDS):
            idx = np.flatnonzero(kinds == i)
            if len(idx):
                out[idx] = sample_hand_poses(len(idx), rng, k)
        return out
    if kind not in POSE_KINDS:
        raise ValueError(f"sample_hand_poses: unknown kind {kind!r}, expected one of {POSE_KINDS} or None")

    a = np.zeros((n, 15, 3))
    longs = ("index", "middle", "ring", "pinky")
    if kind == "open":
        curl = rng.uniform(0.0, 0.25, n)
        spread = rng.uniform(-0.2, 1.0, n)
        for name in longs:
            _set_long_finger(a, name, np.clip(curl + rng.normal(0, 0.05, n), 0, 0.3), spread, rng)
        thumb = np.stack([rng.uniform(-10, 10, n), rng.uniform(0, 25, n), rng.uniform(-10, 5, n),
                          rng.uniform(-5, 20, n), rng.uniform(-10, 25, n)], axis=1)  # fmt: skip
        _set_thumb(a, thumb, np.zeros(5), rng)
    elif kind in ("fist", "point"):
        spread = rng.uniform(-0.2, 0.15, n)
        for name in longs:
            if kind == "point" and name == "index":
                _set_long_finger(a, name, rng.uniform(0.0, 0.12, n), rng.uniform(-0.2, 0.5, n), rng)
            else:
                _set_long_finger(a, name, rng.uniform(0.88, 1.0, n), spread, rng)
        _set_thumb(a, _THUMB_FIST, np.array([4.0, 4.0, 4.0, 6.0, 8.0]), rng)
    elif kind == "grasp":
        curl = rng.uniform(0.3, 0.65, n)
        spread = rng.uniform(-0.1, 0.3, n)
        for name in longs:
            _set_long_finger(a, name, np.clip(curl + rng.normal(0, 0.05, n), 0, 1), spread, rng)
        _set_thumb(a, _THUMB_OPPOSED, np.array([5.0, 6.0, 6.0, 6.0, 8.0]), rng)
    else:  # pinch
        curls, table = _PINCH_CURLS, _PINCH_THUMB
        c = rng.uniform(curls[0], curls[-1], n)
        _set_long_finger(a, "index", c, np.zeros(n), rng, jitter=False)
        a[:, 0:3] += rng.normal(0.0, 1.0, (n, 3, 3))
        thumb = np.stack([np.interp(c, curls, table[:, k]) for k in range(5)], axis=1)
        _set_thumb(a, thumb, np.full(5, 1.0), rng)
        others = rng.uniform(0.0, 0.9, n)
        for name in ("middle", "ring", "pinky"):
            _set_long_finger(
                a, name, np.clip(others + rng.normal(0, 0.08, n), 0, 1), rng.uniform(-0.2, 0.6, n), rng
            )
    lim = POSE_LIMITS_DEG
    a = np.clip(a, lim[None, :, :, 0], lim[None, :, :, 1])
    return angles_to_pose(_resolve_collisions(a))


def interpolate_poses(start: np.ndarray, end: np.ndarray, num: int) -> np.ndarray:
    """Per-joint spherical interpolation between two poses.

    Args:
        start, end: (45,) (or (J*3,)) axis-angle poses.
        num: number of poses, endpoints included (>= 2).

    Returns:
        (num, 45) poses; each joint rotates at constant speed along the
        shortest arc from its start to its end rotation.
    """
    from scipy.spatial.transform import Slerp

    start = np.array(start, dtype=np.float64).reshape(-1, 3)
    end = np.array(end, dtype=np.float64).reshape(-1, 3)
    if start.shape != end.shape:
        raise ValueError(f"interpolate_poses: start {start.shape} and end {end.shape} differ")
    if num < 2:
        raise ValueError(f"interpolate_poses: num must be >= 2, got {num}")
    t = np.linspace(0.0, 1.0, num)
    out = np.zeros((num, len(start), 3))
    for j in range(len(start)):
        key = Rotation.from_rotvec(np.stack([start[j], end[j]]))
        out[:, j] = Slerp([0.0, 1.0], key)(t).as_rotvec()
    return out.reshape(num, -1)
