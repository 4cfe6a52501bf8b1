"""The original HALO preprocessed dataset layout: one reader and one writer.

The published preprocessed YouTube3D test set and the datasets this project
builds (synthetic or from the user's MANO fits) share this layout, so one
reader serves both::

    <root>/<split>/datalist.txt             one sample name per line (finished samples only)
    <root>/<split>/points/<name>.npz        occupancy training points (+ per-hand metadata)
    <root>/<split>/points_iou/<name>.npz    uniform points for volumetric IoU
    <root>/<split>/pointcloud/<name>.npz    surface points + normals (Chamfer, normal consistency)
    <root>/<split>/mesh_scaled/<name>.off   the sealed ground-truth mesh

Units on disk are the original's model units (metres x 2.5, the hand in the
normalized frame of the canonicalization layer: wrist at the origin), except
``bone_lengths`` (metres, as in the release).  Everything this module returns
is in metres.

``points/<name>.npz`` keys (original names):

============== =============== ==========================================================
key            dtype / shape   meaning
============== =============== ==========================================================
points         f16 (N,3)       first ``N*uniform`` uniform in [-0.55,0.55]^3, then near-surface
occupancies    u8 (ceil(N/8),) ``np.packbits`` of the inside flags
loc, scale     f32 (3,), ()    im2mesh normalization (always 0 and 1 here)
shape          f32 (10,)       MANO shape coefficients (zeros when unknown)
joints_trans   f32 (16,4,4)    part transforms, normalized frame -> canonical, model units on both sides
bone_lengths   f32 (16,)       metres
hand_joints    f32 (21,3)      keypoints, public (MANO) joint order
verts          f32 (S,3)       labelled surface samples
vert_labels    i64 (S,)        their part ids 0..15 (MANO joint ids)
root_rot_mat   f32 (4,4)       input frame -> normalized frame, metres (extra key of this project)
============== =============== ==========================================================

``points_iou`` has ``points`` / ``occupancies`` / ``loc`` / ``scale``;
``pointcloud`` has ``points`` / ``normals`` / ``loc`` / ``scale`` (f16).

Every file is written to a temporary name in the same folder and renamed into
place, and ``points/`` is written last, so an interrupted build never leaves a
truncated file under a final name, and a sample counts as finished only when
all four files exist.  ``datalist.txt`` is rewritten (atomically) at the end
of a build.
"""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

from halo.core.skeleton import NUM_PARTS, metres_to_model_units, model_units_to_metres
from halo.geometry.mesh_io import save_mesh
from halo.utils.atomic import atomic_write_npz, atomic_write_text
from halo.utils.errors import InputError

__all__ = [
    "DATALIST",
    "MESH_DIR",
    "POINTCLOUD_DIR",
    "POINTS_DIR",
    "POINTS_IOU_DIR",
    "DatasetFormatError",
    "HandPoints",
    "atomic_write_npz",  # re-exported from halo.utils.atomic for old callers (halo.grasp.records)
    "atomic_write_text",
    "finished_samples",
    "open_npz",
    "read_datalist",
    "read_key",
    "read_mesh",
    "read_pointcloud",
    "read_points",
    "sample_paths",
    "write_datalist",
    "write_sample",
]

POINTS_DIR = "points"
POINTS_IOU_DIR = "points_iou"
POINTCLOUD_DIR = "pointcloud"
MESH_DIR = "mesh_scaled"
DATALIST = "datalist.txt"


class DatasetFormatError(InputError):
    """A dataset file is missing, truncated, or lacks a key / has a wrong shape (names file and key)."""


@dataclass
class HandPoints:
    """Contents of a ``points/`` (or ``points_iou/``) file, metres, float32.

    ``keypoints`` ... ``betas`` are None for ``points_iou`` files.
    """

    points: np.ndarray  # (N,3)
    occupancies: np.ndarray  # (N,) bool
    keypoints: np.ndarray | None = None  # (21,3)
    part_transforms: np.ndarray | None = None  # (16,4,4) metres on both sides
    bone_lengths: np.ndarray | None = None  # (16,)
    surface_points: np.ndarray | None = None  # (S,3)
    surface_labels: np.ndarray | None = None  # (S,)
    betas: np.ndarray | None = None  # (10,)


def sample_paths(split_dir: str | Path, name: str) -> dict[str, Path]:
    split_dir = Path(split_dir)
    return {
        "points": split_dir / POINTS_DIR / f"{name}.npz",
        "points_iou": split_dir / POINTS_IOU_DIR / f"{name}.npz",
        "pointcloud": split_dir / POINTCLOUD_DIR / f"{name}.npz",
        "mesh": split_dir / MESH_DIR / f"{name}.off",
    }


