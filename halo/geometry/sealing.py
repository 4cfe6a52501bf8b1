"""Sealing open meshes: find the boundary loops of a triangle mesh and close each with a fan.

MANO hands are open at the wrist; HALO's occupancy, inside tests and grasp metrics need
closed meshes, so the wrist hole is closed by a fan around the loop's centroid (as the
original HALO's ``seal``).  The loops are traced here rather than with trimesh's
``outline()``: a fan must reverse the direction in which each boundary edge appears in
its face (to keep the winding consistent), and ``outline()`` neither keeps that
direction nor rejects a non-manifold boundary.
"""

from __future__ import annotations

import numpy as np

__all__ = ["boundary_loops", "seal_mesh"]


def boundary_loops(faces: np.ndarray) -> list[np.ndarray]:
    """Closed boundary loops of a triangle mesh, each as an ordered vertex array.

    Boundary edges are directed as they appear in their (only) face, so a loop
    runs in the direction that the faces closing it must reverse.
    """
    faces = np.asarray(faces, dtype=np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    key = np.sort(edges, axis=1)
    _, inverse, counts = np.unique(key, axis=0, return_inverse=True, return_counts=True)
    boundary = edges[counts[inverse.ravel()] == 1]
    nxt: dict[int, int] = {}
    for a, b in boundary:
        if int(a) in nxt:
            raise ValueError(f"mesh boundary is not a simple loop at vertex {int(a)} (non-manifold)")
        nxt[int(a)] = int(b)
    loops, seen = [], set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [], start
        while v not in seen:
            seen.add(v)
            loop.append(v)
            if v not in nxt:
                raise ValueError(f"mesh boundary is open at vertex {v} (not a closed loop)")
            v = nxt[v]
        loops.append(np.asarray(loop, dtype=np.int64))
    return loops


def seal_mesh(
    vertices: np.ndarray, faces: np.ndarray, *, max_loops: int = 1, name: str = "mesh"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Close every boundary loop with a fan around the loop's centroid.

    Returns ``(vertices, faces, new_vertex_ids)``; a mesh without boundary is
    returned unchanged.  MANO hands have exactly one hole (the 16-vertex wrist
    loop), so more than ``max_loops`` holes means the mesh is not a MANO-like
    hand and is refused rather than patched.
    """
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    loops = boundary_loops(faces)
    if len(loops) > max_loops:
        sizes = sorted(len(lp) for lp in loops)
        raise ValueError(
            f"{name}: {len(loops)} holes (boundary loop sizes {sizes}); expected at most {max_loops}"
        )
    new_v, new_f, new_ids = [vertices], [faces], []
    n = len(vertices)
    for loop in loops:
        c = n + len(new_ids)
        new_ids.append(c)
        new_v.append(vertices[loop].mean(axis=0, keepdims=True))
        # Boundary edge a->b belongs to a face that uses it as a->b; the fan face uses b->a.
        a, b = loop, np.roll(loop, -1)
        new_f.append(np.stack([b, a, np.full_like(a, c)], axis=1))
    return np.concatenate(new_v), np.concatenate(new_f), np.asarray(new_ids, dtype=np.int64)
