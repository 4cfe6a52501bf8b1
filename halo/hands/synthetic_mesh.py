"""The synthetic hand's surface: a hand-topology control mesh, one Loop subdivision, fitted to the SDF.

The control mesh is a palm tube of 20-vertex rings closed at the wrist, four finger tubes
branching from it, the thumb tube growing out of its palmar-radial side, 8-vertex rings
denser near joints.  After one Loop subdivision the vertices are pulled onto the zero
set of :func:`halo.hands.synthetic_design.hand_sdf` with tangential relaxation.  The
result is one closed (sealed wrist), watertight, manifold component whose edge loops run
around the fingers, which keeps linear blend skinning clean at bent joints.

The topology is fixed by this code (no marching cubes, no library remesher), so the same
mesh is produced on every machine.  The Loop step is our own: trimesh's
``remesh.subdivide_loop`` numbers the new edge vertices differently (the model's arrays,
and so its cache, would change).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import trimesh

from halo.hands.synthetic_design import (
    PALM_ORDER,
    PALM_POLYGON,
    PALM_ROUND,
    Finger,
    hand_sdf,
    palm_arch,
    palm_half_core,
    polygon_sdf,
    rest_skeleton,
    sdf_gradient,
)

__all__ = ["rest_surface", "vertex_adjacency"]

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


def _finger_ring(finger: Finger, bone: int, frac: float, scale: float = 1.0) -> np.ndarray:
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
    xq = min(x, PALM_POLYGON[:, 0].max() - 1e-4)  # the wrist cap station lies on the rounded rim
    inside = polygon_sdf(np.stack([np.full_like(zs, xq), zs], 1), PALM_POLYGON) < 0
    zmin, zmax = zs[inside].min() - PALM_ROUND * 0.9, zs[inside].max() + PALM_ROUND * 0.9
    half = palm_half_core(np.array([x]))[0] + PALM_ROUND
    top_z = np.linspace(zmax - 0.006, zmin + 0.006, 8)
    ring = [[x, palm_arch(z) + half * 0.95, z] for z in top_z]
    ring += [[x, palm_arch(zmin) + half * 0.35, zmin], [x, palm_arch(zmin) - half * 0.35, zmin]]
    ring += [[x, palm_arch(z) - half * 0.95, z] for z in top_z[::-1]]
    ring += [[x, palm_arch(zmax) - half * 0.35, zmax], [x, palm_arch(zmax) + half * 0.35, zmax]]
    return np.array(ring)


def _control_mesh() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Closed hand-topology control mesh (V,3), (F,3) and the control vertex of each fingertip."""
    fingers = rest_skeleton()
    mb = _MeshBuilder()
    tips: dict[str, int] = {}

    # Finger base rings (they form the distal palm ring) and finger tubes.
    base: dict[str, list[int]] = {}
    for name in PALM_ORDER:
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
    for a_name, b_name in zip(PALM_ORDER[:-1], PALM_ORDER[1:], strict=True):
        a, b = base[a_name], base[b_name]
        mb.quad(a[7], a[6], b[1], b[0])
        mb.quad(a[6], a[5], b[2], b[1])
        mb.quad(a[5], a[4], b[3], b[2])

    i_, m_, r_, p_ = (base[n] for n in PALM_ORDER)
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
    if trimesh.Trimesh(verts, faces, process=False).volume < 0:
        faces = faces[:, ::-1]
    return np.ascontiguousarray(faces)


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


def vertex_adjacency(faces: np.ndarray, nv: int) -> sp.csr_matrix:
    e = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    adj = sp.coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(nv, nv)).tocsr()
    adj = ((adj + adj.T) > 0).astype(np.float64)
    return adj


def _fit_to_sdf(verts: np.ndarray, faces: np.ndarray, iterations: int = 30) -> np.ndarray:
    """Pull vertices onto the SDF zero set, relaxing them tangentially for even spacing."""
    adj = vertex_adjacency(faces, len(verts))
    deg = np.asarray(adj.sum(1)).ravel()
    v = verts.copy()
    for it in range(iterations):
        for _ in range(2):
            v = v - hand_sdf(v)[:, None] * sdf_gradient(v)
        if it == iterations - 1:
            break
        n = sdf_gradient(v)
        lap = (adj @ v) / deg[:, None] - v
        lap -= (lap * n).sum(1, keepdims=True) * n
        v = v + 0.5 * lap
    return v


def rest_surface() -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """Rest template (V,3), faces (F,3) and the fingertip vertex of each finger (the tube caps' centres)."""
    verts, faces, tips = _control_mesh()  # Loop keeps control vertices at their indices
    verts, faces = _loop_subdivide(verts, faces)
    verts = _fit_to_sdf(verts, faces)
    return verts, faces, tips
