"""GRAB-layout sequences -> per-frame grasp records for training (object-centred, metres).

:func:`build_grasp_records` reads every selected frame of a GRAB root (real or
synthetic, through :mod:`halo.grasp.grab`) and writes::

    OUT/objects.npz          names (n,) + per object, in its TEMPLATE frame (metres):
                             vertices_<name> (V,3), faces_<name> (F,3),
                             surface_<name> (S,3) area-uniform surface samples,
                             inside_<name> (M,3) uniform samples inside the volume
    OUT/<split>/*.npy        one array per field, memory-mapped by the dataset:
        keypoints          f32 (N,21,3)   hand keypoints, object-centred frame
        hand_vertices      f32 (N,V,3)    MANO vertices, same frame (store_hand_vertices)
        object_index       i32 (N,)       index into objects.npz ``names``
        object_rotation    f32 (N,3,3)    template -> object-centred frame (column vectors)
        object_translation f32 (N,3)      ... p_centred = R @ p_template + t
        center_world       f64 (N,3)      the frame's origin in GRAB world coordinates
        frame              i32 (N,)       frame index in its sequence
        sequence           str (N,)       ``<subject>/<file stem>``
    OUT/hand_faces.npy       (F,3) faces of the hand model (the wrist may be open: real MANO)
    OUT/meta.json            configuration, counts, skipped files; written LAST

The object-centred frame has its origin at the centre of the posed object's
axis-aligned bounding box ((min + max) / 2) and keeps GRAB's world orientation
(the original HALO-VAE's convention).

Nothing half-written: every file is written under a hidden temporary name and renamed into
place, and ``meta.json`` (written last) marks a finished build, so an interrupted build is never
mistaken for a finished one.  Resumable: each sequence's frames are kept in
``OUT/.parts/<key>.npz`` as soon as they are computed, so a rerun after ``kill -9`` (or a full
disk, reported as :class:`RecordsWriteError`) recomputes only the unfinished sequences; the
parts are removed once ``meta.json`` exists.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import trimesh

from halo.data.layout import atomic_write_npz, atomic_write_text
from halo.geometry.inside import sample_inside_points
from halo.grasp.grab import (
    GRAB_TEST_OBJECTS,
    GRAB_VAL_OBJECTS,
    GrabFileError,
    GrabHandPoser,
    find_sequences,
    load_grab_sequence,
    load_object_mesh,
    object_name_of,
    object_rotation,
    object_split,
    select_frames,
)
from halo.hands.mano import ManoModel
from halo.utils.cache import cache_key
from halo.utils.progress import progress_bar

__all__ = [
    "SPLITS",
    "RecordsWriteError",
    "RecordsConfig",
    "RecordsReport",
    "GraspObject",
    "build_grasp_records",
    "records_key",
    "records_finished",
    "load_objects",
]

SPLITS = ("train", "val", "test")
META = "meta.json"
PARTS = ".parts"
ARRAYS = (
    "keypoints",
    "hand_vertices",
    "object_index",
    "object_rotation",
    "object_translation",
    "center_world",
    "frame",
    "sequence",
)


@dataclass(frozen=True)
class RecordsConfig:
    """What goes into the records (every field is part of the cache key).

    Attributes:
        only_contact: keep frames in which the right hand touches the object.
        frame_stride: keep every n-th selected frame (4 turns 120 fps into 30 fps).
        require_thumb_and_finger / min_finger_vertices: GrabNet's stricter filter.
        intents / subjects: GRAB sequence filters (None = all).
        pose_source: ``fullpose`` (exact) or ``pca``.
        n_surface_points / n_inside_points: samples stored per object.
        store_hand_vertices: also store the posed MANO vertices (9 KB per frame).
        test_objects / val_objects: the object split; train = every other object.
        seed: sampling seed.
    """

    only_contact: bool = True
    frame_stride: int = 4
    require_thumb_and_finger: bool = False
    min_finger_vertices: int = 1
    intents: tuple[str, ...] | None = None
    subjects: tuple[str, ...] | None = None
    pose_source: str = "fullpose"
    n_surface_points: int = 4096
    n_inside_points: int = 4096
    store_hand_vertices: bool = True
    test_objects: tuple[str, ...] = GRAB_TEST_OBJECTS
    val_objects: tuple[str, ...] = GRAB_VAL_OBJECTS
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("intents", "subjects", "test_objects", "val_objects"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, tuple):
                object.__setattr__(self, name, tuple(value))
        if self.frame_stride < 1:
            raise ValueError(f"RecordsConfig: frame_stride must be >= 1, got {self.frame_stride}")
        for name in ("n_surface_points", "n_inside_points"):
            if getattr(self, name) < 1:
                raise ValueError(f"RecordsConfig: {name} must be >= 1, got {getattr(self, name)}")


class RecordsWriteError(OSError):
    """Writing the records failed (disk full, file size limit, ...); nothing partial was kept."""


@dataclass
class RecordsReport:
    """What a build did."""

    out_dir: Path
    frames: dict[str, int] = field(default_factory=dict)
    sequences: int = 0
    resumed: int = 0  # sequences taken from an interrupted build's parts instead of recomputed
    skipped: list[str] = field(default_factory=list)
    reused: bool = False

    def summary(self) -> str:
        if self.reused:
            return f"grasp records reused from {self.out_dir}"
        counts = ", ".join(f"{k} {v}" for k, v in self.frames.items())
        text = f"grasp records: {self.sequences} sequences -> frames {counts} in {self.out_dir}"
        if self.skipped:
            text += f"; {len(self.skipped)} file(s) skipped:\n  " + "\n  ".join(self.skipped)
        return text


@dataclass
class GraspObject:
    """An object for generation-time evaluation, centred at its bounding-box centre (metres)."""

    name: str
    mesh: trimesh.Trimesh
    surface_points: np.ndarray  # (S,3)
    inside_points: np.ndarray  # (M,3)


def records_key(root: str | Path, config: RecordsConfig, mano_source: str = "") -> str:
    """Hash of the source root, its file list and the configuration (names a records cache)."""
    root = Path(root).resolve()
    files = find_sequences(root)
    listing = [(str(p.relative_to(root)), p.stat().st_size) for p in files]
    return cache_key([str(root), listing, asdict(config), mano_source])


def records_finished(out_dir: str | Path) -> bool:
    return (Path(out_dir) / META).is_file()


def _closed_object(mesh: trimesh.Trimesh, name: str) -> trimesh.Trimesh:
    """The object as a closed volume for inside sampling: repaired, or its convex hull with a warning."""
    if mesh.is_watertight:
        return mesh
    fixed = mesh.copy()
    fixed.merge_vertices()
    trimesh.repair.fill_holes(fixed)
    trimesh.repair.fix_normals(fixed)
    if fixed.is_watertight:
        return fixed
    warnings.warn(
        f"{name}: object mesh is not watertight even after repair; its convex hull is used for the "
        "inside-volume samples",
        stacklevel=3,
    )
    return mesh.convex_hull


def _object_arrays(
    root: Path, names_paths: dict[str, str], config: RecordsConfig, loaded: dict[str, trimesh.Trimesh]
) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {"names": np.array(sorted(names_paths))}
    for i, name in enumerate(sorted(names_paths)):
        mesh = loaded[name] if name in loaded else load_object_mesh(root, names_paths[name], name)
        rng = np.random.default_rng([config.seed, i])
        surface, _ = trimesh.sample.sample_surface(mesh, config.n_surface_points, seed=rng)
        closed = _closed_object(mesh, str(root / names_paths[name]))
        inside = sample_inside_points(closed, config.n_inside_points, rng, str(root / names_paths[name]))
        arrays[f"vertices_{name}"] = np.asarray(mesh.vertices, dtype=np.float64)
        arrays[f"faces_{name}"] = np.asarray(mesh.faces, dtype=np.int64)
        arrays[f"surface_{name}"] = np.asarray(surface, dtype=np.float32)
        arrays[f"inside_{name}"] = inside.astype(np.float32)
    return arrays


def _write_split(out_dir: Path, split: str, columns: dict[str, list[np.ndarray]]) -> int:
    tmp = out_dir / f".{split}.tmp-{os.getpid()}"
    final = out_dir / split
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = 0
    try:
        for key, parts in columns.items():
            if not parts:
                continue
            arr = np.concatenate(parts)
            n = len(arr)
            np.save(tmp / f"{key}.npy", arr, allow_pickle=False)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return n


def _atomic_save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _remove_stale_temporaries(out_dir: Path) -> None:
    """Temporary files/folders of builds that were killed (their process is gone)."""
    for tmp in [*out_dir.glob(".*.tmp*"), *(out_dir / PARTS).glob(".*.tmp*")]:
        pid = tmp.name.rsplit("tmp", 1)[-1].lstrip("-").split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
                continue  # another build is writing it right now
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _part_path(out_dir: Path, root: Path, path: Path, config: RecordsConfig, mano_source: str) -> Path:
    """Where one sequence's frames are kept until the build finishes (keyed by file, config and MANO)."""
    stat = path.stat()
    key = cache_key(
        [str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns, asdict(config), mano_source]
    )
    return out_dir / PARTS / f"{key}.npz"


