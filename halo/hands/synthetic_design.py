"""The synthetic hand's design: a rest skeleton with adult proportions and a signed distance field.

Conventions (rest pose, metres; chosen to match MANO's right hand): wrist joint (MANO
joint 0) at the origin; fingers point along -x, the back of the hand faces +y (the palm
faces -y), the thumb is on the +z side.  MANO's internal joint order and finger tables
come from :mod:`halo.core.skeleton`.

* :func:`rest_skeleton`: per finger a chain of three bones (wrist to middle fingertip
  0.1835 m, palm 0.096 m, phalanges within ~10% of measured hands).
* :func:`hand_sdf`: a rounded palm slab, a thenar pad, tapered capsules per phalanx,
  joined with smooth minimums (webs between fingers).  The surface of
  :mod:`halo.hands.synthetic_mesh` is fitted to its zero set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from halo.core.skeleton import MANO_FINGER_JOINTS, MANO_FINGER_ORDER

__all__ = [
    "PALM_ORDER",
    "PALM_POLYGON",
    "PALM_ROUND",
    "Finger",
    "component_sdfs",
    "design_joints",
    "hand_sdf",
    "palm_arch",
    "palm_half_core",
    "palm_region_sdf",
    "palm_sdf",
    "polygon_sdf",
    "rest_skeleton",
    "sdf_gradient",
    "unit",
]

# ----------------------------------------------------------------------------
# Skeleton (rest pose)
# ----------------------------------------------------------------------------

#: Long fingers across the palm from the radial (+z) to the ulnar (-z) side.
PALM_ORDER: tuple[str, ...] = ("index", "middle", "ring", "pinky")


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _spread(deg: float) -> np.ndarray:
    """Unit direction along -x turned by ``deg`` degrees towards +z (the radial side)."""
    a = np.radians(deg)
    return np.array([-np.cos(a), 0.0, np.sin(a)])


@dataclass(frozen=True)
class Finger:
    """Rest geometry of one finger chain (metres)."""

    root: np.ndarray  # (3,) MCP (thumb: CMC) joint
    dirs: np.ndarray  # (3,3) unit direction of the 3 bones
    lengths: np.ndarray  # (3,) bone lengths; the last one ends at the fingertip surface
    radii: np.ndarray  # (4,) tube radius at root, 2nd joint, 3rd joint, tip
    dorsal: np.ndarray  # (3,) back-of-finger direction (not necessarily unit / orthogonal)

    @property
    def points(self) -> np.ndarray:
        """(4,3) root, 2nd joint, 3rd joint, tip."""
        pts = [self.root]
        for d, length in zip(self.dirs, self.lengths, strict=True):
            pts.append(pts[-1] + d * length)
        return np.array(pts)

    def frame(self, bone: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(d, up, side) of a bone: direction, dorsal normal, and ``up x d`` (+z for a long finger)."""
        d = self.dirs[bone]
        up = unit(self.dorsal - np.dot(self.dorsal, d) * d)
        return d, up, np.cross(up, d)


def palm_arch(z: np.ndarray | float) -> np.ndarray | float:
    """Height (y) of the palm's mid-surface: slightly cupped towards the ulnar side."""
    return -0.0035 * (np.asarray(z) / 0.04) ** 2


def _long_finger(root_xz, spread_deg, lengths, radii) -> Finger:
    root = np.array([root_xz[0], palm_arch(root_xz[1]), root_xz[1]])
    d = _spread(spread_deg)
    return Finger(root, np.array([d, d, d]), np.array(lengths), np.array(radii), np.array([0.0, 1.0, 0.0]))


@functools.lru_cache(maxsize=1)
def rest_skeleton() -> dict[str, Finger]:
    """The rest skeleton; bone lengths follow measured adult hands (wrist-middle tip 0.183 m)."""
    fingers = {
        "index": _long_finger(
            (-0.0870, 0.0235), 6.0, (0.0340, 0.0235, 0.0240), (0.0098, 0.0090, 0.0080, 0.0072)
        ),
        "middle": _long_finger(
            (-0.0960, 0.0005), 0.5, (0.0340, 0.0255, 0.0280), (0.0102, 0.0093, 0.0083, 0.0074)
        ),
        "ring": _long_finger(
            (-0.0885, -0.0215), -6.0, (0.0305, 0.0260, 0.0255), (0.0097, 0.0088, 0.0079, 0.0071)
        ),
        "pinky": _long_finger(
            (-0.0790, -0.0400), -13.0, (0.0240, 0.0195, 0.0215), (0.0087, 0.0079, 0.0071, 0.0064)
        ),
    }
    # Thumb: metacarpal leaves the CMC at ~50 deg from the index, slightly palmar,
    # and the chain arcs gently towards the fingers; its nail faces radially/up.
    d1 = unit([-0.64, -0.12, 0.76])
    d2 = unit([-0.74, -0.14, 0.66])
    d3 = unit([-0.80, -0.15, 0.58])
    fingers["thumb"] = Finger(
        root=np.array([-0.0225, -0.0120, 0.0250]),
        dirs=np.array([d1, d2, d3]),
        lengths=np.array([0.0330, 0.0285, 0.0320]),
        radii=np.array([0.0125, 0.0112, 0.0102, 0.0090]),
        dorsal=np.array([0.64, 0.52, 0.54]),  # only orients the (round) tube's vertex rings
    )
    return fingers


