"""Inputs of ``halo fit``: a hand surface as points (metres), with free-space samples around it.

A :class:`HandSurface` is what one fit consumes: surface points (N,3) in metres,
optional outward normals, and whether the surface is closed (a watertight mesh:
points just inside it are occupied) or a single view (only the space between the
points and the camera is known to be free).

Readers: meshes (``.ply/.obj/.off/.stl``, surface sampled uniformly, normals from
the faces) and point clouds (``.npy`` (N,3) or (N,6) with normals, ``.npz`` with
``points`` and optional ``normals``, ``.ply`` without faces).  Every problem
(missing file, empty cloud, NaN, wrong units, a size no hand has) raises
:class:`FitInputError` with one line naming the file.

Units: files carry none.  ``units`` ("m", "cm", "mm") is applied first; with
``units=None`` the size decides (as :func:`halo.geometry.mesh_io.guess_mesh_unit`
does for meshes).  After conversion a hand's bounding-box diagonal must lie in
:data:`HAND_DIAGONAL_RANGE_M`; otherwise the error names the unit the size
suggests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial import cKDTree

from halo.geometry.mesh_io import MESH_SUFFIXES, guess_mesh_unit
from halo.utils.errors import InputError

UNITS = {"m": 1.0, "cm": 0.01, "mm": 0.001}
#: Bounding-box diagonal of a hand surface, metres: a child's fist (~7 cm) to a large open hand
#: with the forearm stump (~40 cm).  Also valid for single-view clouds (they span the visible side).
HAND_DIAGONAL_RANGE_M = (0.06, 0.45)
POINT_SUFFIXES = (".npy", ".npz", ".ply")
#: Minimum number of distinct points a fit accepts.
MIN_POINTS = 50


class FitInputError(InputError):
    """An unusable fit input; the message is one line naming the file and the problem."""


@dataclass
class HandSurface:
    """One hand's observed surface, metres, in the input's frame."""

    points: np.ndarray  # (N,3)
    normals: np.ndarray | None = None  # (N,3) outward unit normals, or None
    closed: bool = False  # watertight surface: just inside the points is occupied
    partial: bool = False  # single view: free space only between the points and the camera
    camera: np.ndarray = field(default_factory=lambda: np.zeros(3))  # camera centre (partial), metres
    name: str = "<points>"
    units_factor: float = 1.0  # file units -> metres

    def __post_init__(self) -> None:
        self.points = check_points(self.points, self.name)
        if self.normals is not None:
            n = np.asarray(self.normals, dtype=np.float64)
            if n.shape != self.points.shape or not np.isfinite(n).all():
                raise FitInputError(
                    f"{self.name}: normals must be finite with the points' shape {self.points.shape}, "
                    f"got {n.shape}"
                )
            norm = np.linalg.norm(n, axis=1, keepdims=True)
            if (norm < 1e-9).any():
                raise FitInputError(f"{self.name}: {int((norm < 1e-9).sum())} normals have zero length")
            self.normals = n / norm
        self.camera = np.asarray(self.camera, dtype=np.float64).reshape(3)

    @property
    def diagonal(self) -> float:
        return float(np.linalg.norm(self.points.max(0) - self.points.min(0)))


def check_points(points, name: str) -> np.ndarray:
    """(N,3) finite float64 points with at least :data:`MIN_POINTS` distinct ones, else FitInputError."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise FitInputError(f"{name}: points must have shape (N,3), got {pts.shape}")
    if len(pts) == 0:
        raise FitInputError(f"{name}: the point cloud is empty")
    bad = ~np.isfinite(pts).all(axis=1)
    if bad.any():
        raise FitInputError(f"{name}: {int(bad.sum())} of {len(pts)} points contain NaN or infinite values")
    if len(np.unique(np.round(pts, 9), axis=0)) < MIN_POINTS:
        raise FitInputError(f"{name}: fewer than {MIN_POINTS} distinct points ({len(pts)} given)")
    return pts


def check_hand_size(surface: HandSurface, units: str | None) -> None:
    """Raise when the (converted) cloud cannot be a hand in metres; the message suggests the unit."""
    lo, hi = HAND_DIAGONAL_RANGE_M
    d = surface.diagonal
    if lo <= d <= hi:
        return
    raw = d / surface.units_factor
    hints = [u for u, f in UNITS.items() if lo <= raw * f <= hi]
    given = f"--units {units}" if units else "metres"
    hint = f"; it looks like {hints[0]} (pass --units {hints[0]})" if hints else ""
    raise FitInputError(
        f"{surface.name}: bounding-box diagonal {d:.4g} m (read as {given}) is not a hand's "
        f"({lo}-{hi} m){hint}"
    )


