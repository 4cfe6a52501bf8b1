"""Reading hand / object meshes for the grasp metrics: .ply .obj .stl .off -> one ``trimesh.Trimesh`` in metres.

Every problem with a file (missing, unreadable, no faces, NaN vertices, holes when a
closed mesh is required) raises :class:`MeshFileError` with the file named.

Units.  The grasp metrics work in metres, but meshes from other tools are often
in centimetres (HALO's own outputs) or millimetres (CAD / scanning).  Files carry
no unit, so :func:`load_mesh_m` guesses from the size: a hand or a graspable
object has a bounding-box diagonal of roughly 0.02-0.6 m, so a diagonal above
:data:`MAX_PLAUSIBLE_DIAGONAL_M` (3) cannot be metres; up to 60 it reads as
centimetres (x0.01), above as millimetres (x0.001).  ``rescale="warn"`` (default)
warns with the guessed unit and the fix and leaves the mesh alone, ``"auto"``
warns and rescales, ``"never"`` stays silent.  The guess is a heuristic (a 4 cm
object in millimetres has diagonal ~60 and reads as centimetres), so pass an
explicit ``scale`` when the unit is known.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import trimesh

from halo.geometry.inside import MeshNotWatertightError
from halo.utils.atomic import atomic_write_bytes
from halo.utils.errors import InputError

__all__ = [
    "save_mesh",
    "MESH_SUFFIXES",
    "MAX_PLAUSIBLE_DIAGONAL_M",
    "MeshFileError",
    "MeshNotWatertightFileError",
    "MeshUnitWarning",
    "guess_mesh_unit",
    "load_mesh_m",
]

#: File types :func:`load_mesh_m` reads.
MESH_SUFFIXES = (".ply", ".obj", ".stl", ".off")
#: Above this bounding-box diagonal (in file units) a hand/object mesh cannot be in metres.
MAX_PLAUSIBLE_DIAGONAL_M = 3.0
#: Diagonals in (3, 60] read as centimetres, above 60 as millimetres.
CM_MM_BOUNDARY = 60.0

_RESCALE_MODES = ("warn", "auto", "never")


class MeshFileError(InputError):
    """A mesh file that cannot be used; the message names the file and the problem."""


class MeshNotWatertightFileError(MeshFileError, MeshNotWatertightError):
    """``require_watertight=True`` and the file's mesh has holes (also a ``MeshNotWatertightError``)."""


class MeshUnitWarning(UserWarning):
    """The mesh is too large to be in metres; the message says the guessed unit and the fix."""


def guess_mesh_unit(diagonal: float) -> tuple[str, float] | None:
    """``(unit name, factor to metres)`` for an implausibly large bounding-box diagonal, else ``None``."""
    if not diagonal > MAX_PLAUSIBLE_DIAGONAL_M:
        return None
    if diagonal <= CM_MM_BOUNDARY:
        return "centimetres", 0.01
    return "millimetres", 0.001


def load_mesh_m(
    path: str | Path,
    *,
    name: str | None = None,
    scale: float = 1.0,
    rescale: str = "warn",
    require_watertight: bool = False,
) -> trimesh.Trimesh:
    """Load a triangle mesh (metres expected) from .ply / .obj / .stl / .off.

    Duplicate vertices are merged (STL stores none shared; OBJ splits them at UV seams),
    so a closed surface reads as watertight.  Scenes / multi-part files are concatenated.

    Args:
        path: the mesh file.
        name: label used in messages instead of the path (e.g. "object apple").
        scale: factor applied to the vertices first (0.01 for a file known to be in cm).
        rescale: what to do when the (scaled) mesh is too large to be in metres:
            "warn" (warn with the guessed unit, leave the mesh), "auto" (warn and rescale)
            or "never" (nothing).
        require_watertight: raise :class:`MeshNotWatertightFileError` when the mesh has
            holes or non-manifold edges (after merging duplicate vertices and
            ``trimesh.repair.fix_normals``).

    Returns:
        The mesh, (V,3) float64 vertices in metres (up to the unit heuristic), (F,3) faces.
    """
    path = Path(path)
    label = name or str(path)
    if rescale not in _RESCALE_MODES:
        raise ValueError(f"rescale must be one of {_RESCALE_MODES}, got {rescale!r}")
    if not np.isfinite(scale) or scale <= 0:
        raise ValueError(f"scale must be a positive number, got {scale!r}")
    if not path.is_file():
        raise MeshFileError(f"{label}: no such file" if name is None else f"{label} ({path}): no such file")
    suffix = path.suffix.lower()
    if suffix not in MESH_SUFFIXES:
        raise MeshFileError(
            f"{label}: unsupported mesh type {suffix!r} (use one of {', '.join(MESH_SUFFIXES)})"
        )
    try:
        # process=False first: trimesh's processing silently drops NaN/inf vertices and their faces
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as exc:  # trimesh raises many types (ValueError, KeyError, IndexError, ...)
        raise MeshFileError(
            f"{label}: cannot be read as a {suffix} mesh ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(loaded, trimesh.Trimesh) or len(loaded.faces) == 0 or len(loaded.vertices) == 0:
        raise MeshFileError(f"{label}: the file holds no triangles (empty or not a mesh)")
    mesh = loaded
    if not np.isfinite(mesh.vertices).all():
        raise MeshFileError(f"{label}: vertices contain NaN or infinite values")
    if mesh.faces.min() < 0 or mesh.faces.max() >= len(mesh.vertices):
        raise MeshFileError(f"{label}: faces index vertices that do not exist (damaged file?)")
    mesh.process()
    mesh.merge_vertices(merge_tex=True, merge_norm=True)
    if scale != 1.0:
        mesh.apply_scale(scale)

    diagonal = float(np.linalg.norm(mesh.extents))
    guess = guess_mesh_unit(diagonal)
    if guess is not None and rescale != "never":
        unit, factor = guess
        action = (
            f"rescaled by {factor:g}"
            if rescale == "auto"
            else f"left as is; rescale it with mesh.apply_scale({factor:g}) or load_mesh_m(..., scale={factor:g}) "
            f"(CLI: --scale {factor:g})"
        )
        warnings.warn(
            f"{label}: bounding-box diagonal {diagonal:.4g} is too large for metres (a hand or graspable "
            f"object is ~0.02-0.6 m); it looks like {unit}: {action}",
            MeshUnitWarning,
            stacklevel=2,
        )
        if rescale == "auto":
            mesh.apply_scale(factor)

    if require_watertight:
        trimesh.repair.fix_normals(mesh)
        if not mesh.is_watertight:
            raise MeshNotWatertightFileError(
                f"{label}: mesh is not watertight ({len(mesh.vertices)} vertices, {len(mesh.faces)} faces, "
                f"{_n_open_edges(mesh)} open or non-manifold edges); inside/outside is undefined "
                "(close the holes, e.g. trimesh.repair.fill_holes, or use its convex hull)"
            )
    return mesh


def _n_open_edges(mesh: trimesh.Trimesh) -> int:
    """Edges not shared by exactly two faces."""
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts != 2).sum())


def save_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write ``mesh`` atomically, in the format its suffix names (.ply .obj .stl .off .glb).

    The vertex order is kept as it is (build meshes with ``process=False`` where indices matter).
    """
    path = Path(path)
    file_type = path.suffix.lstrip(".").lower()
    if not file_type:
        raise ValueError(f"{path}: no suffix; use one of .ply .obj .stl .off .glb")
    data = mesh.export(file_type=file_type)
    return atomic_write_bytes(path, data.encode() if isinstance(data, str) else data)
