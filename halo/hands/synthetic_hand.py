"""A procedurally built right hand in the MANO file format, and a natural-pose sampler.

No MANO file can be shipped (its licence forbids redistribution), so the
project's default data come from this model.  It goes through the same
:class:`halo.hands.mano.ManoLayer`, files and readers as a real MANO model.

Conventions (rest pose, metres; chosen to match MANO's right hand):

* wrist joint (MANO joint 0) at the origin;
* fingers point along -x, the back of the hand faces +y (the palm faces -y),
  the thumb is on the +z side;
* 16 joints in MANO's internal order (0 wrist, 1-3 index, 4-6 middle,
  7-9 pinky, 10-12 ring, 13-15 thumb) with MANO's kinematic tree; fingertip
  vertices in the order thumb, index, middle, ring, pinky;
* pose parameters are MANO's: per joint an axis-angle rotation in the
  (rest-aligned) parent frame.  Positive flexion curls a finger towards the
  palm (about +z for a finger along -x).

Construction (see :func:`build_synthetic_hand_model`):

1. A skeleton with adult proportions (wrist to middle fingertip 0.1835 m,
   palm 0.096 m, phalanges within ~10% of measured hands).
2. A signed distance field: a rounded palm slab, a thenar pad, tapered
   capsules per phalanx, joined with smooth minimums (webs between fingers).
3. A hand-topology control mesh (palm tube of 20-vertex rings closed at the
   wrist, four finger tubes branching from it, the thumb tube growing out of
   its palmar-radial side, 8-vertex rings denser near joints), one Loop
   subdivision, then vertices are pulled onto the distance field's zero set
   with tangential relaxation.  The result is one closed (sealed wrist),
   watertight, manifold component whose edge loops run around the fingers,
   which keeps linear blend skinning clean at bent joints.
4. Skinning weights from each vertex's position along its finger chain with
   smooth blends across joints, diffused over the surface; a convex joint
   regressor that reproduces the joint centres; 10 shape blend shapes
   (size, palm width/length/thickness, finger length/thickness, thumb, index
   vs ring, pinky, fleshiness); zero pose blend shapes; a 45-D PCA pose basis
   from :func:`sample_hand_poses`.

The topology is fixed by this code (no marching cubes, no library remesher),
so the same model is produced on every machine.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.spatial.transform import Rotation

from halo.hands.mano import ManoModel, load_mano_model, save_mano_model_npz, save_mano_model_pkl

__all__ = [
    "POSE_KINDS",
    "POSE_LIMITS_DEG",
    "build_synthetic_hand_model",
    "get_synthetic_hand_model",
    "interpolate_poses",
    "joint_frames",
    "load_synthetic_hand_model",
    "pose_to_angles",
    "angles_to_pose",
    "sample_hand_poses",
    "save_synthetic_hand_model",
]

# ----------------------------------------------------------------------------
# Skeleton (rest pose)
# ----------------------------------------------------------------------------

#: Fingers in MANO's internal joint order and their joints (root, middle, distal).
_FINGERS: tuple[str, ...] = ("index", "middle", "pinky", "ring", "thumb")
_FINGER_JOINTS: dict[str, tuple[int, int, int]] = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "pinky": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}
#: Order of tip vertices (MANO convention).
_TIP_ORDER: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")
#: Long fingers across the palm from the radial (+z) to the ulnar (-z) side.
_PALM_ORDER: tuple[str, ...] = ("index", "middle", "ring", "pinky")
_PARENTS = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)


def _unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _spread(deg: float) -> np.ndarray:
    """Unit direction along -x turned by ``deg`` degrees towards +z (the radial side)."""
    a = np.radians(deg)
    return np.array([-np.cos(a), 0.0, np.sin(a)])


@dataclass(frozen=True)
class _Finger:
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
        up = _unit(self.dorsal - np.dot(self.dorsal, d) * d)
        return d, up, np.cross(up, d)


def _palm_arch(z: np.ndarray | float) -> np.ndarray | float:
    """Height (y) of the palm's mid-surface: slightly cupped towards the ulnar side."""
    return -0.0035 * (np.asarray(z) / 0.04) ** 2