def _model_mats(mats_m: np.ndarray) -> np.ndarray:
    out = np.array(mats_m, dtype=np.float32)
    out[..., :3, 3] = metres_to_model_units(out[..., :3, 3])
    return out


def write_sample(
    split_dir: str | Path,
    name: str,
    *,
    points: np.ndarray,
    occupancies: np.ndarray,
    iou_points: np.ndarray,
    iou_occupancies: np.ndarray,
    surface_points: np.ndarray,
    surface_normals: np.ndarray,
    mesh_vertices: np.ndarray,
    mesh_faces: np.ndarray,
    keypoints: np.ndarray,
    part_transforms: np.ndarray,
    bone_lengths: np.ndarray,
    labelled_points: np.ndarray,
    labels: np.ndarray,
    betas: np.ndarray,
    normalization: np.ndarray,
) -> dict[str, Path]:
    """Write one sample (all inputs metres, normalized frame); ``points/`` last."""
    paths = sample_paths(split_dir, name)
    common = {"loc": np.zeros(3, np.float32), "scale": np.float32(1.0)}
    atomic_write_npz(
        paths["pointcloud"],
        {
            "points": metres_to_model_units(surface_points).astype(np.float16),
            "normals": surface_normals.astype(np.float16),
            **common,
        },
    )
    atomic_write_npz(
        paths["points_iou"],
        {
            "points": metres_to_model_units(iou_points).astype(np.float16),
            "occupancies": np.packbits(iou_occupancies),
            **common,
        },
    )
    save_mesh(trimesh.Trimesh(metres_to_model_units(mesh_vertices), mesh_faces, process=False), paths["mesh"])
    atomic_write_npz(
        paths["points"],
        {
            "points": metres_to_model_units(points).astype(np.float16),
            "occupancies": np.packbits(occupancies),
            **common,
            "shape": np.asarray(betas, np.float32),
            "joints_trans": _model_mats(part_transforms),
            "bone_lengths": np.asarray(bone_lengths, np.float32),
            "hand_joints": metres_to_model_units(keypoints).astype(np.float32),
            "verts": metres_to_model_units(labelled_points).astype(np.float32),
            "vert_labels": np.asarray(labels, np.int64),
            "root_rot_mat": np.asarray(normalization, np.float32),
        },
    )
    return paths


def open_npz(path: Path) -> np.lib.npyio.NpzFile:
    """Open an npz file (no pickles); a missing or unreadable file raises :class:`DatasetFormatError`."""
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DatasetFormatError(f"{path}: not a readable npz file ({exc})") from exc


def read_key(npz, path: Path, key: str, shape: tuple | None = None) -> np.ndarray:
    """``npz[key]`` checked against ``shape`` (None entries: any length); errors name file and key."""
    if key not in npz.files:
        raise DatasetFormatError(f"{path}: missing key {key!r} (has {sorted(npz.files)})")
    try:
        value = npz[key]
    except (
        OSError,
        ValueError,
        zipfile.BadZipFile,
        EOFError,
        zlib.error,
        SyntaxError,
        tokenize.TokenError,
    ) as exc:
        raise DatasetFormatError(f"{path}: key {key!r} is truncated or corrupt ({exc})") from exc
    if shape is not None and (
        value.ndim != len(shape)
        or any(e is not None and e != v for e, v in zip(shape, value.shape, strict=True))
    ):
        want = "(" + ", ".join("N" if e is None else str(e) for e in shape) + ")"
        raise DatasetFormatError(f"{path}: key {key!r} has shape {value.shape}, expected {want}")
    return value


def _loc_scale(npz, path: Path) -> tuple[np.ndarray, float]:
    """im2mesh's normalization of stored coordinates (absent keys: identity)."""
    loc = (
        read_key(npz, path, "loc", (3,)).astype(np.float32) if "loc" in npz.files else np.zeros(3, np.float32)
    )
    scale = read_key(npz, path, "scale") if "scale" in npz.files else np.float32(1.0)
    if (
        scale.size != 1
        or scale.dtype.kind not in "fiu"
        or not np.isfinite(loc).all()
        or not np.isfinite(scale).all()
    ):
        raise DatasetFormatError(f"{path}: keys 'loc'/'scale' must be a finite 3-vector and a finite number")
    return loc, float(scale.reshape(()))


