"""Surface-reconstruction metrics (halo.eval.surface_metrics.mesh_metrics and its summaries).

Expected values come from geometry, not from earlier runs:

* Two independent uniform samplings of one surface behave like 2D Poisson
  processes: with lambda points per m^2 the mean nearest-neighbour distance is
  1 / (2 sqrt(lambda)), its mean square 1 / (pi lambda), and the fraction of
  points with a neighbour within t is 1 - exp(-lambda pi t^2).
* A sphere of radius r against one of radius R = r + d: every nearest
  neighbour is d away radially, plus the tangential sampling term
  E[rho^2] / (2 d) and the icosphere's facet deficit (at most ``_deficit``).
* Boxes against box occupancy on a jittered grid whose cells the box faces
  never cut: the IoU is an exact ratio of volumes.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from halo.eval.surface_metrics import MeshMetrics, mesh_metrics, metrics_markdown_table, summarize_metrics

R_SPHERE = 0.05  # m
N = 100_000


@pytest.fixture(scope="module")
def icosphere() -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=R_SPHERE)


def _sphere_points(n: int, radius: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    v = np.random.default_rng(seed).normal(size=(n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * radius, v


def _deficit_mm(mesh: trimesh.Trimesh, radius: float) -> float:
    """Largest radial gap (mm) between the icosphere's faces and the sphere through its vertices."""
    plane = np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.vertices[mesh.faces[:, 0]]))
    return (radius - plane.min()) * 1000


def _cos_min(mesh: trimesh.Trimesh, radius: float) -> float:
    """Smallest cosine between a face normal and the radial direction at a point of that face."""
    plane = np.abs(np.einsum("ij,ij->i", mesh.face_normals, mesh.vertices[mesh.faces[:, 0]]))
    return plane.min() / radius


def _density_per_mm2(n: int, area_m2: float) -> float:
    return n / (area_m2 * 1e6)


# ----------------------------------------------------------------------------- one surface, two samplings


def test_same_surface_reads_the_poisson_sampling_floor(icosphere):
    gt, fi = trimesh.sample.sample_surface(icosphere, N, seed=123)
    t = 0.3
    m = mesh_metrics(icosphere, gt, icosphere.face_normals[fi], fscore_thresholds_mm=(t, 1.0, 2.0))
    lam = _density_per_mm2(N, icosphere.area)  # equal for both point sets
    floor = 0.5 / math.sqrt(lam)  # ~0.28 mm
    assert m.accuracy_mm == pytest.approx(floor, rel=0.02)
    assert m.completeness_mm == pytest.approx(floor, rel=0.02)
    assert m.chamfer_l1_mm == pytest.approx((m.accuracy_mm + m.completeness_mm) / 2, rel=1e-12)
    assert m.chamfer_l2_mm2 == pytest.approx(1 / (math.pi * lam), rel=0.03)
    within = 1 - math.exp(-lam * math.pi * t**2)  # ~0.59: precision = recall
    assert m.fscore[t] == pytest.approx(within, abs=0.01)
    assert m.fscore[1.0] > 0.9999 and m.fscore[2.0] == 1.0
    # neighbours on adjacent facets differ by the dihedral angle only (~0.8 degrees)
    assert 0.9995 < m.normal_consistency <= 1.0
    assert not m.empty and math.isnan(m.iou)


def test_normal_consistency_ignores_orientation_and_length_and_sees_wrong_normals(icosphere):
    gt, radial = _sphere_points(20_000, R_SPHERE, seed=1)
    kw = {"n_samples": 20_000}
    base = mesh_metrics(icosphere, gt, radial, **kw).normal_consistency
    assert _cos_min(icosphere, R_SPHERE) <= base < 1.0  # face normals vs exact radial normals
    assert mesh_metrics(icosphere, gt, -3.0 * radial, **kw).normal_consistency == pytest.approx(
        base, abs=1e-12
    )
    tangent = np.cross(radial, np.array([0.0, 0.0, 1.0]))
    tangent[np.linalg.norm(tangent, axis=1) < 1e-3] = [1.0, 0.0, 0.0]  # near the poles
    tangent = np.cross(tangent, radial)  # exactly perpendicular to the radial normal
    assert mesh_metrics(icosphere, gt, tangent, **kw).normal_consistency < 0.02
    assert math.isnan(mesh_metrics(icosphere, gt, None, **kw).normal_consistency)