def _long_finger(root_xz, spread_deg, lengths, radii) -> _Finger:
    root = np.array([root_xz[0], _palm_arch(root_xz[1]), root_xz[1]])
    d = _spread(spread_deg)
    return _Finger(root, np.array([d, d, d]), np.array(lengths), np.array(radii), np.array([0.0, 1.0, 0.0]))


@functools.lru_cache(maxsize=1)
def _skeleton() -> dict[str, _Finger]:
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
    d1 = _unit([-0.64, -0.12, 0.76])
    d2 = _unit([-0.74, -0.14, 0.66])
    d3 = _unit([-0.80, -0.15, 0.58])
    fingers["thumb"] = _Finger(
        root=np.array([-0.0225, -0.0120, 0.0250]),
        dirs=np.array([d1, d2, d3]),
        lengths=np.array([0.0330, 0.0285, 0.0320]),
        radii=np.array([0.0125, 0.0112, 0.0102, 0.0090]),
        dorsal=np.array([0.64, 0.52, 0.54]),  # only orients the (round) tube's vertex rings
    )
    return fingers


def _design_joints() -> np.ndarray:
    """(16,3) designed rest joint centres, MANO internal order."""
    fingers = _skeleton()
    joints = np.zeros((16, 3))
    for name, ids in _FINGER_JOINTS.items():
        joints[list(ids)] = fingers[name].points[:3]
    return joints


# ----------------------------------------------------------------------------
# Signed distance field of the rest hand (numpy, vectorized over points)
# ----------------------------------------------------------------------------

