"""Physical plausibility and diversity of grasps: interpenetration, contact, simulation, k-means diversity.

Definitions follow HALO's evaluation (``halo/evaluate.py``, ``evaluate_cluster.py``,
``utils/intersection.py`` in korrawe/halo) and GraspTTA's (``metric/*.py``); see
``data_formats_and_metrics.md`` section B4.  Inputs are in metres; every returned
quantity carries its unit in its name, and the unit never depends on the code path
(the original's ``intersection_eval`` returned the depth in metres when there was
no penetration and in centimetres otherwise).

Per grasp (:func:`grasp_metrics`):

- ``volume_cm3``: interpenetration volume.  A grid of points with spacing ``pitch_m``
  (1 mm) fills the intersection of the two bounding boxes; the points inside both
  meshes are counted and the volume is ``count * pitch^3``.  Each point stands for the
  cube of side ``pitch`` around it (cell centres), so the estimate is unbiased; HALO's
  grid starts on the box corner, which differs by at most one layer of cells.  HALO
  returns 0 whenever no hand vertex is inside the object; here the grid is evaluated
  whenever the boxes overlap, so an object edge pressed between hand vertices counts.
- ``depth_cm``: penetration depth, the largest distance from a hand vertex inside the
  object to the object surface (0 without penetration).  Always >= 0.
- ``min_distance_cm``: smallest signed distance from a hand vertex to the object
  surface, negative inside (HALO's "inter dist"; ``-depth_cm`` when penetrating).
- ``contact``: ``min signed distance <= contact_tol_m``.  ``contact_tol_m=0``
  reproduces HALO's contact ratio (a hand vertex on or inside the object), the default
  ``0.005`` GraspTTA's (a vertex inside or within 5 mm).

The hand is made watertight first (an open MANO hand gets its wrist hole closed by
:func:`halo.geometry.sealing.seal_mesh`, like HALO's ``seal``); the object gets
``trimesh.repair.fix_normals`` and optionally its convex hull (HALO's ObMan-style
evaluations).  Inside tests use :func:`halo.geometry.inside.points_inside_mesh` (open3d).

Over many grasps: :func:`contact_ratio`, :func:`summarize_grasp_metrics`; the diversity
measure (k-means entropy and cluster size of canonicalized keypoints) is
:mod:`halo.grasp.diversity` (re-exported here).  :func:`simulation_displacement_m` (GraspTTA's pybullet protocol,
optional dependency ``pip install pybullet``) lives in :mod:`halo.grasp.simulation` and is
re-exported here, so every grasp metric is importable from this module.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import trimesh

from halo.geometry.inside import MeshNotWatertightError, o3d_points, points_inside_mesh, raycasting_scene
from halo.geometry.sealing import seal_mesh
from halo.grasp.diversity import ClusterStats, cluster_analysis  # defined there; public here as before
from halo.grasp.simulation import OptionalDependencyError, require_pybullet, simulation_displacement_m
from halo.utils.errors import InputError

__all__ = [
    "ClusterStats",
    "GraspMetrics",
    "GridTooLargeError",
    "OptionalDependencyError",
    "cluster_analysis",
    "contact_ratio",
    "grasp_metrics",
    "intersection_volume_cm3",
    "prepare_hand_mesh",
    "prepare_object_mesh",
    "require_pybullet",
    "signed_distance_m",
    "simulation_displacement_m",
    "summarize_grasp_metrics",
]

M_TO_CM = 100.0
M3_TO_CM3 = 1e6
#: Grid points per inside-test call: bounds memory (~50 MB of float64 points) on large overlaps.
_GRID_CHUNK = 2_000_000
#: Refuse larger grids (1e8 points = a 46 cm cube at 1 mm): almost always meshes that are not in metres.
MAX_GRID_POINTS = 100_000_000


class GridTooLargeError(InputError):
    """The interpenetration grid would be huge: the meshes are probably not in metres."""


# ----------------------------------------------------------------------------- mesh preparation


def prepare_hand_mesh(hand: trimesh.Trimesh, *, name: str = "hand") -> trimesh.Trimesh:
    """A watertight copy of ``hand`` (metres): duplicate vertices merged, one open boundary sealed.

    A MANO hand has one hole (the wrist); it is closed by a fan around the hole's
    centroid (:func:`halo.geometry.sealing.seal_mesh`).  Raises ``MeshNotWatertightError``
    naming ``name`` when the mesh stays open (several holes, non-manifold edges).
    """
    mesh = trimesh.Trimesh(np.asarray(hand.vertices), np.asarray(hand.faces), process=True)
    if len(mesh.faces) == 0:
        raise MeshNotWatertightError(f"{name}: mesh has no faces")
    if mesh.is_watertight:
        return mesh
    try:
        vertices, faces, _ = seal_mesh(mesh.vertices, mesh.faces, name=name)
    except ValueError as exc:
        raise MeshNotWatertightError(f"{name}: hand mesh is open and cannot be sealed ({exc})") from exc
    sealed = trimesh.Trimesh(vertices, faces, process=False)
    if not sealed.is_watertight:
        raise MeshNotWatertightError(
            f"{name}: hand mesh is not watertight even after closing its boundary loop "
            "(non-manifold edges or inconsistent winding)"
        )
    return sealed


def prepare_object_mesh(
    obj: trimesh.Trimesh, *, convex_hull: bool = False, name: str = "object"
) -> trimesh.Trimesh:
    """A copy of ``obj`` with consistent outward normals (``fix_normals``), optionally its convex hull.

    Raises ``MeshNotWatertightError`` naming ``name`` when the result is not closed
    (inside/outside would be undefined; ``convex_hull=True`` always gives a closed mesh).
    """
    mesh = trimesh.Trimesh(np.asarray(obj.vertices), np.asarray(obj.faces), process=True)
    if len(mesh.faces) == 0:
        raise MeshNotWatertightError(f"{name}: mesh has no faces")
    if convex_hull:
        mesh = mesh.convex_hull
    trimesh.repair.fix_normals(mesh)
    if not mesh.is_watertight:
        raise MeshNotWatertightError(
            f"{name}: object mesh is not watertight ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces); "
            "close its holes or evaluate against its convex hull (object_convex_hull=True / --convex-hull)"
        )
    return mesh


# ----------------------------------------------------------------------------- distances and volume


def signed_distance_m(mesh: trimesh.Trimesh, points: np.ndarray, *, name: str = "mesh") -> np.ndarray:
    """(N,) signed distance (metres) from ``points`` (N,3) to a closed mesh: negative inside.

    open3d's ``RaycastingScene.compute_signed_distance`` (exact closest-point distance,
    sign from the same ray test as :func:`halo.geometry.inside.points_inside_mesh`); without
    open3d, trimesh's closest-point query plus :func:`points_inside_mesh`.
    """
    points = np.asarray(points, dtype=np.float64)
    _require_watertight(mesh, name)
    try:
        import open3d  # noqa: F401, PLC0415 (heavy; optional at import time)
    except ImportError:
        _, dist, _ = trimesh.proximity.closest_point(mesh, points)
        inside = points_inside_mesh(mesh.vertices, mesh.faces, points, check_watertight=False, name=name)
        return np.where(inside, -np.asarray(dist, dtype=np.float64), dist)
    scene = raycasting_scene(mesh.vertices, mesh.faces)
    return scene.compute_signed_distance(o3d_points(points)).numpy().astype(np.float64)


def _require_watertight(mesh: trimesh.Trimesh, name: str) -> None:
    # ``is_watertight`` is cached on the mesh, so repeated checks of one mesh are free.
    if len(mesh.faces) == 0:
        raise MeshNotWatertightError(f"{name}: mesh has no faces")
    if not mesh.is_watertight:
        raise MeshNotWatertightError(
            f"{name}: mesh is not watertight ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces); "
            "inside/outside is undefined: close its holes first"
        )


def _grid_chunks(lo: np.ndarray, counts: tuple[int, int, int], pitch: float):
    """Yield (M,3) blocks of the cell centres of a grid starting at ``lo``, at most ~_GRID_CHUNK each."""
    nx, ny, nz = counts
    axes = [lo[d] + (np.arange(counts[d]) + 0.5) * pitch for d in range(3)]
    if ny * nz <= _GRID_CHUNK:  # whole x-slabs via meshgrid (~10x faster than unravelling indices)
        step = _GRID_CHUNK // (ny * nz)
        for x0 in range(0, nx, step):
            block = np.meshgrid(axes[0][x0 : x0 + step], axes[1], axes[2], indexing="ij")
            yield np.stack(block, axis=-1).reshape(-1, 3)
        return
    total = nx * ny * nz
    for start in range(0, total, _GRID_CHUNK):
        ijk = np.unravel_index(np.arange(start, min(start + _GRID_CHUNK, total)), counts)
        yield np.stack([axes[d][ijk[d]] for d in range(3)], axis=1)


def _count_inside_both(
    points: np.ndarray, first: tuple[trimesh.Trimesh, str], second: tuple[trimesh.Trimesh, str]
) -> int:
    """How many of ``points`` (M,3) lie inside both meshes: all tested against ``first``, survivors against ``second``."""
    (m1, n1), (m2, n2) = first, second
    keep = points_inside_mesh(m1.vertices, m1.faces, points, check_watertight=False, name=n1)
    if not keep.any():
        return 0
    return int(points_inside_mesh(m2.vertices, m2.faces, points[keep], check_watertight=False, name=n2).sum())


#: Coarse blocks aimed for by the block culling (a few thousand distance queries per mesh).
_TARGET_BLOCKS = 2000
#: Grids smaller than this are tested point by point (culling would not pay off).
_MIN_CULL_POINTS = 50_000
#: Safety margin (m) on the block test, far above open3d's float32 distance error (~1e-7 m).
_CULL_MARGIN_M = 1e-6


def _count_with_block_culling(
    lo: np.ndarray,
    counts: tuple[int, int, int],
    pitch: float,
    meshes: list[tuple[trimesh.Trimesh, str]],
) -> int:
    """Exact count of grid cell centres inside both meshes, skipping whole blocks that are decided.

    The grid is split into blocks of b^3 cells.  If a block's centre lies farther than the
    block's half-diagonal (+ margin) from a mesh's surface, the surface does not cross the
    block, so every cell centre in it is on the same side of that mesh as the block centre.
    Blocks outside either mesh are dropped, blocks inside both are counted whole, and only
    the cells of the remaining (surface-crossing) blocks are tested one by one.
    """
    total = counts[0] * counts[1] * counts[2]
    b = max(4, math.ceil((total / _TARGET_BLOCKS) ** (1 / 3)))
    n_blocks = tuple(math.ceil(c / b) for c in counts)
    radius = math.sqrt(3) * (b - 1) / 2 * pitch + _CULL_MARGIN_M
    # Block centre = mean of its b^3 cell centres = lo + (block index + 0.5) * b * pitch
    # (blocks at the far end may hang over the grid; their missing cells are dropped below).
    centres = np.concatenate(list(_grid_chunks(lo, n_blocks, b * pitch)))
    signed = [signed_distance_m(m, centres, name=n) for m, n in meshes]
    outside = [sd > radius for sd in signed]
    inside_both_blocks = (signed[0] < -radius) & (signed[1] < -radius)
    mixed = ~(outside[0] | outside[1]) & ~inside_both_blocks
    # Test the cells against the mesh that rules out more blocks first: fewer survivors.
    first, second = meshes if outside[0].sum() >= outside[1].sum() else meshes[::-1]

    ijk = np.stack(np.unravel_index(np.arange(len(centres)), n_blocks), axis=1)  # block indices
    sizes = np.minimum(b, np.asarray(counts) - ijk * b)  # cells per axis inside the grid
    count = int(sizes[inside_both_blocks].prod(axis=1).sum())
    offsets = np.stack(np.meshgrid(*[np.arange(b)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    mixed_ids = np.flatnonzero(mixed)
    per_chunk = max(1, _GRID_CHUNK // b**3)
    for start in range(0, len(mixed_ids), per_chunk):
        ids = mixed_ids[start : start + per_chunk]
        cells = (ijk[ids, None, :] * b + offsets[None]).reshape(-1, 3)
        cells = cells[(cells < np.asarray(counts)).all(axis=1)]  # drop cells past the grid's end
        count += _count_inside_both(lo + (cells + 0.5) * pitch, first, second)
    return count


def intersection_volume_cm3(
    mesh_a: trimesh.Trimesh,
    mesh_b: trimesh.Trimesh,
    pitch_m: float = 0.001,
    *,
    names: tuple[str, str] = ("mesh_a", "mesh_b"),
    max_grid_points: int = MAX_GRID_POINTS,
    block_culling: bool = True,
) -> float:
    """Volume (cm^3) of the region inside both closed meshes (metres), on a grid of spacing ``pitch_m``.

    The grid covers the intersection of the two bounding boxes with cells of side
    ``pitch_m``; the cell centres inside both meshes are counted (volume = count * pitch^3).
    ``block_culling`` (default) decides whole blocks of cells from one signed distance per
    block and mesh and tests only the cells of blocks the surfaces cross: the same count,
    ~2x faster for a hand and an object (``bench/bench_intersect.py``).  Without it every
    cell centre is tested against one mesh and the survivors against the other.  Both meshes
    must be watertight (``MeshNotWatertightError`` naming ``names`` otherwise, also when the
    boxes are disjoint).  More than ``max_grid_points`` grid points raise
    :class:`GridTooLargeError` (meshes in mm read as metres would otherwise ask for ~1e13 points).
    """
    if not pitch_m > 0:
        raise ValueError(f"pitch_m must be > 0, got {pitch_m}")
    _require_watertight(mesh_a, names[0])
    _require_watertight(mesh_b, names[1])
    lo = np.maximum(mesh_a.bounds[0], mesh_b.bounds[0])
    hi = np.minimum(mesh_a.bounds[1], mesh_b.bounds[1])
    if np.any(hi <= lo):
        return 0.0
    counts = tuple(max(1, math.ceil(float(c))) for c in (hi - lo) / pitch_m)
    total = math.prod(counts)  # Python ints: no overflow on absurd sizes
    if total > max_grid_points:
        raise GridTooLargeError(
            f"{names[0]} / {names[1]}: the overlap of the bounding boxes is {np.round(hi - lo, 4).tolist()} "
            f"(metres expected) = {total:.3g} grid points at pitch {pitch_m:g} m (limit {max_grid_points:.3g}); "
            "are the meshes in mm or cm? rescale them to metres (or use a coarser pitch)"
        )
    meshes = [(mesh_a, names[0]), (mesh_b, names[1])]
    if block_culling and total >= _MIN_CULL_POINTS:
        count = _count_with_block_culling(lo, counts, pitch_m, meshes)
    else:
        # Smaller volume first: usually fewer survivors for the second test.
        first, second = sorted(meshes, key=lambda m: abs(float(m[0].volume)))
        count = sum(_count_inside_both(points, first, second) for points in _grid_chunks(lo, counts, pitch_m))
    return count * pitch_m**3 * M3_TO_CM3


# ----------------------------------------------------------------------------- per-grasp metrics


@dataclass(frozen=True)
class GraspMetrics:
    """Physical plausibility of one hand/object pair (see the module docstring for definitions)."""

    volume_cm3: float  # interpenetration volume
    depth_cm: float  # max penetration depth of hand vertices inside the object, >= 0
    min_distance_cm: float  # min signed hand-vertex distance to the object surface (negative = inside)
    contact: bool  # min signed distance <= the contact tolerance

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def grasp_metrics(
    hand: trimesh.Trimesh,
    obj: trimesh.Trimesh,
    *,
    pitch_m: float = 0.001,
    contact_tol_m: float = 0.005,
    object_convex_hull: bool = False,
    hand_name: str = "hand",
    object_name: str = "object",
) -> GraspMetrics:
    """Interpenetration volume, penetration depth, signed distance and contact of a hand and an object.

    Args:
        hand: hand mesh in metres; an open MANO hand (wrist hole) is sealed first.
        obj: object mesh in metres, watertight (or use ``object_convex_hull``).
        pitch_m: grid spacing of the volume estimate (HALO: 1 mm).
        contact_tol_m: contact when a hand vertex is inside the object or within this
            distance of it.  0 reproduces HALO's contact ratio, 0.005 (default) GraspTTA's.
        object_convex_hull: evaluate against the object's convex hull (HALO on ObMan-style sets).
        hand_name, object_name: labels for error messages (e.g. the file names).
    """
    if contact_tol_m < 0:
        raise ValueError(f"contact_tol_m must be >= 0, got {contact_tol_m}")
    hand_m = prepare_hand_mesh(hand, name=hand_name)
    obj_m = prepare_object_mesh(obj, convex_hull=object_convex_hull, name=object_name)
    signed = signed_distance_m(obj_m, hand_m.vertices, name=object_name)
    min_signed = float(signed.min())
    volume = intersection_volume_cm3(hand_m, obj_m, pitch_m, names=(hand_name, object_name))
    return GraspMetrics(
        volume_cm3=volume,
        depth_cm=max(0.0, -min_signed) * M_TO_CM,
        min_distance_cm=min_signed * M_TO_CM,
        contact=bool(min_signed <= contact_tol_m),
    )


def contact_ratio(metrics: Sequence[GraspMetrics]) -> float:
    """Fraction of grasps in contact (in [0,1])."""
    if len(metrics) == 0:
        raise ValueError("contact_ratio of an empty list of grasps")
    return sum(bool(m.contact) for m in metrics) / len(metrics)


def summarize_grasp_metrics(metrics: Sequence[GraspMetrics]) -> dict[str, float | int]:
    """Means over grasps: ``count``, ``mean_volume_cm3``, ``mean_depth_cm``, ``mean_min_distance_cm``,
    ``contact_ratio``, ``n_contact``, ``max_volume_cm3``, ``max_depth_cm``."""
    if len(metrics) == 0:
        raise ValueError("summarize_grasp_metrics of an empty list of grasps")
    vol = np.array([m.volume_cm3 for m in metrics], dtype=np.float64)
    depth = np.array([m.depth_cm for m in metrics], dtype=np.float64)
    dist = np.array([m.min_distance_cm for m in metrics], dtype=np.float64)
    n_contact = sum(bool(m.contact) for m in metrics)
    return {
        "count": len(metrics),
        "mean_volume_cm3": float(vol.mean()),
        "mean_depth_cm": float(depth.mean()),
        "mean_min_distance_cm": float(dist.mean()),
        "contact_ratio": n_contact / len(metrics),
        "n_contact": n_contact,
        "max_volume_cm3": float(vol.max()),
        "max_depth_cm": float(depth.max()),
    }
