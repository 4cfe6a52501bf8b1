"""Tests for ``halo.meshing.isosurface``: multiresolution (MISE-style) vs dense isosurface extraction.

All fields are analytic occupancies ``sigmoid(-sdf / eps)`` (inside-high, iso level 0.5) on the
box [-1, 1]^3 unless stated otherwise; no network is involved.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import trimesh
from pykdtree.kdtree import KDTree
from scipy.special import expit
from skimage.measure import marching_cubes

from halo.meshing import isosurface as mesh_extraction
from halo.meshing.isosurface import ExtractionStats, extract_isosurface, extract_isosurface_dense

Field = Callable[[np.ndarray], np.ndarray]
BOX_LO = (-1.0, -1.0, -1.0)
BOX_HI = (1.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# analytic shapes (signed distances, negative inside) and occupancy fields


def sphere_sdf(center, radius: float) -> Field:
    c = np.asarray(center, dtype=np.float64)
    return lambda p: np.linalg.norm(p - c, axis=1) - radius


def torus_sdf(center, major: float, minor: float) -> Field:
    """Torus around the z axis through ``center``."""
    c = np.asarray(center, dtype=np.float64)

    def sdf(p: np.ndarray) -> np.ndarray:
        q = p - c
        ring = np.hypot(q[:, 0], q[:, 1]) - major
        return np.hypot(ring, q[:, 2]) - minor

    return sdf


def capsule_sdf(a, b, radius: float) -> Field:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    ab = b - a

    def sdf(p: np.ndarray) -> np.ndarray:
        t = np.clip((p - a) @ ab / (ab @ ab), 0.0, 1.0)
        return np.linalg.norm(p - a - t[:, None] * ab, axis=1) - radius

    return sdf


def union_sdf(*sdfs: Field) -> Field:
    return lambda p: np.min([s(p) for s in sdfs], axis=0)


def occupancy(sdf: Field, eps: float = 0.01) -> Field:
    """Inside-high occupancy probability, 0.5 exactly on the surface."""
    return lambda p: expit(-sdf(p.astype(np.float64)) / eps)


def capsule_volume(a, b, radius: float) -> float:
    length = float(np.linalg.norm(np.subtract(b, a)))
    return np.pi * radius**2 * length + 4.0 / 3.0 * np.pi * radius**3


#: A hand-like union of capsules spanning about a third of the box width: a palm and five fingers
#: of radius 0.03-0.04 (2-3 cells at R = 128, less than a coarse cell at R0 = 16).
HAND_SDF = union_sdf(
    capsule_sdf((-0.30, 0.00, 0.00), (0.05, 0.00, 0.00), 0.12),
    capsule_sdf((0.05, -0.12, 0.00), (0.35, -0.16, 0.02), 0.035),
    capsule_sdf((0.05, -0.04, 0.00), (0.38, -0.05, 0.00), 0.037),
    capsule_sdf((0.05, 0.04, 0.00), (0.36, 0.06, -0.01), 0.035),
    capsule_sdf((0.05, 0.11, 0.00), (0.30, 0.16, 0.00), 0.030),
    capsule_sdf((-0.20, -0.12, 0.02), (0.00, -0.30, 0.08), 0.040),
)


# --------------------------------------------------------------------------------------------------
# mesh measurements


def as_mesh(verts: np.ndarray, faces: np.ndarray) -> trimesh.Trimesh:
    # process=False: judge the topology we produced, not one repaired by merging close vertices.
    return trimesh.Trimesh(verts, faces, process=False)


def assert_closed_outward(mesh: trimesh.Trimesh) -> None:
    assert len(mesh.faces) > 0
    assert mesh.is_watertight
    assert mesh.is_winding_consistent
    assert mesh.volume > 0, "faces point inward"


def point_to_surface(points: np.ndarray, mesh: trimesh.Trimesh, k: int = 16) -> np.ndarray:
    """Distance (N,) from each point to the mesh surface (exact over the k triangles with the
    nearest centroids; triangles are below a cell, so the true closest one is among them)."""
    tris = mesh.triangles
    _, idx = KDTree(tris.mean(axis=1)).query(points, k=k)
    rep = np.repeat(points, k, axis=0)
    closest = trimesh.triangles.closest_point(tris[idx.ravel()], rep)
    return np.linalg.norm(closest - rep, axis=1).reshape(-1, k).min(axis=1)


def chamfer_l1(a: trimesh.Trimesh, b: trimesh.Trimesh, n: int = 20_000) -> float:
    """Symmetric Chamfer-L1: mean of the two mean distances from area-uniform samples of one
    mesh to the other's surface.

    Point-to-surface, not point-to-point: nearest-neighbour distances between two independent
    20k-sample sets of the *same* surface average ~0.24 cells at R = 128 (sampling noise), far
    above the 0.1-cell tolerance tested here.
    """
    pa, _ = trimesh.sample.sample_surface(a, n, seed=0)
    pb, _ = trimesh.sample.sample_surface(b, n, seed=1)
    return 0.5 * (point_to_surface(np.asarray(pa), b).mean() + point_to_surface(np.asarray(pb), a).mean())


# --------------------------------------------------------------------------------------------------
# MISE vs dense and vs analytic


SHAPES = {
    "sphere": (sphere_sdf((0.1, -0.05, 0.0), 0.3), 4.0 / 3.0 * np.pi * 0.3**3),
    "torus": (torus_sdf((0.0, 0.1, -0.05), 0.3, 0.1), 2.0 * np.pi**2 * 0.3 * 0.1**2),
    "hand": (HAND_SDF, None),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_mise_matches_dense(name: str) -> None:
    sdf, analytic_volume = SHAPES[name]
    field = occupancy(sdf)
    r0, steps = 16, 3
    res = r0 * 2**steps
    cell = 2.0 / res

    v, f, stats = extract_isosurface(field, BOX_LO, BOX_HI, resolution_0=r0, upsampling_steps=steps)
    vd, fd, stats_d = extract_isosurface_dense(field, BOX_LO, BOX_HI, resolution=res)
    mesh, dense = as_mesh(v, f), as_mesh(vd, fd)

    assert_closed_outward(mesh)
    assert_closed_outward(dense)
    assert chamfer_l1(mesh, dense) < 0.1 * cell
    assert abs(mesh.volume - dense.volume) < 0.005 * dense.volume
    if analytic_volume is not None:
        assert abs(mesh.volume - analytic_volume) < 0.02 * analytic_volume
    # Every vertex lies on the true surface to within a fraction of a cell.
    assert np.abs(sdf(v)).max() < 0.5 * cell

    assert stats.resolution == stats_d.resolution == res
    assert stats.n_dense_equivalent == stats_d.n_dense_equivalent == (res + 1) ** 3
    assert stats_d.n_evaluated == (res + 1) ** 3
    # Measured: 2-3% of the dense count for these shapes at R = 128.
    assert stats.n_evaluated < 0.1 * stats.n_dense_equivalent
    assert 0.0 <= stats.seconds_eval <= stats.seconds


def test_faces_point_outward() -> None:
    center = np.array([0.1, -0.05, 0.0])
    field = occupancy(sphere_sdf(center, 0.3))
    for v, f, _ in (
        extract_isosurface(field, BOX_LO, BOX_HI, resolution_0=8, upsampling_steps=2),
        extract_isosurface_dense(field, BOX_LO, BOX_HI, resolution=32),
    ):
        mesh = as_mesh(v, f)
        assert mesh.volume > 0
        radial = mesh.triangles_center - center
        assert np.all(np.einsum("ij,ij->i", mesh.face_normals, radial) > 0)

    # Why the module has to care: scikit-image's default orientation is inward for inside-high
    # fields such as occupancy probabilities.
    x = np.linspace(-1.0, 1.0, 33)
    grid = field(np.stack(np.meshgrid(x, x, x, indexing="ij"), axis=-1).reshape(-1, 3)).reshape(33, 33, 33)
    sv, sf, _, _ = marching_cubes(grid, level=0.5)
    assert as_mesh(sv, sf).volume < 0


def test_off_centre_non_cubic_box() -> None:
    lo, hi = (0.3, -2.0, 5.0), (1.1, -1.4, 6.2)
    center, radius = np.array([0.72, -1.68, 5.55]), 0.22
    sdf = sphere_sdf(center, radius)
    v, f, stats = extract_isosurface(occupancy(sdf, eps=0.005), lo, hi, resolution_0=16, upsampling_steps=2)
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)

    cell = (np.asarray(hi) - np.asarray(lo)) / stats.resolution  # anisotropic cells
    assert np.all(v >= lo) and np.all(v <= hi)
    assert np.abs(sdf(v)).max() < 0.5 * cell.max()
    np.testing.assert_allclose(v.mean(axis=0), center, atol=0.1 * cell.min())
    assert abs(mesh.volume - 4.0 / 3.0 * np.pi * radius**3) < 0.02 * 4.0 / 3.0 * np.pi * radius**3

    vd, fd, _ = extract_isosurface_dense(occupancy(sdf, eps=0.005), lo, hi, resolution=stats.resolution)
    assert abs(mesh.volume - as_mesh(vd, fd).volume) < 1e-3 * mesh.volume


# --------------------------------------------------------------------------------------------------
# thin parts


def test_thin_capsule_is_not_lost() -> None:
    r0, steps = 16, 3
    coarse_cell = 2.0 / r0
    a, b, radius = (-0.62, -0.41, -0.23), (0.58, 0.47, 0.31), 1.5 * coarse_cell
    sdf = capsule_sdf(a, b, radius)
    v, f, stats = extract_isosurface(occupancy(sdf), BOX_LO, BOX_HI, resolution_0=r0, upsampling_steps=steps)
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)
    assert mesh.body_count == 1
    volume = capsule_volume(a, b, radius)
    assert abs(mesh.volume - volume) < 0.01 * volume
    # Both rounded ends are there: the mesh reaches each tip to within a cell.
    axis = np.subtract(b, a) / np.linalg.norm(np.subtract(b, a))
    t = (v - a) @ axis
    cell = 2.0 / stats.resolution
    assert t.min() < -radius + cell
    assert t.max() > np.linalg.norm(np.subtract(b, a)) + radius - cell


def test_dilation_follows_parts_thinner_than_a_coarse_cell() -> None:
    # Radius 0.35 coarse cells: the coarse grid sees the capsule only at a few nodes; the rest
    # has to be found by following the surface out of the refined region between nodes.
    r0, steps = 16, 3
    a, b, radius = (-0.55, 0.12, -0.31), (0.49, -0.37, 0.44), 0.35 * 2.0 / r0
    field = occupancy(capsule_sdf(a, b, radius), eps=0.005)
    dense_volume = as_mesh(
        *extract_isosurface_dense(field, BOX_LO, BOX_HI, resolution=r0 * 2**steps)[:2]
    ).volume
    volumes, counts = {}, {}
    for mode in ("none", "coarse", "all"):
        v, f, stats = extract_isosurface(field, BOX_LO, BOX_HI, r0, steps, dilate=mode)
        mesh = as_mesh(v, f)
        assert_closed_outward(mesh)
        volumes[mode], counts[mode] = mesh.volume, stats.n_evaluated
    assert abs(volumes["coarse"] - dense_volume) < 0.01 * dense_volume
    assert abs(volumes["all"] - dense_volume) < 0.01 * dense_volume
    assert volumes["none"] <= volumes["coarse"] + 1e-9
    assert counts["none"] < counts["coarse"] < counts["all"]


def test_disjoint_capsules_volume_and_components() -> None:
    caps = [
        ((-0.7, -0.6, -0.5), (-0.2, -0.6, -0.4), 0.06),
        ((0.1, 0.2, -0.3), (0.1, 0.7, 0.2), 0.045),
        ((0.4, -0.5, 0.3), (0.7, -0.1, 0.6), 0.08),
    ]
    sdf = union_sdf(*(capsule_sdf(*c) for c in caps))
    v, f, _ = extract_isosurface(
        occupancy(sdf, eps=0.005), BOX_LO, BOX_HI, resolution_0=16, upsampling_steps=3
    )
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)
    assert mesh.body_count == 3
    volume = sum(capsule_volume(*c) for c in caps)
    assert abs(mesh.volume - volume) < 0.02 * volume


# --------------------------------------------------------------------------------------------------
# box boundary, empty and full fields, other thresholds


@pytest.mark.parametrize("dense", [False, True])
def test_surface_cut_by_box_is_capped(dense: bool) -> None:
    # Ball centred on the box's x = 1 face: only the half inside the box is meshed.
    radius = 0.4
    field = occupancy(sphere_sdf((1.0, 0.1, 0.0), radius))
    if dense:
        v, f, stats = extract_isosurface_dense(field, BOX_LO, BOX_HI, resolution=64)
    else:
        v, f, stats = extract_isosurface(field, BOX_LO, BOX_HI, resolution_0=16, upsampling_steps=2)
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)
    cell = 2.0 / stats.resolution
    # The cap sits 1/100 of a cell outside the face.
    assert v[:, 0].max() == pytest.approx(1.0 + 0.01 * cell, abs=1e-3 * cell)
    half_ball = 2.0 / 3.0 * np.pi * radius**3
    assert abs(mesh.volume - half_ball) < 0.02 * half_ball


def test_field_inside_everywhere_gives_the_box() -> None:
    lo, hi = (0.0, 0.0, 0.0), (1.0, 2.0, 0.5)
    v, f, _ = extract_isosurface(lambda p: np.ones(len(p)), lo, hi, resolution_0=4, upsampling_steps=2)
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)
    assert mesh.volume == pytest.approx(1.0, rel=0.02)


@pytest.mark.parametrize("dense", [False, True])
def test_empty_field_gives_empty_mesh(dense: bool) -> None:
    def outside(p: np.ndarray) -> np.ndarray:
        return np.zeros(len(p), dtype=np.float32)

    if dense:
        v, f, stats = extract_isosurface_dense(outside, BOX_LO, BOX_HI, resolution=16)
    else:
        v, f, stats = extract_isosurface(outside, BOX_LO, BOX_HI, resolution_0=8, upsampling_steps=2)
    assert v.shape == (0, 3) and v.dtype == np.float64
    assert f.shape == (0, 3) and f.dtype == np.int64
    assert isinstance(stats, ExtractionStats)
    assert stats.resolution == (16 if dense else 32)
    assert stats.n_evaluated == (17**3 if dense else 9**3)
    assert stats.n_dense_equivalent == (stats.resolution + 1) ** 3


def test_logits_with_threshold_zero() -> None:
    # Unbounded inside-high values (negated signed distance) and a different iso level.
    sdf = sphere_sdf((0.0, 0.1, 0.0), 0.35)
    v, f, _ = extract_isosurface(lambda p: -sdf(p), BOX_LO, BOX_HI, 16, 2, threshold=0.0)
    mesh = as_mesh(v, f)
    assert_closed_outward(mesh)
    assert abs(mesh.volume - 4.0 / 3.0 * np.pi * 0.35**3) < 0.01 * 4.0 / 3.0 * np.pi * 0.35**3


def test_upsampling_steps_zero_is_the_dense_mesh() -> None:
    field = occupancy(torus_sdf((0.0, 0.1, -0.05), 0.4, 0.15), eps=0.05)
    v, f, stats = extract_isosurface(field, BOX_LO, BOX_HI, resolution_0=40, upsampling_steps=0)
    vd, fd, _ = extract_isosurface_dense(field, BOX_LO, BOX_HI, resolution=40)
    assert stats.n_evaluated == 41**3
    assert len(v) == len(vd) and len(f) == len(fd)
    np.testing.assert_allclose(np.sort(v, axis=0), np.sort(vd, axis=0), atol=1e-6)
    assert as_mesh(v, f).volume == pytest.approx(as_mesh(vd, fd).volume, rel=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_random_fields_are_watertight(seed: int) -> None:
    # Smooth random fields with many components and saddles crossing block boundaries: stresses
    # the block seams and ambiguous cells (Lewiner's extra in-cell vertices).
    rng = np.random.default_rng(seed)
    freqs = rng.normal(scale=6.0, size=(12, 3))
    phases = rng.uniform(0, 2 * np.pi, size=12)

    def field(p: np.ndarray) -> np.ndarray:
        return np.cos(p.astype(np.float64) @ freqs.T + phases).sum(axis=1) / 3.0

    v, f, _ = extract_isosurface(field, BOX_LO, BOX_HI, resolution_0=8, upsampling_steps=3, threshold=0.4)
    assert_closed_outward(as_mesh(v, f))


@pytest.mark.parametrize("seed", range(12))
def test_thin_random_capsules_are_watertight_across_many_block_seams(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Blocks of a single coarse cell put a seam everywhere, and capsules thinner than a coarse
    # cell make the refined region grow level by level into blocks that had nothing to refine
    # before.  Dropping such a block one level too early leaves half of a shared face unmeshed;
    # seeds 3 and 10 cracked that way before blocks were kept with a one-cell margin.
    monkeypatch.setattr(mesh_extraction, "_TARGET_BLOCK_CELLS", 8)
    rng = np.random.default_rng(seed)
    r0, steps = 8, 3
    coarse_cell = 2.0 / r0
    sdf = union_sdf(
        *(
            capsule_sdf(
                rng.uniform(-0.8, 0.8, 3), rng.uniform(-0.8, 0.8, 3), rng.uniform(0.2, 0.6) * coarse_cell
            )
            for _ in range(4)
        )
    )
    field = occupancy(sdf, eps=0.5 * coarse_cell / 2**steps)
    for mode in ("none", "coarse", "all"):
        v, f, _ = extract_isosurface(field, BOX_LO, BOX_HI, r0, steps, dilate=mode)
        if len(f):  # a capsule set may fall entirely between coarse nodes
            assert_closed_outward(as_mesh(v, f))


# --------------------------------------------------------------------------------------------------
# evaluator contract and argument checking


def test_each_node_is_evaluated_once_on_the_grid() -> None:
    calls: list[np.ndarray] = []
    field = occupancy(HAND_SDF)

    def recording(p: np.ndarray) -> np.ndarray:
        assert p.dtype == np.float32 and p.ndim == 2 and p.shape[1] == 3
        calls.append(p.copy())
        return field(p)

    lo, hi = np.array([-0.5, -0.4, -0.3]), np.array([0.5, 0.4, 0.3])
    _, _, stats = extract_isosurface(recording, lo, hi, resolution_0=8, upsampling_steps=3, batch_size=5000)
    assert all(len(c) <= 5000 for c in calls)
    pts = np.concatenate(calls).astype(np.float64)
    assert len(pts) == stats.n_evaluated
    idx = (pts - lo) / (hi - lo) * stats.resolution
    np.testing.assert_allclose(idx, np.round(idx), atol=1e-3)  # grid nodes only
    idx = np.round(idx).astype(np.int64)
    assert idx.min() >= 0 and idx.max() <= stats.resolution
    assert len(np.unique(idx, axis=0)) == len(idx), "a node was evaluated twice"


def _sphere_field(p: np.ndarray) -> np.ndarray:
    return expit(-(np.linalg.norm(p, axis=1) - 0.5) / 0.01)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution_0": 1}, "resolution_0"),
        ({"resolution_0": 8.0}, "resolution_0"),
        ({"upsampling_steps": -1}, "upsampling_steps"),
        ({"bounds_max": (1.0, -1.0, 1.0)}, "bounds_max"),
        ({"bounds_min": (0.0, 0.0)}, "bounds_min"),
        ({"threshold": float("nan")}, "threshold"),
        ({"batch_size": 0}, "batch_size"),
        ({"dilate": "yes"}, "dilate"),
        ({"evaluate": lambda p: np.full(len(p), np.nan)}, "NaN"),
        ({"evaluate": lambda p: np.zeros((len(p), 2))}, "shape"),
        ({"evaluate": lambda p: np.zeros(len(p) - 1)}, "shape"),
        ({"evaluate": "not a function"}, "callable"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    args = {
        "evaluate": _sphere_field,
        "bounds_min": BOX_LO,
        "bounds_max": BOX_HI,
        "resolution_0": 4,
        "upsampling_steps": 1,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        extract_isosurface(**args)


def test_dense_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="resolution"):
        extract_isosurface_dense(_sphere_field, BOX_LO, BOX_HI, resolution=1)
    with pytest.raises(ValueError, match="bounds_max"):
        extract_isosurface_dense(_sphere_field, BOX_LO, (1.0, 1.0, -1.0), resolution=8)
    with pytest.raises(ValueError, match="NaN"):
        extract_isosurface_dense(lambda p: np.full(len(p), np.nan), BOX_LO, BOX_HI, resolution=8)