# Palm outline in the (x, z) plane before rounding: wrist radial, index MCP,
# middle MCP, ring MCP, pinky MCP, hypothenar, wrist ulnar.
_PALM_POLYGON = np.array(
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
_PALM_ROUND = 0.0100  # rounding radius of the palm slab's rim


def _palm_half_core(x: np.ndarray) -> np.ndarray:
    """Half-thickness of the palm slab's flat core (total = 2 * (core + rounding))."""
    t = np.clip(-x / 0.090, 0.0, 1.0)  # 0 at the wrist, 1 at the knuckles
    return 0.0068 * (1.0 - t) + 0.0008 * t


def _polygon_sdf(q: np.ndarray, poly: np.ndarray) -> np.ndarray:
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


def _palm_sdf(p: np.ndarray) -> np.ndarray:
    d2 = _polygon_sdf(p[:, [0, 2]], _PALM_POLYGON)
    dy = np.abs(p[:, 1] - _palm_arch(p[:, 2])) - _palm_half_core(p[:, 0])
    w = np.stack([d2, dy], axis=1)
    return np.minimum(w.max(1), 0.0) + np.linalg.norm(np.maximum(w, 0.0), axis=1) - _PALM_ROUND


def _capsule_sdf(p: np.ndarray, a: np.ndarray, b: np.ndarray, ra: float, rb: float) -> np.ndarray:
    """Tapered capsule: distance to segment ab minus a linearly interpolated radius."""
    ab = b - a
    t = np.clip(((p - a) @ ab) / (ab @ ab), 0.0, 1.0)
    return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - (ra + t * (rb - ra))


def _finger_sdf(p: np.ndarray, finger: _Finger) -> np.ndarray:
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


def _palm_region_sdf(p: np.ndarray) -> np.ndarray:
    """SDF of the palm slab joined with the thenar pad."""
    start, r0, r1 = _THENAR
    thenar = _capsule_sdf(p, start, _skeleton()["thumb"].points[1], r0, r1)
    return _smin(_palm_sdf(p), thenar, 0.014)


def _component_sdfs(p: np.ndarray) -> dict[str, np.ndarray]:
    """SDF of each component: 'palm' (slab + thenar) and each finger chain."""
    fingers = _skeleton()
    out = {"palm": _palm_region_sdf(p)}
    for name in _FINGERS:
        out[name] = _finger_sdf(p, fingers[name])
    return out


def _hand_sdf(p: np.ndarray) -> np.ndarray:
    """Signed distance (approximate, metres) to the rest hand surface; negative inside."""
    c = _component_sdfs(p)
    long_fingers = np.minimum.reduce([c[n] for n in _PALM_ORDER])
    d = _smin(c["palm"], long_fingers, 0.007)
    return _smin(d, c["thumb"], 0.010)


def _sdf_gradient(p: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Unit gradient (N,3) of the hand SDF by central differences."""
    g = np.zeros_like(p)
    for i in range(3):
        e = np.zeros(3)
        e[i] = h
        g[:, i] = _hand_sdf(p + e) - _hand_sdf(p - e)
    return _unit(g + 1e-30)


# ----------------------------------------------------------------------------
# Control mesh with hand topology
# ----------------------------------------------------------------------------

_RING = 8  # vertices per finger ring (control mesh)
_PALM_STATIONS = (0.0100, -0.0140, -0.0390, -0.0640)  # x of the palm rings
#: Arc-length fractions of the finger rings: (bone index, fraction along that bone).
_LONG_RINGS = ((0, 0.5), (0, 0.88), (1, 0.25), (1, 0.85), (2, 0.35), (2, 0.72), (2, 0.93))
_THUMB_RINGS = ((0, 0.75), (1, 0.2), (1, 0.8), (2, 0.3), (2, 0.7), (2, 0.93))


class _MeshBuilder:
    def __init__(self) -> None:
        self.verts: list[np.ndarray] = []
        self.faces: list[tuple[int, int, int]] = []

    def add(self, p) -> int:
        self.verts.append(np.asarray(p, dtype=np.float64))
        return len(self.verts) - 1

    def quad(self, a: int, b: int, c: int, d: int) -> None:
        self.faces.append((a, b, c))
        self.faces.append((a, c, d))

    def tri(self, a: int, b: int, c: int) -> None:
        self.faces.append((a, b, c))


def _finger_ring(finger: _Finger, bone: int, frac: float, scale: float = 1.0) -> np.ndarray:
    """(8,3) ring around a bone; vertex k at 22.5 + 45 k degrees from dorsal towards ``side``."""
    d, up, side = finger.frame(bone)
    centre = finger.points[bone] + d * finger.lengths[bone] * frac
    r = (finger.radii[bone] + frac * (finger.radii[bone + 1] - finger.radii[bone])) * scale
    ang = np.radians(22.5 + 45.0 * np.arange(_RING))
    return centre + r * (np.cos(ang)[:, None] * up + np.sin(ang)[:, None] * side)


def _palm_ring(x: float) -> np.ndarray:
    """(20,3) palm ring at station x: 8 top (+z to -z), 2 ulnar, 8 bottom (-z to +z), 2 radial."""
    # z extent of the polygon at this x (rounded rim added), sampled numerically.
    zs = np.linspace(-0.08, 0.08, 1601)
    xq = min(x, _PALM_POLYGON[:, 0].max() - 1e-4)  # the wrist cap station lies on the rounded rim
    inside = _polygon_sdf(np.stack([np.full_like(zs, xq), zs], 1), _PALM_POLYGON) < 0
    zmin, zmax = zs[inside].min() - _PALM_ROUND * 0.9, zs[inside].max() + _PALM_ROUND * 0.9
    half = _palm_half_core(np.array([x]))[0] + _PALM_ROUND
    top_z = np.linspace(zmax - 0.006, zmin + 0.006, 8)
    ring = [[x, _palm_arch(z) + half * 0.95, z] for z in top_z]
    ring += [[x, _palm_arch(zmin) + half * 0.35, zmin], [x, _palm_arch(zmin) - half * 0.35, zmin]]
    ring += [[x, _palm_arch(z) - half * 0.95, z] for z in top_z[::-1]]
    ring += [[x, _palm_arch(zmax) - half * 0.35, zmax], [x, _palm_arch(zmax) + half * 0.35, zmax]]
    return np.array(ring)


def _control_mesh() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Closed hand-topology control mesh (V,3), (F,3) and the control vertex of each fingertip."""
    fingers = _skeleton()
    mb = _MeshBuilder()
    tips: dict[str, int] = {}

    # Finger base rings (they form the distal palm ring) and finger tubes.
    base: dict[str, list[int]] = {}
    for name in _PALM_ORDER:
        f = fingers[name]
        base[name] = [mb.add(p) for p in _finger_ring(f, 0, 0.0)]
        prev = base[name]
        for bone, frac in _LONG_RINGS:
            ring = [mb.add(p) for p in _finger_ring(f, bone, frac)]
            for k in range(_RING):
                mb.quad(prev[k], prev[(k + 1) % _RING], ring[(k + 1) % _RING], ring[k])
            prev = ring
        tips[name] = mb.add(f.points[3])
        for k in range(_RING):
            mb.tri(prev[k], prev[(k + 1) % _RING], tips[name])

    # Webs between neighbouring fingers (A radial of B).
    for a_name, b_name in zip(_PALM_ORDER[:-1], _PALM_ORDER[1:], strict=True):
        a, b = base[a_name], base[b_name]
        mb.quad(a[7], a[6], b[1], b[0])
        mb.quad(a[6], a[5], b[2], b[1])
        mb.quad(a[5], a[4], b[3], b[2])

    i_, m_, r_, p_ = (base[n] for n in _PALM_ORDER)
    distal = [i_[0], i_[7], m_[0], m_[7], r_[0], r_[7], p_[0], p_[7], p_[6], p_[5]]
    distal += [p_[4], p_[3], r_[4], r_[3], m_[4], m_[3], i_[4], i_[3], i_[2], i_[1]]

    # Palm tube from the wrist to the distal ring, with a hole for the thumb.
    stations = [[mb.add(p) for p in _palm_ring(x)] for x in _PALM_STATIONS]
    rings = [*stations, distal]
    hole_quads = {(1, 16), (1, 17), (2, 16), (2, 17)}  # (station, column) of quads left open
    for s in range(len(rings) - 1):
        for c in range(20):
            if (s, c) in hole_quads:
                continue
            r0, r1 = rings[s], rings[s + 1]
            mb.quad(r0[c], r0[(c + 1) % 20], r1[(c + 1) % 20], r1[c])
    hole = [stations[1][16], stations[1][17], stations[1][18], stations[2][18]]
    hole += [stations[3][18], stations[3][17], stations[3][16], stations[2][16]]
    unused = {stations[2][17]}

    # Wrist cap: a middle row of vertices between the top and bottom rows.
    ring0 = stations[0]
    top = [ring0[i] for i in range(8)]
    bottom = [ring0[17 - i] for i in range(8)]
    mid = [
        mb.add(0.5 * (mb.verts[t] + mb.verts[b]) + [0.006, 0.0, 0.0])
        for t, b in zip(top, bottom, strict=True)
    ]
    for i in range(7):
        mb.quad(top[i + 1], top[i], mid[i], mid[i + 1])
        mb.quad(mid[i + 1], mid[i], bottom[i], bottom[i + 1])
    mb.tri(ring0[0], ring0[19], mid[0])
    mb.tri(ring0[19], ring0[18], mid[0])
    mb.tri(ring0[18], ring0[17], mid[0])
    mb.tri(ring0[7], ring0[8], mid[7])
    mb.tri(ring0[8], ring0[9], mid[7])
    mb.tri(ring0[9], ring0[10], mid[7])

    # Thumb tube from the hole: match the hole loop to the first thumb ring.
    thumb = fingers["thumb"]
    first = _finger_ring(thumb, *_THUMB_RINGS[0], scale=1.0)
    hole_pos = np.array([mb.verts[h] for h in hole])
    best = None
    for flip in (False, True):
        loop = hole[::-1] if flip else hole
        lp = hole_pos[::-1] if flip else hole_pos
        for shift in range(_RING):
            cost = np.linalg.norm(np.roll(lp, -shift, axis=0) - first, axis=1).sum()
            if best is None or cost < best[0]:
                best = (cost, list(np.roll(loop, -shift)))
    prev = best[1]
    for bone, frac in _THUMB_RINGS:
        ring = [mb.add(p) for p in _finger_ring(thumb, bone, frac)]
        for k in range(_RING):
            mb.quad(prev[k], prev[(k + 1) % _RING], ring[(k + 1) % _RING], ring[k])
        prev = ring
    tips["thumb"] = mb.add(thumb.points[3])
    for k in range(_RING):
        mb.tri(prev[k], prev[(k + 1) % _RING], tips["thumb"])

    verts = np.array(mb.verts)
    faces = np.array(mb.faces, dtype=np.int64)
    # Drop the vertex inside the thumb hole and reindex.
    keep = np.ones(len(verts), dtype=bool)
    keep[list(unused)] = False
    new_index = np.cumsum(keep) - 1
    faces = new_index[faces]
    tips = {k: int(new_index[v]) for k, v in tips.items()}
    return verts[keep], _orient_outward(verts[keep], faces), tips


def _orient_outward(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Make the winding of a closed manifold mesh consistent and outward (positive volume)."""
    faces = faces.copy()
    edge_faces: dict[tuple[int, int], list[int]] = {}
    for fi, tri in enumerate(faces):
        for k in range(3):
            a, b = int(tri[k]), int(tri[(k + 1) % 3])
            edge_faces.setdefault((min(a, b), max(a, b)), []).append(fi)
    bad = [e for e, fs in edge_faces.items() if len(fs) != 2]
    if bad:
        raise RuntimeError(
            f"synthetic hand control mesh is not closed/manifold at {len(bad)} edges, e.g. {bad[:3]}"
        )
    done = np.zeros(len(faces), dtype=bool)
    done[0] = True
    stack = [0]
    while stack:
        fi = stack.pop()
        tri = faces[fi]
        for k in range(3):
            a, b = int(tri[k]), int(tri[(k + 1) % 3])
            for fj in edge_faces[(min(a, b), max(a, b))]:
                if fj == fi or done[fj]:
                    continue
                other = faces[fj]
                # Consistent orientation: the neighbour traverses the shared edge as b -> a.
                same_dir = any(int(other[m]) == a and int(other[(m + 1) % 3]) == b for m in range(3))
                if same_dir:
                    faces[fj] = other[::-1]
                done[fj] = True
                stack.append(fj)
    if not done.all():
        raise RuntimeError("synthetic hand control mesh has more than one component")
    if _signed_volume(verts, faces) < 0:
        faces = faces[:, ::-1]
    return np.ascontiguousarray(faces)


def _signed_volume(verts: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = (verts[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def _loop_subdivide(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One step of Loop subdivision of a closed mesh; original vertices keep their indices."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), axis=1)
    uniq, inverse = np.unique(edges, axis=0, return_inverse=True)
    inverse = inverse.reshape(3, -1).T  # (F,3): edge id of (v0v1, v1v2, v2v0)
    nv = len(verts)
    # Edge points: 3/8 of the edge ends + 1/8 of the two opposite vertices.
    opposite = np.zeros((len(uniq), 3))
    for k, opp in ((0, 2), (1, 0), (2, 1)):
        np.add.at(opposite, inverse[:, k], verts[faces[:, opp]])
    edge_pts = 0.375 * (verts[uniq[:, 0]] + verts[uniq[:, 1]]) + 0.125 * opposite
    # Vertex points: Loop's beta weights over the one-ring.
    adj = sp.coo_matrix(
        (np.ones(2 * len(uniq)), (np.r_[uniq[:, 0], uniq[:, 1]], np.r_[uniq[:, 1], uniq[:, 0]]))
    )
    adj = adj.tocsr()
    n = np.asarray(adj.sum(1)).ravel()
    beta = (0.625 - (0.375 + 0.25 * np.cos(2 * np.pi / n)) ** 2) / n
    new_verts = (1 - n * beta)[:, None] * verts + beta[:, None] * (adj @ verts)
    e = inverse + nv
    v0, v1, v2 = faces.T
    new_faces = np.concatenate(
        [
            np.stack([v0, e[:, 0], e[:, 2]], 1),
            np.stack([v1, e[:, 1], e[:, 0]], 1),
            np.stack([v2, e[:, 2], e[:, 1]], 1),
            np.stack([e[:, 0], e[:, 1], e[:, 2]], 1),
        ]
    )
    return np.concatenate([new_verts, edge_pts]), new_faces


def _vertex_adjacency(faces: np.ndarray, nv: int) -> sp.csr_matrix:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(nv, nv)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    return adj


def _fit_to_sdf(verts: np.ndarray, faces: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Pull vertices onto the SDF zero set, relaxing them tangentially for even spacing."""
    adj = _vertex_adjacency(faces, len(verts))
    deg = np.asarray(adj.sum(1)).ravel()
    v = verts.copy()
    for it in range(iterations):
        for _ in range(2):
            v = v - _hand_sdf(v)[:, None] * _sdf_gradient(v)
        if it == iterations - 1:
            break
        n = _sdf_gradient(v)
        lap = (adj @ v) / deg[:, None] - v
        lap -= (lap * n).sum(1, keepdims=True) * n
        v = v + 0.5 * lap
    return v


def _rest_surface() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rest template (V,3), faces (F,3) and the fingertip vertex of each finger (the tube caps' centres)."""
    verts, faces, tips = _control_mesh()  # Loop keeps control vertices at their indices
    verts, faces = _loop_subdivide(verts, faces)
    verts = _fit_to_sdf(verts, faces)
    return verts, faces, tips


# ----------------------------------------------------------------------------
# Skinning weights and joint regressor
# ----------------------------------------------------------------------------

#: Full width (metres) of the weight blend across each joint: root, 2nd, 3rd joint.
_BLEND_WIDTH = {"long": (0.016, 0.011, 0.009), "thumb": (0.030, 0.013, 0.010)}


def _smoothstep(x: np.ndarray) -> np.ndarray:
    """0 below -0.5, 1 above 0.5, C1-smooth in between."""
    t = np.clip(x + 0.5, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _chain_coords(p: np.ndarray, finger: _Finger) -> tuple[np.ndarray, np.ndarray]:
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


def _chain_weights(s: np.ndarray, finger: _Finger, widths: tuple[float, float, float]) -> np.ndarray:
    """(N,4) weights of (palm, bone 1, bone 2, bone 3) from the arc length s."""
    cum = np.concatenate([[0.0], np.cumsum(finger.lengths)])
    alpha = [_smoothstep((s - cum[i]) / widths[i]) for i in range(3)]
    return np.stack([1 - alpha[0], alpha[0] - alpha[1], alpha[1] - alpha[2], alpha[2]], axis=1)


def _skinning_weights(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,16) weights: each vertex follows its finger chain, blended smoothly across joints."""
    fingers = _skeleton()
    comps = _component_sdfs(verts)
    names = ["palm", *_FINGERS]
    d = np.stack([comps[n] for n in names], axis=1)
    own = np.exp(-(d - d.min(1, keepdims=True)) / 0.0015)
    own /= own.sum(1, keepdims=True)

    nv = len(verts)
    w = np.zeros((nv, 16))
    # Palm-owned vertices follow the chain of the finger whose axis (extended
    # into the palm) is nearest, so the knuckles and thenar bend with it.
    axis_dist = []
    chains = {}
    for name in _FINGERS:
        f = fingers[name]
        s, dist = _chain_coords(verts, f)
        axis_dist.append(dist)  # before the root: distance to the root bone's line, extended
        kind = "thumb" if name == "thumb" else "long"
        chains[name] = _chain_weights(s, f, _BLEND_WIDTH[kind])
    axis_dist = np.stack(axis_dist, axis=1)
    near = np.exp(-(axis_dist - axis_dist.min(1, keepdims=True)) / 0.003)
    near /= near.sum(1, keepdims=True)
    for i, name in enumerate(_FINGERS):
        j1, j2, j3 = _FINGER_JOINTS[name]
        cw = chains[name]
        for weight in (own[:, 0] * near[:, i], own[:, 1 + i]):
            w[:, 0] += weight * cw[:, 0]
            w[:, j1] += weight * cw[:, 1]
            w[:, j2] += weight * cw[:, 2]
            w[:, j3] += weight * cw[:, 3]
    # Diffuse a little over the surface to remove any seams of the ownership switch.
    adj = _vertex_adjacency(faces, nv)
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


def _joint_regressor(verts: np.ndarray) -> np.ndarray:
    """(16,V) convex regressor rows; each joint centre is a weighted mean of a ring of nearby vertices."""
    fingers = _skeleton()
    joints = _design_joints()
    reg = np.zeros((16, len(verts)))
    # Wrist: the cross-section ring around x = 0.
    for band in (0.003, 0.005, 0.008):
        idx = np.flatnonzero(np.abs(verts[:, 0] - joints[0, 0]) < band)
        try:
            reg[0, idx] = _convex_weights(verts[idx], joints[0])
            break
        except RuntimeError:
            continue
    for name in _FINGERS:
        f = fingers[name]
        s, dist = _chain_coords(verts, f)
        cum = np.concatenate([[0.0], np.cumsum(f.lengths)])
        for level, j in enumerate(_FINGER_JOINTS[name]):
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
    tip_of = {n: np.asarray(tips[i], dtype=np.float64) for i, n in enumerate(_TIP_ORDER)}
    back = _unit(np.cross(rest_joints[4] - rest_joints[0], rest_joints[1] - rest_joints[0]))
    frames = np.zeros((15, 3, 3))
    for name, ids in _FINGER_JOINTS.items():
        chain = [*rest_joints[list(ids)], tip_of[name]]
        for level, j in enumerate(ids):
            d = _unit(chain[level + 1] - chain[level])
            if name == "thumb":
                # The thumb is pronated: its nail faces radially and up.
                radial = _unit(np.cross(back, d))
                dorsal = 0.55 * back + 0.85 * radial
            else:
                dorsal = back
            palmar = -_unit(dorsal - np.dot(dorsal, d) * d)
            flex = _unit(np.cross(d, palmar))
            frames[j - 1] = np.stack([flex, np.cross(d, flex), d], axis=1)
    return frames


@functools.lru_cache(maxsize=1)
def _default_frames() -> np.ndarray:
    tips = np.array([_skeleton()[n].points[3] for n in _TIP_ORDER])
    return joint_frames(_design_joints(), tips)


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
    world = _local_rotations(angles_deg, frames)
    return Rotation.from_matrix(world.reshape(-1, 3, 3)).as_rotvec().reshape(-1, 45)


def _local_rotations(angles_deg: np.ndarray, frames: np.ndarray | None = None) -> np.ndarray:
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
    local = _local_rotations(angles)
    n = len(local)
    joints = _design_joints()
    rot = np.zeros((n, 16, 3, 3))
    pos = np.zeros((n, 16, 3))
    rot[:, 0], pos[:, 0] = np.eye(3), joints[0]
    for j in range(1, 16):
        p = _PARENTS[j]
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
    joints = _design_joints()
    out = {}
    for name in _FINGERS:
        f = _skeleton()[name]
        j1, j2, j3 = _FINGER_JOINTS[name]
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
    for name in _FINGERS:
        pts, rad = caps[name]
        seg = (1, 2)  # middle and distal phalanx (the proximal one starts at the palm)
        q = np.stack([pts[:, i] + (pts[:, i + 1] - pts[:, i]) * t for i in seg for t in fr], axis=1)
        radii = np.array([rad[i] + (rad[i + 1] - rad[i]) * t for i in seg for t in fr])
        # The thumb rests against its own thenar pad: test it against the slab only.
        sdf = _palm_sdf(q.reshape(-1, 3)) if name == "thumb" else _palm_region_sdf(q.reshape(-1, 3))
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

    for name in _PALM_ORDER:
        out[f"thumb:{name}"] = tube_clearance("thumb", name, (1, 2))
    for a, b in zip(_PALM_ORDER[:-1], _PALM_ORDER[1:], strict=True):
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


# ----------------------------------------------------------------------------
# Shape space and PCA pose space
# ----------------------------------------------------------------------------


def _vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    vn = np.zeros_like(verts)
    for k in range(3):
        np.add.at(vn, faces[:, k], fn)
    return _unit(vn)


def _shape_blend_shapes(
    verts: np.ndarray, faces: np.ndarray, weights: np.ndarray, joints: np.ndarray
) -> np.ndarray:
    """(V,3,10) shape directions; one unit of beta is about one population standard deviation.

    Each direction scales parts of the skeleton (palm about the wrist, bones
    along or across their axis); children follow their parent's joint, and
    vertices blend the parts' displacements with the skinning weights, so
    the joints regressed from the shaped mesh move consistently.
    """
    fingers = _skeleton()
    bone_dir = np.zeros((16, 3))
    for name, ids in _FINGER_JOINTS.items():
        bone_dir[list(ids)] = fingers[name].dirs
    ex, ey, ez = np.eye(3)
    outer = lambda u: np.outer(u, u)  # noqa: E731

    def along(names: tuple[str, ...], s: float) -> dict[int, np.ndarray]:
        return {j: s * outer(bone_dir[j]) for n in names for j in _FINGER_JOINTS[n]}

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
            p = _PARENTS[j]
            shift[j] = shift[p] + scale[p] @ (joints[j] - joints[p])
        disp = np.zeros_like(verts)
        for j in range(16):
            disp += weights[:, j : j + 1] * ((verts - joints[j]) @ scale[j].T + shift[j])
        dirs[:, :, b] = disp
    dirs[:, :, 9] = 0.0005 * _vertex_normals(verts, faces)  # 9 fleshiness (soft tissue thickness)
    return dirs


def _pca_pose_basis(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """hands_mean (45,) and hands_components (45,45) (orthonormal rows, by decreasing variance)."""
    poses = sample_hand_poses(num_samples, seed)
    mean = poses.mean(0)
    _, _, vt = np.linalg.svd(poses - mean, full_matrices=False)
    return mean, vt


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def build_synthetic_hand_model(seed: int = 0, num_pca_samples: int = 6000) -> ManoModel:
    """Build the synthetic right hand as a :class:`halo.hands.mano.ManoModel`.

    Args:
        seed: seed of the pose samples behind the PCA pose space (the mesh,
            weights, regressor and shape space do not depend on it).
        num_pca_samples: poses drawn from :func:`sample_hand_poses` for the PCA.

    Returns:
        A MANO-format model: ~1,580 vertices, ~3,150 faces, closed and
        watertight (sealed wrist), 16 joints, 10 betas, zero pose blend shapes.
    """
    verts, faces, tip_ids = _rest_surface()
    weights = _skinning_weights(verts, faces)
    regressor = _joint_regressor(verts)
    joints = regressor @ verts
    tips = np.array([tip_ids[n] for n in _TIP_ORDER])
    mean, components = _pca_pose_basis(seed, num_pca_samples)
    kintree = np.array([[2**32 - 1, *_PARENTS[1:]], list(range(16))], dtype=np.int64)
    return ManoModel(
        v_template=verts,
        f=faces,
        weights=weights,
        posedirs=np.zeros((len(verts), 3, 135)),
        shapedirs=_shape_blend_shapes(verts, faces, weights, joints),
        J_regressor=regressor,
        kintree_table=kintree,
        hands_components=components,
        hands_mean=mean,
        tip_vertex_ids=tips,
        side="right",
        source="<synthetic hand>",
    )


def save_synthetic_hand_model(model: ManoModel, path: str | Path) -> Path:
    """Write the model as ``.npz`` (dense arrays) or ``.pkl`` (official MANO pickle layout), by suffix."""
    path = Path(path)
    if path.suffix == ".npz":
        return save_mano_model_npz(model, path)
    if path.suffix == ".pkl":
        return save_mano_model_pkl(model, path)
    raise ValueError(f"save_synthetic_hand_model: {path}: use a .npz or .pkl suffix")


def load_synthetic_hand_model(path: str | Path) -> ManoModel:
    """Read a model written by :func:`save_synthetic_hand_model` (either format)."""
    return load_mano_model(path)


@functools.lru_cache(maxsize=4)
def _cached_model(seed: int) -> ManoModel:
    model = build_synthetic_hand_model(seed)
    for value in model.arrays().values():
        value.setflags(write=False)  # shared by every caller in this process
    return model


def get_synthetic_hand_model(cache_path: str | Path | None = None, seed: int = 0) -> ManoModel:
    """The synthetic hand, built once per process and, with ``cache_path``, once per machine.

    The in-process model is shared, so its arrays are read-only (copy to edit).

    Args:
        cache_path: optional ``.npz`` file; read when it exists, else written
            after building.
        seed: PCA seed (see :func:`build_synthetic_hand_model`).
    """
    if cache_path is not None and Path(cache_path).is_file():
        return load_mano_model(cache_path)
    model = _cached_model(seed)
    if cache_path is not None:
        save_mano_model_npz(model, cache_path)
    return model