def _unpack(packed: np.ndarray, n: int, path: Path) -> np.ndarray:
    if packed.dtype == np.uint8 and packed.size == (n + 7) // 8:
        return np.unpackbits(packed)[:n].astype(bool)
    if packed.size == n:  # unpacked occupancies (im2mesh's points_unpackbits=false)
        return packed.astype(bool)
    raise DatasetFormatError(
        f"{path}: key 'occupancies' has {packed.size} {packed.dtype} values, "
        f"which matches neither {n} points nor their packed bits"
    )


def read_points(path: str | Path, with_metadata: bool = True, with_surface: bool = True) -> HandPoints:
    """Read a ``points/`` or ``points_iou/`` file -> :class:`HandPoints` (metres).

    ``with_metadata``: also the hand's keypoints, transforms, bone lengths and shape;
    ``with_surface``: also the labelled surface samples (skip them on hot paths that
    do not use them: they are most of the metadata's bytes).
    """
    path = Path(path)
    with open_npz(path) as npz:
        pts = read_key(npz, path, "points", (None, 3))
        occ = _unpack(read_key(npz, path, "occupancies"), len(pts), path)
        loc, scale = _loc_scale(npz, path)
        points = model_units_to_metres(pts.astype(np.float32) * scale + loc).astype(np.float32)
        out = HandPoints(points=points, occupancies=occ)
        if with_metadata:
            mats = read_key(npz, path, "joints_trans", (NUM_PARTS, 4, 4)).astype(np.float32)
            mats[..., :3, 3] = model_units_to_metres(mats[..., :3, 3])
            out.part_transforms = mats
            out.keypoints = model_units_to_metres(
                read_key(npz, path, "hand_joints", (21, 3)).astype(np.float32)
            )
            out.bone_lengths = read_key(npz, path, "bone_lengths", (NUM_PARTS,)).astype(np.float32)
            if with_surface and "verts" in npz.files:
                out.surface_points = model_units_to_metres(
                    read_key(npz, path, "verts", (None, 3)).astype(np.float32)
                )
                out.surface_labels = read_key(npz, path, "vert_labels", (len(out.surface_points),)).astype(
                    np.int64
                )
            if "shape" in npz.files:
                out.betas = np.asarray(npz["shape"], np.float32).ravel()
    for name, arr in (("points", out.points), ("hand_joints", out.keypoints)):
        if arr is not None and not np.isfinite(arr).all():
            raise DatasetFormatError(f"{path}: key {name!r} contains NaN or inf")
    return out


def read_pointcloud(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a ``pointcloud/`` file -> (points (N,3) metres, unit normals (N,3)), float32."""
    path = Path(path)
    with open_npz(path) as npz:
        pts = read_key(npz, path, "points", (None, 3)).astype(np.float32)
        normals = read_key(npz, path, "normals", (len(pts), 3)).astype(np.float32)
        loc, scale = _loc_scale(npz, path)
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    return model_units_to_metres(pts * scale + loc), normals / np.maximum(norm, 1e-12)


def read_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read a ``mesh_scaled/`` mesh, returned in metres."""
    path = Path(path)
    if not path.is_file():
        raise DatasetFormatError(f"{path}: file not found")
    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as exc:  # trimesh raises many types for malformed files
        raise DatasetFormatError(f"{path}: not a readable mesh ({exc})") from exc
    if len(mesh.faces) == 0:
        raise DatasetFormatError(f"{path}: mesh has no faces")
    mesh.vertices = model_units_to_metres(mesh.vertices)
    return mesh


def read_datalist(split_dir: str | Path) -> list[str]:
    """Sample names of a split (``datalist.txt``); a clear error when the split is missing."""
    split_dir = Path(split_dir)
    path = split_dir / DATALIST
    if not path.is_file():
        hint = "" if split_dir.is_dir() else f" (the split folder {split_dir} does not exist either)"
        raise DatasetFormatError(f"{path}: missing split file{hint}")
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if not names:
        raise DatasetFormatError(f"{path}: split file lists no samples")
    return names


def write_datalist(split_dir: str | Path, names: list[str]) -> Path:
    path = Path(split_dir) / DATALIST
    atomic_write_text(path, "".join(f"{n}\n" for n in names))
    return path


def finished_samples(split_dir: str | Path) -> set[str]:
    """Names whose four files all exist (what a resumed build skips)."""
    split_dir = Path(split_dir)
    sets = []
    for sub, ext in (
        (POINTS_DIR, ".npz"),
        (POINTS_IOU_DIR, ".npz"),
        (POINTCLOUD_DIR, ".npz"),
        (MESH_DIR, ".off"),
    ):
        d = split_dir / sub
        sets.append({p.name[: -len(ext)] for p in d.glob(f"*{ext}")} if d.is_dir() else set())
    return set.intersection(*sets)
