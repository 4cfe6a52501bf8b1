"""The grasp folder: what ``halo generate grasps`` writes and ``halo eval grasps`` reads.

Object names contain no underscore (GRAB's names: ``apple``, ``wineglass``, ...).  A
*grasp id* groups the files of one grasp; all files are in metres, in one frame per
object (the frame of the object mesh).

Flat layout (what ``halo generate grasps`` writes)::

    DIR/<object>_obj.ply          the object mesh (or DIR/<object>.ply)
    DIR/<object>_<i>.npy          grasp <object>_<i>: keypoints (21,3), metres, MANO joint order
    DIR/<object>_<i>_hand.ply     grasp <object>_<i>: its hand mesh (optional when the .npy exists)

- The object of a grasp is the file name's prefix before the first ``_``.
- A hand mesh is ``<id>_hand.<ext>`` or ``<id>.<ext>`` (ext: ply, obj, stl, off), so
  other tools' outputs named ``<object>_<anything>.ply`` are read as hand meshes too.
- Keypoints ``<id>.npy`` next to a hand mesh are used for the diversity (cluster)
  analysis; a grasp with keypoints but no hand mesh is meshed with HALO
  (``--checkpoint``; meshes written to ``OUT/hands/``).

Subfolder layout (equivalent)::

    DIR/<object>/<object>_obj.ply  (or <object>.ply; or found in --objects / DIR)
    DIR/<object>/<i>.npy, DIR/<object>/<i>_hand.ply   grasp id <object>/<i>

Object meshes are looked up as ``<object>_obj.<ext>`` then ``<object>.<ext>`` in
``--objects`` (when given), then the object's subfolder, then ``DIR``; so
``--objects GRAB/tools/object_meshes/contact_meshes`` works when the grasps are in
the objects' template frame.  Other files (.png, .csv, ...) are ignored.

:func:`object_names` and :func:`grasp_files` name the files of the flat layout (the writer),
:func:`discover_grasps` and :func:`find_object_mesh` find them (the reader), so the two cannot drift.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from halo.geometry.mesh_io import MESH_SUFFIXES

__all__ = [
    "KEYPOINT_SUFFIX",
    "Discovery",
    "GraspFiles",
    "discover_grasps",
    "find_object_mesh",
    "grasp_files",
    "load_grasp_keypoints",
    "object_mesh_file",
    "object_names",
]

KEYPOINT_SUFFIX = ".npy"


def object_names(files: list[Path]) -> list[str]:
    """File stems made safe as object names (no ``_``: it separates object and grasp id); duplicates get
    a numeric suffix."""
    names, seen = [], {}
    for f in files:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", f.stem).strip("-") or "object"
        count = seen.get(base, 0)
        seen[base] = count + 1
        names.append(base if count == 0 else f"{base}-{count + 1}")
    return names


def object_mesh_file(folder: Path, obj: str) -> Path:
    """``<folder>/<obj>_obj.ply``: the object mesh of the flat layout."""
    return Path(folder) / f"{obj}_obj.ply"


def grasp_files(folder: Path, obj: str, index: int) -> tuple[Path, Path]:
    """(keypoints ``<obj>_<i>.npy``, hand mesh ``<obj>_<i>_hand.ply``) of one grasp in the flat layout."""
    stem = Path(folder) / f"{obj}_{index}"
    return stem.with_suffix(KEYPOINT_SUFFIX), stem.parent / f"{stem.name}_hand.ply"


@dataclass
class GraspFiles:
    """The files of one grasp (see the module docstring for the layout)."""

    object: str
    grasp: str  # grasp id: "<object>_<i>" (flat) or "<object>/<i>" (subfolder)
    folder: Path
    hand_mesh: Path | None = None
    keypoints: Path | None = None


@dataclass
class Discovery:
    grasps: list[GraspFiles] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"file", "reason"}


def discover_grasps(grasps_dir: Path) -> Discovery:
    """Group the grasp files of ``grasps_dir`` (flat and per-object subfolders) by grasp id."""
    found: dict[str, GraspFiles] = {}
    result = Discovery()

    def add(path: Path, folder_object: str | None) -> None:
        suffix = path.suffix.lower()
        is_mesh = suffix in MESH_SUFFIXES
        if not is_mesh and suffix != KEYPOINT_SUFFIX:
            return  # renders, CSVs, ...: not ours
        stem = path.stem
        if folder_object is None:
            obj = stem.split("_", 1)[0]
            if stem in (obj, f"{obj}_obj"):  # an object mesh (looked up per object later)
                if not is_mesh:
                    result.skipped.append(
                        {
                            "file": str(path),
                            "reason": "keypoint file name has no '_<i>' after the object name",
                        }
                    )
                return
            prefix = ""
        else:
            obj = folder_object
            if stem in (obj, f"{obj}_obj"):
                if not is_mesh:
                    result.skipped.append(
                        {
                            "file": str(path),
                            "reason": "keypoints named like the object mesh; expected <i>.npy",
                        }
                    )
                return
            prefix = f"{obj}/"
        grasp_stem = stem[: -len("_hand")] if is_mesh and stem.endswith("_hand") else stem
        gid = prefix + grasp_stem
        entry = found.setdefault(gid, GraspFiles(object=obj, grasp=gid, folder=path.parent))
        slot = "hand_mesh" if is_mesh else "keypoints"
        other = getattr(entry, slot)
        if other is not None:
            keep, drop = sorted([other, path])
            setattr(entry, slot, keep)
            what = "hand meshes" if is_mesh else "keypoint files"
            result.skipped.append(
                {"file": str(drop), "reason": f"grasp {gid} has two {what}; using {keep.name}"}
            )
            return
        setattr(entry, slot, path)

    for path in sorted(grasps_dir.iterdir()):
        if path.is_file():
            add(path, None)
        elif path.is_dir() and not path.name.startswith("."):
            for sub in sorted(path.iterdir()):
                if sub.is_file():
                    add(sub, path.name)
    result.grasps = [found[g] for g in sorted(found)]
    return result


def find_object_mesh(obj: str, grasp_folder: Path, grasps_dir: Path, objects_dir: Path | None) -> Path | None:
    """``<obj>_obj.<ext>`` or ``<obj>.<ext>`` in --objects, the grasp's folder, then the grasps folder."""
    folders = [d for d in (objects_dir, grasp_folder, grasps_dir) if d is not None]
    for folder in dict.fromkeys(folders):  # ordered, without repeats
        for base in (f"{obj}_obj", obj):
            for suffix in MESH_SUFFIXES:
                candidate = folder / f"{base}{suffix}"
                if candidate.is_file():
                    return candidate
    return None


def load_grasp_keypoints(path: Path) -> np.ndarray:
    """(21,3) float64 metres of a grasp keypoint file (one hand; unit-checked by :func:`load_keypoints`)."""
    from halo.data.keypoint_files import KeypointFileError, load_keypoints

    seq = load_keypoints(path)
    if len(seq.keypoints) != 1:
        raise KeypointFileError(f"{path}: a grasp file must hold one hand (21, 3), got {seq.keypoints.shape}")
    return seq.keypoints[0].astype(np.float64)