def design_joints() -> np.ndarray:
    """(16,3) designed rest joint centres, MANO internal order."""
    fingers = rest_skeleton()
    joints = np.zeros((16, 3))
    for name, ids in MANO_FINGER_JOINTS.items():
        joints[list(ids)] = fingers[name].points[:3]
    return joints


# ----------------------------------------------------------------------------
# Signed distance field of the rest hand (numpy, vectorized over points)
# ----------------------------------------------------------------------------

# Palm outline in the (x, z) plane before rounding: wrist radial, index MCP,
# middle MCP, ring MCP, pinky MCP, hypothenar, wrist ulnar.
PALM_POLYGON = np.array(
    [
        [0.0040, 0.0150],
        [-0.0840, 0.0215],
        [-0.0925, 0.0005],
        [-0.0860, -0.0210],
        [-0.0760, -0.0380],
        [-0.0420, -0.0380],
        [0.0040, -0.0190],
    ]
)
PALM_ROUND = 0.0100  # rounding radius of the palm slab's rim


def palm_half_core(x: np.ndarray) -> np.ndarray:
    """Half-thickness of the palm slab's flat core (total = 2 * (core + rounding))."""
    t = np.clip(-x / 0.090, 0.0, 1.0)  # 0 at the wrist, 1 at the knuckles
    return 0.0068 * (1.0 - t) + 0.0008 * t


def polygon_sdf(q: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Signed distance (N,) from 2-D points q (N,2) to a convex polygon (counter-clockwise or not)."""
    a = poly
    b = np.roll(poly, -1, axis=0)
    e = b - a  # (E,2)
    w = q[:, None, :] - a[None]  # (N,E,2)
    t = np.clip((w * e).sum(-1) / (e * e).sum(-1), 0.0, 1.0)
    dist = np.linalg.norm(w - t[..., None] * e, axis=-1).min(1)
    cross = e[None, :, 0] * w[..., 1] - e[None, :, 1] * w[..., 0]
    inside = np.all(cross > 0, axis=1) | np.all(cross < 0, axis=1)
    return np.where(inside, -dist, dist)


def palm_sdf(p: np.ndarray) -> np.ndarray:
    d2 = polygon_sdf(p[:, [0, 2]], PALM_POLYGON)
    dy = np.abs(p[:, 1] - palm_arch(p[:, 2])) - palm_half_core(p[:, 0])
    w = np.stack([d2, dy], axis=1)
    return np.minimum(w.max(1), 0.0) + np.linalg.norm(np.maximum(w, 0.0), axis=1) - PALM_ROUND


def _capsule_sdf(p: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Tapered capsule: distance to segment ab minus a linearly interpolated radius."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - (ra + t * (rb - ra))


def _finger_sdf(p: np.ndarray, finger: Finger) -> np.ndarray:
    pts = finger.points
    r = finger.radii
    d = np.full(len(p), np.inf)
    for i in range(3):
        end = pts[i + 1] - finger.dirs[i] * r[3] if i == 2 else pts[i + 1]  # tip sphere touches the tip
        d = np.minimum(d, _capsule_sdf(p, pts[i], end, r[i], r[i + 1]))
    return d


def _smin(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum (blends within distance k)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


_THENAR = (np.array([-0.0100, -0.0085, 0.0130]), 0.0130, 0.0112)  # start, radius at start, at thumb MCP


def palm_region_sdf(p: np.ndarray) -> np.ndarray:
    """SDF of the palm slab joined with the thenar pad."""
    start, r0, r1 = _THENAR
    thenar = _capsule_sdf(p, start, rest_skeleton()["thumb"].points[1], r0, r1)
    return _smin(palm_sdf(p), thenar, 0.014)


def component_sdfs(p: np.ndarray) -> dict[str, np.ndarray]:
    """SDF of each component: 'palm' (slab + thenar) and each finger chain."""
    fingers = rest_skeleton()
    out = {"palm": palm_region_sdf(p)}
    for name in MANO_FINGER_ORDER:
        out[name] = _finger_sdf(p, fingers[name])
    return out


def hand_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, metres) to the rest hand surface; negative inside."""
    c = component_sdfs(p)
    long_fingers = np.minimum.reduce([c[n] for n in PALM_ORDER])
    d = _smin(c["palm"], long_fingers, 0.007)
    return _smin(d, c["thumb"], 0.010)


def sdf_gradient(p: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Unit gradient (N,3) of the hand SDF by central differences."""
    g = np.zeros_like(p)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        g[:, i] = hand_sdf(p + e) - hand_sdf(p - e)
    return unit(g + 1e-30)
