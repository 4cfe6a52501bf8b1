"""Grasp metrics against hand-computed geometry: box / sphere-lens volumes, known insertions, clusters."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial.transform import Rotation

from halo.geometry.inside import MeshNotWatertightError
from halo.grasp.metrics import (
    ClusterStats,
    GraspMetrics,
    OptionalDependencyError,
    cluster_analysis,
    contact_ratio,
    grasp_metrics,
    intersection_volume_cm3,
    prepare_hand_mesh,
    simulation_displacement_m,
    summarize_grasp_metrics,
)
from halo.hands.synthetic_hand import sample_hand_poses


def _box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(
        extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2)
    )


@pytest.fixture(scope="module")
def rest_hand(layer) -> trimesh.Trimesh:
    """The synthetic hand in its rest pose: fingers along -x, palm facing -y (metres)."""
    with torch.no_grad():
        out = layer()
    return trimesh.Trimesh(out.vertices[0].numpy(), layer.faces.numpy(), process=False)


def _slab_under(hand: trimesh.Trimesh, top_y: float) -> trimesh.Trimesh:
    """A wide box whose top face is the plane y = top_y, covering the hand's whole x/z footprint."""
    (x0, _, z0), (x1, _, z1) = hand.bounds
    return _box([x0 - 0.05, top_y - 0.1, z0 - 0.05], [x1 + 0.05, top_y, z1 + 0.05])


# ----------------------------------------------------------------------------- volume


def test_box_intersection_volume_matches_the_overlap_box():
    a = _box([-0.02, -0.025, -0.015], [0.02, 0.025, 0.015])
    b = _box([0.005, -0.004, -0.022], [0.035, 0.026, 0.008])
    expected = 1.5 * 2.9 * 2.3  # overlap 1.5 x 2.9 x 2.3 cm = 10.005 cm^3
    vol = intersection_volume_cm3(a, b, pitch_m=0.0005)
    assert vol == pytest.approx(expected, rel=0.02)
    assert intersection_volume_cm3(b, a, pitch_m=0.0005) == pytest.approx(vol)
    assert intersection_volume_cm3(a, b.copy().apply_translation([0.1, 0, 0])) == 0.0


def test_block_culling_and_chunking_give_the_same_volume(monkeypatch):
    import halo.grasp.metrics as gm

    a = _box([-0.02, -0.025, -0.015], [0.02, 0.025, 0.015])
    b = trimesh.creation.icosphere(subdivisions=3, radius=0.02).apply_translation([0.01, 0.005, 0])
    pitch = 0.0007  # 140k grid points: above the culling threshold
    cell = pitch**3 * 1e6
    direct = intersection_volume_cm3(a, b, pitch, block_culling=False)
    culled = intersection_volume_cm3(a, b, pitch)
    # Same cells up to the single-ray inside test's rare parity slip at grid-aligned points.
    assert abs(culled - direct) <= 2 * cell and direct > 20
    monkeypatch.setattr(gm, "_GRID_CHUNK", 5000)  # several x-slabs / mixed blocks per chunk
    assert intersection_volume_cm3(a, b, pitch, block_culling=False) == direct
    assert intersection_volume_cm3(a, b, pitch) == culled
    monkeypatch.setattr(gm, "_GRID_CHUNK", 700)  # smaller than one y-z layer: flat index chunks
    assert intersection_volume_cm3(a, b, pitch, block_culling=False) == direct
    with pytest.raises(gm.GridTooLargeError, match="mm or cm"):
        intersection_volume_cm3(a, b, max_grid_points=1000)


def test_sphere_lens_volume_matches_the_formula():
    r1, r2, d = 0.03, 0.025, 0.035
    s1 = trimesh.creation.icosphere(subdivisions=5, radius=r1)
    s2 = trimesh.creation.icosphere(subdivisions=5, radius=r2).apply_translation([d, 0, 0])
    # Volume of the lens where two spheres overlap (metres^3 -> cm^3).
    lens = math.pi * (r1 + r2 - d) ** 2 * (d**2 + 2 * d * (r1 + r2) - 3 * (r1 - r2) ** 2) / (12 * d) * 1e6
    # By hand in cm: pi * 2^2 * (3.5^2 + 2*3.5*5.5 - 3*0.5^2) / (12*3.5) = pi * 4 * 50 / 42 = 100 pi / 21.
    assert lens == pytest.approx(100 * math.pi / 21)
    assert intersection_volume_cm3(s1, s2, pitch_m=0.0005) == pytest.approx(lens, rel=0.02)


def test_open_meshes_are_refused_by_name():
    closed = _box([0, 0, 0], [0.02, 0.02, 0.02])
    open_box = trimesh.Trimesh(closed.vertices, closed.faces[:-1], process=False)
    with pytest.raises(MeshNotWatertightError, match="lid"):
        intersection_volume_cm3(closed, open_box, names=("cup", "lid"))


# ----------------------------------------------------------------------------- grasp metrics