# ----------------------------------------------------------------------------- concentric spheres


@pytest.mark.parametrize("d_mm", [3.0, -2.5])
def test_concentric_sphere_offset_is_measured_in_mm(icosphere, d_mm):
    big = R_SPHERE + d_mm / 1000
    gt, normals = _sphere_points(N, big, seed=7)
    d = abs(d_mm)
    lo, hi = d - 0.4, d + 0.4
    m = mesh_metrics(icosphere, gt, normals, fscore_thresholds_mm=(1.0, 2.0, lo, hi))
    deficit = _deficit_mm(icosphere, R_SPHERE)  # ~0.014 mm
    # tangential term E[rho^2]/(2d), rho^2 ~ 1/(pi lambda) of the set searched
    tang_acc = 1 / (math.pi * _density_per_mm2(N, 4 * math.pi * big**2)) / (2 * d)
    tang_comp = 1 / (math.pi * _density_per_mm2(N, icosphere.area)) / (2 * d)
    # facets sit inside the sphere: the gap grows by up to `deficit` for d > 0, shrinks for d < 0
    sign = 1.0 if d_mm > 0 else -1.0
    for got, tang in ((m.accuracy_mm, tang_acc), (m.completeness_mm, tang_comp)):
        assert got == pytest.approx(d + tang + sign * deficit / 2, abs=deficit / 2 + 0.004)
    assert m.chamfer_l1_mm == pytest.approx(d, abs=0.05)
    assert m.chamfer_l2_mm2 == pytest.approx(
        d**2 + 2 * d * (tang_acc + tang_comp) / 2, abs=2 * d * deficit + 0.01
    )
    assert m.fscore[1.0] == 0.0 and m.fscore[2.0] == 0.0
    assert m.fscore[lo] == 0.0  # every point is at least d - deficit away
    assert m.fscore[hi] == 1.0  # and at most sqrt(d^2 + max rho^2) < d + 0.4
    assert _cos_min(icosphere, R_SPHERE) <= m.normal_consistency < 1.0


# ----------------------------------------------------------------------------- IoU


def _jittered_grid(half_mm: int, seed: int = 0) -> np.ndarray:
    """One point per 1 mm cell of [-half, half]^3 (m), strictly inside its cell."""
    c = np.arange(-half_mm, half_mm) + 0.5
    g = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    g += np.random.default_rng(seed).uniform(-0.4, 0.4, g.shape)
    return g / 1000


def _in_box(p: np.ndarray, lo_mm, hi_mm) -> np.ndarray:
    return np.all((p > np.asarray(lo_mm) / 1000) & (p < np.asarray(hi_mm) / 1000), axis=1)


@pytest.mark.parametrize(
    ("gt_lo", "gt_hi", "expected"),
    [
        ((-10, -10, -10), (10, 10, 10), 8_000 / 64_000),  # smaller box inside the prediction
        ((-25, -25, -25), (25, 25, 25), 64_000 / 125_000),  # larger box around it
        ((-10, -20, -20), (30, 20, 10), 36_000 / 76_000),  # shifted, partial overlap
        ((21, 21, 21), (28, 28, 28), 0.0),  # disjoint
    ],
)
def test_iou_of_box_against_box_occupancy(gt_lo, gt_hi, expected):
    pred = trimesh.creation.box(extents=(0.04, 0.04, 0.04))  # faces at +-20 mm
    q = _jittered_grid(30)
    occ = _in_box(q, gt_lo, gt_hi)
    surf, _ = trimesh.sample.sample_surface(pred, 2_000, seed=0)
    m = mesh_metrics(pred, surf, None, iou_points=q, iou_occupancy=occ, n_samples=2_000)
    assert m.iou == pytest.approx(expected, abs=1e-12)


def test_iou_accepts_open_meshes_and_integer_occupancy():
    box = trimesh.creation.box(extents=(0.04, 0.04, 0.04))
    top = box.face_normals[:, 2] > 0.5
    open_box = trimesh.Trimesh(box.vertices, box.faces[~top], process=False)
    assert not open_box.is_watertight
    q = _jittered_grid(30)
    occ = _in_box(q, (-20, -20, -20), (20, 20, 20))
    m = mesh_metrics(
        open_box, q[:10], None, iou_points=q, iou_occupancy=occ.astype(np.uint8), n_samples=1_000
    )
    assert 0.0 <= m.iou <= 1.0  # approximate near the hole, but no error