def _units_factor(raw_diagonal: float, units: str | None, name: str) -> float:
    if units is not None:
        if units not in UNITS:
            raise FitInputError(f"{name}: unknown units {units!r} (use one of {', '.join(UNITS)})")
        return UNITS[units]
    guess = guess_mesh_unit(raw_diagonal)
    return 1.0 if guess is None else guess[1]


def _load_array_cloud(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        if path.suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
            if arr.ndim == 2 and arr.shape[1] == 6:
                return arr[:, :3], arr[:, 3:]
            return arr, None
        with np.load(path, allow_pickle=False) as z:
            if "points" not in z:
                raise FitInputError(f"{path}: no key 'points' (keys: {sorted(z.files)})")
            return z["points"], (z["normals"] if "normals" in z else None)
    except FitInputError:
        raise
    except Exception as exc:  # numpy raises ValueError / OSError / zipfile errors
        raise FitInputError(f"{path}: cannot be read as a point array ({type(exc).__name__}: {exc})") from exc


def load_hand_surface(
    path: str | Path,
    *,
    units: str | None = None,
    partial: bool = False,
    camera=(0.0, 0.0, 0.0),
    num_samples: int = 20_000,
    seed: int = 0,
) -> HandSurface:
    """Read a mesh or point cloud file as a :class:`HandSurface` in metres.

    Meshes are sampled uniformly (``num_samples`` points with face normals, oriented
    outwards when the mesh is watertight).  ``partial`` marks a single-view cloud seen
    from ``camera`` (file units converted like the points; default the origin, a depth
    sensor's frame).
    """
    path = Path(path)
    name = str(path)
    if not path.is_file():
        raise FitInputError(f"{name}: no such file")
    suffix = path.suffix.lower()
    if suffix not in set(MESH_SUFFIXES) | set(POINT_SUFFIXES):
        raise FitInputError(
            f"{name}: unsupported file type {suffix!r} (meshes {', '.join(MESH_SUFFIXES)}; "
            f"points {', '.join(POINT_SUFFIXES)})"
        )
    normals = None
    closed = False
    if suffix in (".npy", ".npz"):
        points, normals = _load_array_cloud(path)
    else:
        try:
            loaded = trimesh.load(path, force=None, process=False)
        except Exception as exc:  # trimesh raises many types
            raise FitInputError(f"{name}: cannot be read ({type(exc).__name__}: {exc})") from exc
        if isinstance(loaded, trimesh.Scene):
            loaded = loaded.to_geometry() if len(loaded.geometry) else trimesh.PointCloud(np.zeros((0, 3)))
        if isinstance(loaded, trimesh.Trimesh) and len(loaded.faces):
            mesh = loaded
            if not np.isfinite(mesh.vertices).all():
                raise FitInputError(f"{name}: vertices contain NaN or infinite values")
            mesh.merge_vertices()
            closed = _is_closed(mesh) and not partial
            if closed and mesh.volume < 0:  # inward winding: flip so normals point out
                mesh.invert()
            rng = np.random.default_rng(seed)
            points, face = trimesh.sample.sample_surface(mesh, num_samples, seed=rng)
            # Face normals are usable when the winding is consistent (outward when closed and fixed).
            normals = (
                np.asarray(mesh.face_normals[face]) if mesh.is_winding_consistent and not partial else None
            )
        else:
            points = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))))
            extra = getattr(loaded, "metadata", {}).get("_ply_raw", {})
            vertex = extra.get("vertex", {}).get("data") if isinstance(extra, dict) else None
            if vertex is not None and all(k in vertex.dtype.names for k in ("nx", "ny", "nz")):
                normals = np.stack([vertex["nx"], vertex["ny"], vertex["nz"]], axis=1)
    points = check_points(points, name)
    factor = _units_factor(float(np.linalg.norm(points.max(0) - points.min(0))), units, name)
    surface = HandSurface(
        points * factor,
        normals,
        closed=closed,
        partial=partial,
        camera=np.asarray(camera, dtype=np.float64) * factor,
        name=name,
        units_factor=factor,
    )
    check_hand_size(surface, units)
    return surface


def _is_closed(mesh: trimesh.Trimesh) -> bool:
    """No boundary edges and a consistent winding: inside is defined.

    Marching-cubes meshes can touch themselves at a vertex or edge (an edge shared by
    four faces), which trimesh does not call watertight but which still bounds a volume.
    """
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return bool(mesh.is_winding_consistent) and not (counts == 1).any()