def test_hand_away_from_the_object_has_no_penetration(rest_hand):
    slab = _slab_under(rest_hand, rest_hand.bounds[0, 1] - 0.02)  # 2 cm below the lowest hand vertex
    m = grasp_metrics(rest_hand, slab)
    assert m.volume_cm3 == 0.0 and m.depth_cm == 0.0 and m.contact is False
    assert m.min_distance_cm == pytest.approx(2.0, abs=1e-4)  # cm, not metres, on this path too
    assert grasp_metrics(rest_hand, slab, contact_tol_m=0.025).contact is True


def test_hand_pressed_into_a_box_has_the_insertion_as_depth(rest_hand):
    top = rest_hand.bounds[0, 1] + 0.005  # the lowest hand vertex is 5 mm deep
    slab = _slab_under(rest_hand, top)
    m = grasp_metrics(rest_hand, slab, pitch_m=0.0005, contact_tol_m=0.0)
    assert m.depth_cm == pytest.approx(0.5, abs=1e-4)
    assert m.min_distance_cm == pytest.approx(-0.5, abs=1e-4)
    assert m.contact is True
    # The volume is the part of the hand below the plane y = top.  Divergence theorem with the field
    # (0, y - top, 0): it vanishes on the cut plane, so only the clipped hand surface contributes,
    # sum over its triangles of (mean y - top) * (area-weighted outward normal)_y.
    v, f = trimesh.intersections.slice_faces_plane(
        rest_hand.vertices, rest_hand.faces, [0, -1, 0], [0, top, 0]
    )[:2]
    tri = v[f]
    normals_y = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])[:, 1] / 2
    below_m3 = float(((tri[:, :, 1].mean(1) - top) * normals_y).sum())
    assert rest_hand.volume > 0 and below_m3 > 0.2e-6
    assert m.volume_cm3 == pytest.approx(below_m3 * 1e6, rel=0.02)


def test_open_hand_is_sealed_first(rest_hand):
    slab = _slab_under(rest_hand, rest_hand.bounds[0, 1] + 0.005)
    # Cut a hole at the vertex farthest from the slab (the back of the hand): one boundary loop.
    top_vertex = int(np.argmax(rest_hand.vertices[:, 1]))
    keep = ~np.any(rest_hand.faces == top_vertex, axis=1)
    open_hand = trimesh.Trimesh(rest_hand.vertices, rest_hand.faces[keep], process=False)
    assert not open_hand.is_watertight
    assert prepare_hand_mesh(open_hand).is_watertight
    closed, opened = grasp_metrics(rest_hand, slab), grasp_metrics(open_hand, slab)
    assert opened.depth_cm == pytest.approx(closed.depth_cm)
    assert opened.volume_cm3 == pytest.approx(closed.volume_cm3)
    # Two holes are not a MANO wrist: refused with the hand's name.
    far_vertex = int(np.argmin(rest_hand.vertices[:, 0]))
    keep &= ~np.any(rest_hand.faces == far_vertex, axis=1)
    two_holes = trimesh.Trimesh(rest_hand.vertices, rest_hand.faces[keep], process=False)
    with pytest.raises(MeshNotWatertightError, match="my_hand.ply"):
        grasp_metrics(two_holes, slab, hand_name="my_hand.ply")


def test_open_object_needs_the_convex_hull_option():
    hand = _box([0.01, -0.01, -0.01], [0.05, 0.01, 0.01])
    cube = _box([-0.02, -0.02, -0.02], [0.02, 0.02, 0.02])
    open_cube = trimesh.Trimesh(cube.vertices, cube.faces[:-2], process=False)
    with pytest.raises(MeshNotWatertightError, match="mug.obj"):
        grasp_metrics(hand, open_cube, object_name="mug.obj")
    m = grasp_metrics(hand, open_cube, object_convex_hull=True)
    # Overlap 1 x 2 x 2 cm; the hand box's inner corners sit 1 cm deep.
    assert m.volume_cm3 == pytest.approx(4.0, rel=1e-6)
    assert m.depth_cm == pytest.approx(1.0, abs=1e-5)


def test_contact_ratio_and_summary():
    ms = [
        GraspMetrics(volume_cm3=2.0, depth_cm=0.5, min_distance_cm=-0.5, contact=True),
        GraspMetrics(volume_cm3=0.0, depth_cm=0.0, min_distance_cm=0.3, contact=True),
        GraspMetrics(volume_cm3=0.0, depth_cm=0.0, min_distance_cm=3.0, contact=False),
        GraspMetrics(volume_cm3=6.0, depth_cm=1.5, min_distance_cm=-1.5, contact=True),
    ]
    assert contact_ratio(ms) == 0.75
    s = summarize_grasp_metrics(ms)
    assert s["count"] == 4 and s["n_contact"] == 3 and s["contact_ratio"] == 0.75
    assert s["mean_volume_cm3"] == pytest.approx(2.0)
    assert s["mean_depth_cm"] == pytest.approx(0.5)
    assert s["mean_min_distance_cm"] == pytest.approx(0.325)
    assert s["max_volume_cm3"] == 6.0 and s["max_depth_cm"] == 1.5
    with pytest.raises(ValueError, match="empty"):
        contact_ratio([])


# ----------------------------------------------------------------------------- diversity