def test_iou_undefined_when_nothing_is_occupied():
    box = trimesh.creation.box(extents=(0.01, 0.01, 0.01))
    q = np.full((5, 3), 0.5)  # all outside
    m = mesh_metrics(box, box.vertices, None, iou_points=q, iou_occupancy=np.zeros(5, bool), n_samples=100)
    assert math.isnan(m.iou)


# ----------------------------------------------------------------------------- empty / degenerate predictions


@pytest.mark.parametrize(
    "mesh",
    [
        trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)),
        # faces but zero area: three collinear vertices
        trimesh.Trimesh([[0, 0, 0], [0.01, 0, 0], [0.02, 0, 0]], [[0, 1, 2]], process=False),
    ],
    ids=["no_faces", "zero_area"],
)
def test_empty_prediction_gets_finite_worst_case(mesh):
    gt, normals = _sphere_points(1_000, R_SPHERE, seed=3)
    gt = gt * np.array([1.0, 2.0, 0.5])  # bbox extents ~ (100, 200, 50) mm
    diag = float(np.linalg.norm(gt.max(0) - gt.min(0)) * 1000)
    assert 220 < diag < 230
    occ = np.array([True, False, True])
    m = mesh_metrics(
        mesh, gt, normals, iou_points=np.zeros((3, 3)), iou_occupancy=occ, fscore_thresholds_mm=(1, 5)
    )
    assert m.empty
    d = m.as_dict()
    assert d["empty"] == 1.0
    for key in ("chamfer_l1_mm", "accuracy_mm", "completeness_mm"):
        assert d[key] == pytest.approx(diag, rel=1e-12)
    assert d["chamfer_l2_mm2"] == pytest.approx(diag**2, rel=1e-12)
    assert d["normal_consistency"] == 0.0
    assert d["fscore_1mm"] == 0.0 and d["fscore_5mm"] == 0.0
    assert d["iou"] == 0.0
    assert all(math.isfinite(v) for v in d.values())
    no_normals = mesh_metrics(mesh, gt, None)
    assert math.isnan(no_normals.normal_consistency) and math.isnan(no_normals.iou)


# ----------------------------------------------------------------------------- API details


def test_as_dict_names_follow_the_thresholds(icosphere):
    gt, normals = _sphere_points(2_000, R_SPHERE, seed=0)
    m = mesh_metrics(icosphere, gt, normals, n_samples=2_000, fscore_thresholds_mm=(0.5, 1, 2.25, 10.0))
    assert isinstance(m, MeshMetrics)
    assert list(m.as_dict()) == [
        "chamfer_l1_mm",
        "chamfer_l2_mm2",
        "accuracy_mm",
        "completeness_mm",
        "normal_consistency",
        "fscore_0.5mm",
        "fscore_1mm",
        "fscore_2.25mm",
        "fscore_10mm",
        "iou",
        "empty",
    ]
    assert all(type(v) is float for v in m.as_dict().values())
    assert list(mesh_metrics(icosphere, gt, None, n_samples=100).as_dict())[5:7] == [
        "fscore_1mm",
        "fscore_2mm",
    ]


