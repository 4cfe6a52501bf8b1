"""Tests of halo.geometry.sealing: boundary loops and fan sealing."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from halo.geometry.sealing import boundary_loops, seal_mesh


def test_seal_mesh_closes_one_wrist_hole(model):
    verts, faces = model.v_template, model.f
    # Open a hole: drop the faces around one vertex (a disc), as MANO's wrist opening.
    centre = int(np.argmin(verts[:, 0]))  # any vertex works; take an extreme one
    keep = ~np.isin(faces, [centre]).any(axis=1)
    loops = boundary_loops(faces[keep])
    assert len(loops) == 1 and len(loops[0]) >= 3
    v2, f2, new = seal_mesh(verts, faces[keep])
    mesh = trimesh.Trimesh(v2, f2, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(new) == 1 and np.allclose(v2[new[0]], verts[loops[0]].mean(0))
    # Two holes are not a MANO-like hand: refused, naming the mesh.
    far = int(np.argmax(verts[:, 0]))
    keep2 = keep & ~np.isin(faces, [far]).any(axis=1)
    with pytest.raises(ValueError, match="bad.ply: 2 holes"):
        seal_mesh(verts, faces[keep2], name="bad.ply")


def test_boundary_loop_follows_face_direction_and_fan_reverses_it():
    # A unit square of two triangles, both counter-clockwise seen from +z: the boundary
    # runs 0->1->2->3 as the faces use it, and sealing adds one centre vertex whose fan
    # faces run each edge the other way (b->a), so the closed result is consistently wound.
    verts = np.array([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    (loop,) = boundary_loops(faces)
    start = int(np.flatnonzero(loop == 0)[0])
    assert np.roll(loop, -start).tolist() == [0, 1, 2, 3]
    v2, f2, new = seal_mesh(verts, faces)
    assert new.tolist() == [4] and np.allclose(v2[4], [0.5, 0.5, 0.0])
    fan = {tuple(f) for f in f2[2:].tolist()}
    assert fan == {(1, 0, 4), (2, 1, 4), (3, 2, 4), (0, 3, 4)}
    assert trimesh.Trimesh(v2, f2, process=False).is_winding_consistent


def test_closed_mesh_is_returned_unchanged_and_open_boundary_is_refused():
    box = trimesh.creation.box()
    v2, f2, new = seal_mesh(box.vertices, box.faces)
    assert len(new) == 0 and np.array_equal(f2, box.faces)
    # Two triangles sharing one vertex only: the boundary is not a simple loop there.
    bowtie = np.array([[0, 1, 2], [0, 3, 4]])
    with pytest.raises(ValueError, match="not a simple loop at vertex 0"):
        boundary_loops(bowtie)