def _posed_keypoints(layer, poses: np.ndarray, copies: int, seed: int) -> np.ndarray:
    """(P*copies,21,3) keypoints: every pose under ``copies`` random rotations + translations."""
    with torch.no_grad():
        kp = layer(pose=torch.from_numpy(poses)).keypoints.numpy()
    rots = Rotation.random(len(kp) * copies, random_state=seed).as_matrix().reshape(len(kp), copies, 3, 3)
    shifts = np.random.default_rng(seed).uniform(-0.3, 0.3, (len(kp), copies, 1, 3))
    return (np.einsum("pcij,pkj->pcki", rots, kp) + shifts).reshape(-1, 21, 3)


def test_twenty_separated_clusters_have_entropy_ln20():
    rng = np.random.default_rng(1)
    centres = rng.normal(0, 0.1, (20, 1, 63))
    features = (centres + rng.normal(0, 1e-4, (20, 10, 63))).reshape(200, 63)  # 10 hands per cluster
    stats = cluster_analysis(features, k=20, canonicalize=False, init="k-means++")
    assert isinstance(stats, ClusterStats) and stats.k == 20 and stats.n_samples == 200
    assert stats.entropy == pytest.approx(math.log(20), abs=1e-9)
    assert sorted(stats.counts) == [10] * 20
    # 0.01 cm noise per coordinate: distance to the centre ~ 0.01 * sqrt(63 * 9/10) cm.
    assert stats.cluster_size_cm == pytest.approx(0.01 * math.sqrt(63 * 0.9), rel=0.1)
    # HALO's scipy kmeans (random initial centres) may merge clusters: never more than ln k.
    halo = cluster_analysis(features, k=20, canonicalize=False)
    assert 2.5 < halo.entropy <= math.log(20) + 1e-9
    assert cluster_analysis(features, k=20, canonicalize=False).entropy == halo.entropy  # seeded


def test_canonicalization_removes_the_global_pose(layer):
    poses = sample_hand_poses(20, seed=4)
    kp = _posed_keypoints(layer, poses, copies=3, seed=0)  # 20 articulations x 3 global poses
    stats = cluster_analysis(kp, k=20, init="k-means++")
    assert stats.entropy == pytest.approx(math.log(20), abs=1e-9)
    assert sorted(stats.counts) == [3] * 20 and stats.cluster_size_cm < 1e-6


def test_one_articulation_in_many_global_poses_has_entropy_zero(layer):
    kp = _posed_keypoints(layer, sample_hand_poses(1, seed=2), copies=40, seed=1)
    for init in ("random", "k-means++"):
        stats = cluster_analysis(kp, k=20, init=init)
        assert stats.entropy == pytest.approx(0.0, abs=1e-12)
        assert sorted(stats.counts)[-1] == 40 and stats.cluster_size_cm < 1e-6


def test_cluster_analysis_needs_k_hands():
    with pytest.raises(ValueError, match="at least k=20 hands, got 5"):
        cluster_analysis(np.zeros((5, 21, 3)))
    with pytest.raises(ValueError, match=r"\(N, 21, 3\)"):
        cluster_analysis(np.zeros((30, 20, 3)))


# ----------------------------------------------------------------------------- simulation


@pytest.fixture(scope="module")
def palm_up(layer) -> tuple[trimesh.Trimesh, np.ndarray]:
    """The rest hand turned palm up (-90 deg about x: palm normal -y -> +z) and its palm centre on the skin."""
    with torch.no_grad():
        out = layer(global_orient=torch.tensor([[-math.pi / 2, 0.0, 0.0]], dtype=torch.float64))
    hand = trimesh.Trimesh(out.vertices[0].numpy(), layer.faces.numpy(), process=False)
    palm = out.keypoints[0, [0, 5, 9, 13, 17]].mean(0).numpy()
    hits, _, _ = hand.ray.intersects_location([[palm[0], palm[1], 0.5]], [[0.0, 0.0, -1.0]])
    return hand, np.array([palm[0], palm[1], hits[:, 2].max()])


def test_simulation_object_rests_on_the_palm_but_falls_without_hand(palm_up):
    pytest.importorskip("pybullet")
    hand, skin = palm_up
    cube = _box(skin + [-0.015, -0.015, 0.002], skin + [0.015, 0.015, 0.032])  # 2 mm above the palm
    held = simulation_displacement_m(hand, cube)
    far_hand = hand.copy().apply_translation([0.0, 0.0, -1.0])
    fallen = simulation_displacement_m(far_hand, cube)
    # Free fall for 35 steps of 1/240 s: g t^2 / 2 = 0.104 m (semi-implicit Euler: 0.107 m).
    assert fallen == pytest.approx(0.5 * 9.8 * (35 / 240) ** 2, rel=0.05)
    assert held < 0.01


def test_simulation_without_pybullet_says_how_to_install(monkeypatch, palm_up):
    monkeypatch.setitem(sys.modules, "pybullet", None)  # import pybullet -> ImportError
    hand, _ = palm_up
    with pytest.raises(OptionalDependencyError, match="pip install pybullet"):
        simulation_displacement_m(hand, _box([0, 0, 0], [0.01, 0.01, 0.01]))