def _read_part(part: Path) -> dict[str, np.ndarray] | None:
    if not part.is_file():
        return None
    try:
        with np.load(part, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:  # written atomically, so only outside damage
        warnings.warn(f"{part}: unreadable part of an earlier build, recomputed ({exc})", stacklevel=3)
        return None


def build_grasp_records(
    root: str | Path,
    out_dir: str | Path,
    config: RecordsConfig | None = None,
    *,
    mano_model: str | Path | ManoModel | None = None,
    progress: bool = True,
) -> RecordsReport:
    """Read a GRAB-layout root and write the records described in the module docstring.

    A sequence file that cannot be read is reported, skipped and counted; the build
    fails only when no frame at all could be read.  An existing finished build in
    ``out_dir`` is reused.
    """
    config = config or RecordsConfig()
    root, out_dir = Path(root), Path(out_dir)
    report = RecordsReport(out_dir=out_dir)
    if records_finished(out_dir):
        report.reused = True
        return report
    files = find_sequences(root, subjects=config.subjects, intents=config.intents)
    if not files:
        raise GrabFileError(
            f"{root}: no sequence files match subjects={config.subjects} intents={config.intents}"
        )
    split_of = object_split(
        {object_name_of(p) for p in files}, test=config.test_objects, val=config.val_objects
    )
    split_by_object = {name: split for split, names in split_of.items() for name in names}
    poser = GrabHandPoser(root, mano_model, pose_source=config.pose_source)

    object_ids = {name: i for i, name in enumerate(sorted(split_by_object))}
    columns: dict[str, dict[str, list[np.ndarray]]] = {s: {k: [] for k in ARRAYS} for s in SPLITS}
    object_paths: dict[str, str] = {}
    meshes: dict[str, trimesh.Trimesh] = {}  # read once, used for the frame centres and the samples
    hull_cache: dict[str, np.ndarray] = {}
    out_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out_dir)
    mano_source = str(getattr(poser.model, "source", ""))
    for path in progress_bar(files, desc="grasp records", unit="seq", enabled=progress):
        part = _part_path(out_dir, root, path, config, mano_source)
        stored = _read_part(part)
        if stored is not None:
            report.resumed += 1
            if "object_name" not in stored:
                continue  # a sequence without usable frames
            name = str(stored["object_name"])
            object_paths.setdefault(name, str(stored["object_mesh"]))
            cols = columns[split_by_object[name]]
            for key in ARRAYS:
                if key in stored:
                    cols[key].append(stored[key])
            cols["object_index"].append(np.full(len(stored["frame"]), object_ids[name], dtype=np.int32))
            report.sequences += 1
            continue
        try:
            seq = load_grab_sequence(path)
            name = seq.object_name
            if name not in split_by_object:
                continue  # body / table
            frames = select_frames(
                seq,
                only_contact=config.only_contact,
                stride=config.frame_stride,
                require_thumb_and_finger=config.require_thumb_and_finger,
                min_finger_vertices=config.min_finger_vertices,
            )
            if len(frames) == 0:
                _write_part(part, {"n": np.int64(0)}, out_dir)
                continue
            if name not in hull_cache:
                mesh = meshes[name] = load_object_mesh(root, seq.object_mesh, name)
                # The posed bounding box is spanned by convex-hull vertices: far fewer to rotate.
                hull_cache[name] = np.asarray(mesh.convex_hull.vertices, dtype=np.float64)
                object_paths[name] = seq.object_mesh
            verts, kps = poser.pose(seq, frames)
        except RecordsWriteError:
            raise
        except (GrabFileError, ValueError, OSError) as err:
            report.skipped.append(f"{path}: {err}")
            continue
        rot = object_rotation(seq.object_global_orient[frames])  # (n,3,3) column-vector form
        transl = seq.object_transl[frames]
        hull_world = np.einsum("nij,vj->nvi", rot, hull_cache[name]) + transl[:, None]
        center = 0.5 * (hull_world.min(axis=1) + hull_world.max(axis=1))  # (n,3)
        computed = {
            "keypoints": (kps - center[:, None]).astype(np.float32),
            "object_rotation": rot.astype(np.float32),
            "object_translation": (transl - center).astype(np.float32),
            "center_world": center,
            "frame": frames.astype(np.int32),
            "sequence": np.array([seq.name] * len(frames)),
        }
        if config.store_hand_vertices:
            computed["hand_vertices"] = (verts - center[:, None]).astype(np.float32)
        _write_part(
            part,
            {**computed, "object_name": np.array(name), "object_mesh": np.array(seq.object_mesh)},
            out_dir,
        )
        cols = columns[split_by_object[name]]
        for key, value in computed.items():
            cols[key].append(value)
        cols["object_index"].append(np.full(len(frames), object_ids[name], dtype=np.int32))
        report.sequences += 1

    if report.sequences == 0:
        details = "\n  ".join(report.skipped[:10])
        raise GrabFileError(
            f"{root}: no frames could be read from {len(files)} sequence file(s)"
            + (f":\n  {details}" if details else " (no contact frames?)")
        )
    # Object indices refer to every object of the split map; keep the table complete and ordered.
    missing = sorted(set(split_by_object) - set(object_paths))
    for name in missing:  # objects whose sequences had no usable frame: still listed, by their file
        candidates = sorted((root / "tools" / "object_meshes" / "contact_meshes").glob(f"{name}.*"))
        if candidates:
            object_paths[name] = str(candidates[0].relative_to(root))
    all_names = sorted(split_by_object)
    absent = [n for n in all_names if n not in object_paths]
    if absent:
        raise GrabFileError(f"{root}: no object mesh found for {absent}")
    try:
        atomic_write_npz(out_dir / "objects.npz", _object_arrays(root, object_paths, config, meshes))
        _atomic_save_npy(out_dir / "hand_faces.npy", np.asarray(poser.faces))
        for split in SPLITS:
            report.frames[split] = _write_split(out_dir, split, columns[split])
    except OSError as exc:
        raise _write_error(out_dir, exc, report.sequences) from exc
    meta = {
        "root": str(root.resolve()),
        "config": asdict(config),
        "mano_model": poser.model.source,
        "objects": {split: split_of[split] for split in SPLITS},
        "frames": report.frames,
        "sequences": report.sequences,
        "skipped": report.skipped,
    }
    try:
        atomic_write_text(out_dir / META, json.dumps(meta, indent=2, default=str))
    except OSError as exc:
        raise _write_error(out_dir, exc, report.sequences) from exc
    shutil.rmtree(out_dir / PARTS, ignore_errors=True)
    return report