def hand_surface_from_mesh(
    mesh: trimesh.Trimesh, num_samples: int = 20_000, seed: int = 0, name: str = "<mesh>"
):
    """A :class:`HandSurface` sampled from a mesh already in metres (closed when it bounds a volume)."""
    mesh = mesh.copy()
    mesh.merge_vertices()
    closed = _is_closed(mesh)
    if closed and mesh.volume < 0:
        mesh.invert()
    points, face = trimesh.sample.sample_surface(mesh, num_samples, seed=np.random.default_rng(seed))
    normals = np.asarray(mesh.face_normals[face]) if mesh.is_winding_consistent else None
    return HandSurface(points, normals, closed=closed, name=name)


def single_view_cloud(
    mesh: trimesh.Trimesh, camera, num_points: int = 3000, pixel_m: float = 0.0015, seed: int = 0
) -> HandSurface:
    """What a depth camera at ``camera`` (metres) sees of ``mesh``: the nearest sample per ray bin.

    Dense surface samples are binned by direction from the camera (bins of ``pixel_m`` at
    the mesh's distance) and only the nearest sample per bin is kept: a point z-buffer.
    """
    camera = np.asarray(camera, dtype=np.float64)
    rng = np.random.default_rng(seed)
    pts, _ = trimesh.sample.sample_surface(mesh, 40 * num_points, seed=rng)
    rel = pts - camera
    depth = np.linalg.norm(rel, axis=1)
    view = mesh.centroid - camera
    view /= np.linalg.norm(view)
    # An orthonormal image basis around the viewing direction.
    helper = np.array([0.0, 1.0, 0.0]) if abs(view[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    ex = np.cross(view, helper)
    ex /= np.linalg.norm(ex)
    ey = np.cross(view, ex)
    z = rel @ view
    scale = float(np.median(z)) / pixel_m
    u = np.floor(rel @ ex / z * scale).astype(np.int64)
    v = np.floor(rel @ ey / z * scale).astype(np.int64)
    u, v = u - u.min() + 1, v - v.min() + 1
    zbuf = np.full((u.max() + 2, v.max() + 2), np.inf)
    np.minimum.at(zbuf, (u, v), depth)
    # A sample is visible when it is the nearest in its bin and not behind the nearest surface
    # of the neighbouring bins (bins at a silhouette may hold only back-side samples).
    near = zbuf.copy()
    for du in (-1, 0, 1):
        for dv in (-1, 0, 1):
            near = np.minimum(near, np.roll(np.roll(zbuf, du, 0), dv, 1))
    keep = (depth <= zbuf[u, v]) & (depth <= near[u, v] + 4 * pixel_m)
    visible = pts[keep]
    if len(visible) > num_points:
        visible = visible[rng.choice(len(visible), num_points, replace=False)]
    return HandSurface(visible, None, closed=False, partial=True, camera=camera, name="<single view>")


def outside_silhouette(
    surface: HandSurface, num: int, rng: np.random.Generator, tree: cKDTree | None = None
) -> np.ndarray:
    """(<=num,3) points around a single-view cloud whose camera ray meets none of its points.

    Uniform in the bounding box padded by 3 cm (any depth, also behind the points); a sample is
    kept when, at its depth, the nearest ray through a visible point passes farther than
    ``max(4 mm, 3 x`` the cloud's median point spacing``)``: the camera sees past it, so it is free.
    """
    pts = surface.points
    tree = tree if tree is not None else cKDTree(pts)
    spacing = float(np.median(tree.query(pts[: min(len(pts), 2000)], k=2)[0][:, 1]))
    gap = max(0.004, 3.0 * spacing)
    rel = pts - surface.camera
    dirs = rel / np.linalg.norm(rel, axis=1, keepdims=True).clip(1e-9)
    lo, hi = pts.min(0) - 0.03, pts.max(0) + 0.03
    q = rng.uniform(lo, hi, (6 * num, 3))
    qr = q - surface.camera
    depth = np.linalg.norm(qr, axis=1)
    chord, _ = cKDTree(dirs).query(qr / depth[:, None].clip(1e-9))
    return q[chord * depth > gap][:num]


def view_normals(surface: HandSurface, tree: cKDTree | None = None, k: int = 12) -> np.ndarray:
    """(N,3) unit normals of a single-view cloud from its k nearest neighbours, facing the camera."""
    pts = surface.points
    tree = tree if tree is not None else cKDTree(pts)
    _, nb = tree.query(pts, k=min(k, len(pts)))
    local = pts[nb] - pts[nb].mean(1, keepdims=True)
    _, vecs = np.linalg.eigh(np.einsum("nki,nkj->nij", local, local))
    normals = vecs[:, :, 0]
    flip = ((surface.camera - pts) * normals).sum(1) < 0
    normals[flip] *= -1
    return normals


def behind_visible_points(
    surface: HandSurface, num: int, rng: np.random.Generator, tree: cKDTree | None = None
) -> np.ndarray:
    """(<=num,3) points 1-3 mm behind a single view's points (inside the hand: label 1).

    Along the estimated inward normal, only where the surface faces the camera (a grazing view
    can see an edge thinner than that) and no other point is nearer than 80% of the depth.
    """
    pts = surface.points
    tree = tree if tree is not None else cKDTree(pts)
    normals = view_normals(surface, tree)
    ray = surface.camera - pts
    ray /= np.linalg.norm(ray, axis=1, keepdims=True).clip(1e-9)
    facing = np.flatnonzero((normals * ray).sum(1) > 0.5)
    if len(facing) == 0:
        return np.zeros((0, 3))
    idx = facing[rng.integers(0, len(facing), num)]
    t = rng.uniform(0.001, 0.003, (num, 1))
    q = pts[idx] - t * normals[idx]
    d, _ = tree.query(q)
    return q[d >= 0.8 * t[:, 0]]


def free_space_samples(
    surface: HandSurface,
    num: int,
    seed: int = 0,
    min_offset_m: float = 0.003,
    max_offset_m: float = 0.02,
    silhouette_fraction: float = 0.5,
    inside_fraction: float = 0.25,
    ray_max_m: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """Points known to be outside the hand (label 0) and, for closed surfaces, just inside (label 1).

    * normals: along each normal, ``min_offset_m``..``max_offset_m`` outwards; a sample is kept
      only when no other surface point is nearer than 80% of its offset (so a gap between two
      touching fingers is not called free).  Closed surfaces add samples 1-3 mm inwards.
    * partial (single view): ``inside_fraction`` 1-3 mm behind the points (label 1,
      :func:`behind_visible_points`: without them the free samples, all in front, push the
      hand away while the loss is soft); then on the segment from a point towards the camera,
      4 mm..``ray_max_m`` (denser near the point), and
      (``silhouette_fraction`` of them) outside the cloud's silhouette as seen from the camera
      (:func:`outside_silhouette`): without them, nothing stops a fitted hand reaching sideways
      past the visible points.
    * neither: uniform in the padded bounding box, farther than 16 mm from every point
      (deeper than any point inside a palm).

    Returns (M,3) points and (M,) float labels.
    """
    rng = np.random.default_rng(seed)
    pts = surface.points
    tree = cKDTree(pts)
    out_pts: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    if surface.partial:
        n_in = int(inside_fraction * num)
        if n_in:
            q = behind_visible_points(surface, n_in, rng, tree)
            out_pts.append(q)
            labels.append(np.ones(len(q)))
        num -= n_in
        n_ray = num - int(silhouette_fraction * num)
        idx = rng.integers(0, len(pts), n_ray)
        ray = surface.camera - pts[idx]
        ray /= np.linalg.norm(ray, axis=1, keepdims=True).clip(1e-9)
        t = 0.004 + (ray_max_m - 0.004) * rng.uniform(0, 1, (n_ray, 1)) ** 2  # denser near the points
        q = pts[idx] + t * ray
        d, _ = tree.query(q)
        keep = d >= 0.0025
        out_pts.append(q[keep])
        labels.append(np.zeros(int(keep.sum())))
        if num > n_ray:
            q = outside_silhouette(surface, num - n_ray, rng, tree)
            out_pts.append(q)
            labels.append(np.zeros(len(q)))
    elif surface.normals is not None:
        n_out = num if not surface.closed else (3 * num) // 4
        idx = rng.integers(0, len(pts), n_out)
        t = rng.uniform(min_offset_m, max_offset_m, (n_out, 1))
        q = pts[idx] + t * surface.normals[idx]
        d, _ = tree.query(q)
        keep = d >= 0.8 * t[:, 0]
        out_pts.append(q[keep])
        labels.append(np.zeros(int(keep.sum())))
        if surface.closed:
            n_in = num - n_out
            idx = rng.integers(0, len(pts), n_in)
            t = rng.uniform(0.001, 0.003, (n_in, 1))
            q = pts[idx] - t * surface.normals[idx]
            d, _ = tree.query(q)
            keep = d >= 0.8 * t[:, 0]
            out_pts.append(q[keep])
            labels.append(np.ones(int(keep.sum())))
    else:
        lo, hi = pts.min(0) - 0.03, pts.max(0) + 0.03
        q = rng.uniform(lo, hi, (8 * num, 3))
        d, _ = tree.query(q)
        q = q[d > 0.016][:num]
        out_pts.append(q)
        labels.append(np.zeros(len(q)))
    return np.concatenate(out_pts), np.concatenate(labels)