def test_seed_makes_results_reproducible(icosphere):
    gt, normals = _sphere_points(5_000, R_SPHERE + 0.001, seed=0)
    a = mesh_metrics(icosphere, gt, normals, n_samples=5_000, seed=4).as_dict()
    b = mesh_metrics(icosphere, gt, normals, n_samples=5_000, seed=4).as_dict()
    c = mesh_metrics(icosphere, gt, normals, n_samples=5_000, seed=5).as_dict()
    np.testing.assert_equal(a, b)  # NaN IoU compares equal here
    assert a["accuracy_mm"] != c["accuracy_mm"] and a["completeness_mm"] != c["completeness_mm"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"gt_points": np.zeros((10, 2))}, r"gt_points must have shape \(N, 3\), got \(10, 2\)"),
        ({"gt_points": np.zeros((0, 3))}, r"gt_points must hold at least one point"),
        ({"gt_points": np.full((4, 3), np.nan)}, r"gt_points contains NaN"),
        (
            {"gt_normals": np.zeros((9, 3))},
            r"gt_normals must have the shape of gt_points \(10, 3\), got \(9, 3\)",
        ),
        ({"gt_normals": np.zeros((10,))}, r"gt_normals must have shape \(N, 3\), got \(10,\)"),
        ({"iou_points": np.zeros((5, 3))}, r"iou_points and iou_occupancy must be given together"),
        ({"iou_occupancy": np.zeros(5, bool)}, r"iou_points and iou_occupancy must be given together"),
        (
            {"iou_points": np.zeros((5, 3)), "iou_occupancy": np.zeros(4, bool)},
            r"iou_occupancy must have shape \(5,\) to match iou_points, got \(4,\)",
        ),
        (
            {"iou_points": np.zeros((5, 3)), "iou_occupancy": np.full(5, 0.7)},
            r"iou_occupancy must be a bool array .*\(occ >= 0.5\)",
        ),
        ({"iou_points": np.zeros((5, 2)), "iou_occupancy": np.zeros(5, bool)}, r"iou_points must have shape"),
        ({"n_samples": 0}, r"n_samples must be a positive integer"),
        ({"fscore_thresholds_mm": (1.0, -1.0)}, r"fscore_thresholds_mm must be positive"),
        ({"fscore_thresholds_mm": (1.0, 1)}, r"fscore_thresholds_mm has duplicates"),
    ],
)
def test_argument_errors_name_the_argument_and_shape(kwargs, message):
    args = {"gt_points": np.zeros((10, 3)), "gt_normals": None} | kwargs
    box = trimesh.creation.box(extents=(0.01, 0.01, 0.01))
    with pytest.raises(ValueError, match=message):
        mesh_metrics(box, args.pop("gt_points"), args.pop("gt_normals"), **args)


def test_rejects_non_mesh_and_nan_vertices():
    with pytest.raises(TypeError, match="pred_mesh must be a trimesh.Trimesh"):
        mesh_metrics(np.zeros((3, 3)), np.zeros((3, 3)), None)
    bad = trimesh.creation.box(extents=(0.01, 0.01, 0.01))
    bad.vertices[0] = np.nan
    with pytest.raises(ValueError, match="pred_mesh has NaN or inf"):
        mesh_metrics(bad, np.zeros((3, 3)), None)


# ----------------------------------------------------------------------------- summaries


def test_summarize_ignores_nan_and_non_numeric_values():
    rows = [
        {"name": "a", "chamfer_l1_mm": 1.0, "iou": float("nan"), "empty": 0.0},
        {"name": "b", "chamfer_l1_mm": 2.0, "iou": 0.5, "empty": True},
        {"name": "c", "chamfer_l1_mm": 6.0, "iou": 0.7, "empty": 0.0, "normal_consistency": float("nan")},
    ]
    s = summarize_metrics(rows)
    assert list(s) == ["chamfer_l1_mm", "iou", "empty", "normal_consistency"]
    assert s["chamfer_l1_mm"] == {"mean": 3.0, "median": 2.0, "count": 3.0}
    assert s["iou"]["mean"] == pytest.approx(0.6) and s["iou"]["median"] == pytest.approx(0.6)
    assert s["iou"]["count"] == 2.0
    assert s["empty"]["mean"] == pytest.approx(1 / 3)
    assert math.isnan(s["normal_consistency"]["mean"]) and s["normal_consistency"]["count"] == 0.0
    assert summarize_metrics([]) == {}


def test_markdown_table():
    summary = summarize_metrics(
        [{"chamfer_l1_mm": 0.5, "chamfer_l2_mm2": 2e-6, "iou": float("nan")}, {"chamfer_l1_mm": 1.0}]
    )
    assert metrics_markdown_table(summary) == (
        "| metric | mean | median |\n"
        "| --- | ---: | ---: |\n"
        "| chamfer_l1_mm | 0.7500 | 0.7500 |\n"
        "| chamfer_l2_mm2 | 2.000e-06 | 2.000e-06 |\n"
        "| iou | nan | nan |\n"
    )


def test_metrics_feed_the_summary(icosphere):
    gt, normals = _sphere_points(3_000, R_SPHERE + 0.002, seed=0)
    rows = [mesh_metrics(icosphere, gt, normals, n_samples=3_000, seed=s).as_dict() for s in range(3)]
    table = metrics_markdown_table(summarize_metrics(rows))
    assert table.count("\n") == 2 + len(rows[0])
    assert "| fscore_1mm | 0.0000 | 0.0000 |" in table
    assert "| fscore_2mm |" in table and "| empty | 0.0000 | 0.0000 |" in table