def _write_error(out_dir: Path, exc: OSError, finished: int) -> RecordsWriteError:
    # numpy/zipfile report a short write as "N requested and 0 written"; the errno (EFBIG, ENOSPC)
    # is on an exception further down the chain.
    cause: BaseException | None = exc
    while cause is not None and not getattr(cause, "errno", None):
        cause = cause.__cause__ or cause.__context__
    errno = getattr(cause, "errno", None)
    reason = f"{os.strerror(errno)}: {exc}" if errno else f"{exc}; disk full or file size limit?"
    message = (
        f"{out_dir}: writing the grasp records failed ({reason}); no partial file was kept: "
        f"free space and rerun ({finished} finished sequence(s) are reused)"
    )
    return RecordsWriteError(errno, message) if errno else RecordsWriteError(message)


def _write_part(part: Path, arrays: dict[str, np.ndarray], out_dir: Path) -> None:
    try:
        atomic_write_npz(part, arrays)
    except OSError as exc:
        raise _write_error(out_dir, exc, len(list(part.parent.glob("*.npz")))) from exc


def load_objects(records_dir: str | Path) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """``(names, {name: {vertices, faces, surface, inside}})`` from ``objects.npz`` (template frame)."""
    path = Path(records_dir) / "objects.npz"
    if not path.is_file():
        raise GrabFileError(
            f"{path}: missing; build the records first (halo.grasp.records.build_grasp_records)"
        )
    with np.load(path, allow_pickle=False) as data:
        names = [str(n) for n in data["names"]]
        objects = {
            n: {k: data[f"{k}_{n}"] for k in ("vertices", "faces", "surface", "inside")} for n in names
        }
    return names, objects


def grasp_object(name: str, arrays: dict[str, np.ndarray]) -> GraspObject:
    """A :class:`GraspObject` centred at the template's bounding-box centre."""
    verts = np.asarray(arrays["vertices"], dtype=np.float64)
    center = 0.5 * (verts.min(axis=0) + verts.max(axis=0))
    mesh = trimesh.Trimesh(verts - center, arrays["faces"], process=False)
    return GraspObject(
        name=name,
        mesh=mesh,
        surface_points=np.asarray(arrays["surface"], dtype=np.float64) - center,
        inside_points=np.asarray(arrays["inside"], dtype=np.float64) - center,
    )
