"""Dataset building: prepared hands -> occupancy samples in the original layout.

Step 3 of the original pipeline (spec 3.1), done in parallel over samples with
a progress bar, resumable and atomic (see :mod:`halo.data.layout`).

A *source* describes where hands come from; it is a small picklable object
with ``names() -> list[str]`` and ``prepare(name) -> PreparedHand``, so worker
processes rebuild hands from names alone:

* :class:`SyntheticHandSource` -- the built-in synthetic MANO-format hand with
  sampled natural poses, shapes and orientations (deterministic per name);
* :class:`ManoParamsSource` -- per-sample MANO parameter files (the original's
  input: ``pose`` (45 PCA coefficients or 45 axis-angle), ``shape`` (10),
  ``rot`` (3)) and the user's MANO model;
* :class:`VertexFilesSource` -- MANO-topology meshes (.ply/.obj/.off/.npy,
  metres) and the user's MANO model;
* :class:`YouTube3DSource` -- YouTube3D JSON annotations and the user's MANO model;
* :class:`PreparedFilesSource` -- hands written by ``halo data prepare``;
* :class:`PreparedListSource` -- already prepared hands in memory (tests).

Sampling per hand (model units = metres x 2.5, normalized frame):
``n_points`` points of which ``uniform_fraction`` are uniform in the padded
cube [-0.55, 0.55]^3 and the rest are area-uniform surface samples plus
N(0, ``noise_std``^2) noise per axis (0.01 model units = 4 mm); ``n_iou_points``
uniform points; ``n_pointcloud`` surface points with face normals.
Occupancy labels come from :func:`halo.geometry.inside.points_inside_mesh`.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import trimesh

from halo.core.skeleton import MODEL_BOX_HALF_SIDE, model_units_to_metres
from halo.data.layout import finished_samples, write_datalist, write_sample
from halo.data.prepare import PreparedHand, prepare_from_mano, prepare_from_vertices
from halo.geometry.inside import points_inside_mesh
from halo.utils.atomic import atomic_write_json
from halo.utils.cache import cache_key
from halo.utils.progress import progress_bar

__all__ = [
    "BuildConfig",
    "BuildReport",
    "HandSource",
    "ManoParamsSource",
    "PreparedFilesSource",
    "PreparedListSource",
    "SyntheticHandSource",
    "VertexFilesSource",
    "YouTube3DSource",
    "build_split",
    "build_synthetic_dataset",
    "synthetic_dataset_key",
    "sample_occupancy",
]


@dataclass(frozen=True)
class BuildConfig:
    """Sampling parameters (defaults = the original's ``build_dataset.sh``)."""

    n_points: int = 100_000
    uniform_fraction: float = 0.5
    noise_std: float = 0.01  # model units
    n_iou_points: int = 100_000
    n_pointcloud: int = 100_000
    box_half_side: float = MODEL_BOX_HALF_SIDE  # model units

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SampledHand:
    """Occupancy samples of one hand, metres, normalized frame."""

    points: np.ndarray
    occupancies: np.ndarray
    iou_points: np.ndarray
    iou_occupancies: np.ndarray
    surface_points: np.ndarray
    surface_normals: np.ndarray


def _seed_of(name: str, seed: int) -> int:
    return (zlib.crc32(name.encode()) ^ (seed * 0x9E3779B1)) & 0xFFFFFFFF


def sample_occupancy(hand: PreparedHand, config: BuildConfig, seed: int = 0) -> SampledHand:
    """Points, IoU points and the surface point cloud of one prepared hand."""
    rng = np.random.default_rng(seed)
    half = model_units_to_metres(config.box_half_side)
    noise = model_units_to_metres(config.noise_std)
    mesh = trimesh.Trimesh(hand.vertices, hand.faces, process=False)
    n_uniform = int(round(config.n_points * config.uniform_fraction))
    n_near = config.n_points - n_uniform
    uniform = rng.uniform(-half, half, (n_uniform, 3))
    surf_seed = int(rng.integers(0, 2**31))
    near, _ = trimesh.sample.sample_surface(mesh, n_near, seed=surf_seed)
    near = near + rng.normal(0.0, noise, near.shape)
    points = np.concatenate([uniform, near])
    iou_points = rng.uniform(-half, half, (config.n_iou_points, 3))
    # One inside test for both sets (one acceleration-structure build).
    occ = points_inside_mesh(
        hand.vertices,
        hand.faces,
        np.concatenate([points, iou_points]),
        check_watertight=False,
        name=hand.name,
    )
    cloud, face_idx = trimesh.sample.sample_surface(mesh, config.n_pointcloud, seed=surf_seed + 1)
    return SampledHand(
        points=points,
        occupancies=occ[: len(points)],
        iou_points=iou_points,
        iou_occupancies=occ[len(points) :],
        surface_points=np.asarray(cloud),
        surface_normals=np.asarray(mesh.face_normals[face_idx]),
    )


# ----------------------------------------------------------------------------- sources


class HandSource(Protocol):
    def names(self) -> list[str]: ...

    def prepare(self, name: str) -> PreparedHand: ...


class SyntheticHandSource:
    """Hands of the built-in synthetic model; each name determines its pose, shape and orientation.

    Poses come from :func:`halo.hands.synthetic_hand.sample_hand_poses` (all kinds
    mixed), shape coefficients from N(0, ``shape_std``^2), global orientation
    uniform on SO(3) (removed again by the normalization; it exercises it).
    """

    def __init__(
        self, num: int, *, split: str = "train", seed: int = 0, shape_std: float = 1.0, model_path=None
    ):
        if num < 0:
            raise ValueError(f"number of synthetic hands must be >= 0, got {num}")
        self.num, self.split, self.seed, self.shape_std = int(num), split, int(seed), float(shape_std)
        self.model_path = None if model_path is None else str(model_path)
        self._layer = None

    def names(self) -> list[str]:
        return [f"synth_{self.split}_{i:06d}" for i in range(self.num)]

    def _get_layer(self):
        if self._layer is None:
            from halo.hands.mano import ManoLayer  # noqa: PLC0415
            from halo.hands.synthetic_hand import get_synthetic_hand_model  # noqa: PLC0415

            self._layer = ManoLayer(get_synthetic_hand_model(cache_path=self.model_path), dtype=torch.float64)
        return self._layer

    def warm(self) -> None:
        """Build the hand model now (before worker processes fork, so they share it)."""
        self._get_layer()

    def prepare(self, name: str) -> PreparedHand:
        from scipy.spatial.transform import Rotation  # noqa: PLC0415

        from halo.hands.synthetic_hand import sample_hand_poses  # noqa: PLC0415

        layer = self._get_layer()
        rng = np.random.default_rng(_seed_of(name, self.seed))
        pose = sample_hand_poses(1, rng)
        betas = np.clip(rng.normal(0.0, self.shape_std, (1, layer.num_betas)), -2.5, 2.5)
        orient = Rotation.random(random_state=rng).as_rotvec()[None]
        return prepare_from_mano(layer, [name], pose, betas, orient, seed=int(rng.integers(0, 2**31)))[0]


class ManoParamsSource:
    """Per-sample MANO parameter files (``.npz`` or ``.pkl``) with the user's MANO model.

    Keys: ``pose`` (n PCA coefficients with ``use_pca``, else 45 axis-angle),
    ``shape`` (betas), ``rot`` (global orientation, axis-angle).  The original
    used 45 PCA coefficients with ``flat_hand_mean=False``.
    """

    def __init__(self, files: Sequence[str | Path], mano_model: str | Path, *, use_pca: bool = True,
                 flat_hand_mean: bool = False, transforms: str = "keypoints"):  # fmt: skip
        self.files = {Path(f).stem: str(f) for f in files}
        if len(self.files) != len(files):
            raise ValueError("MANO parameter files must have distinct file names (they become sample names)")
        self.mano_model, self.use_pca, self.flat = str(mano_model), use_pca, flat_hand_mean
        self.transforms = transforms
        self._layer = None

    def names(self) -> list[str]:
        return sorted(self.files)

    def prepare(self, name: str) -> PreparedHand:
        from halo.hands.mano import ManoLayer  # noqa: PLC0415
        from halo.utils.safe_pickle import load_array_file  # noqa: PLC0415

        if self._layer is None:
            self._layer = ManoLayer.from_file(self.mano_model, dtype=torch.float64)
        path = self.files[name]
        data = load_array_file(path)
        for key in ("pose", "shape", "rot"):
            if key not in data:
                raise ValueError(f"{path}: missing key {key!r} (has {sorted(data)})")
        pose = np.asarray(data["pose"], np.float64).reshape(1, -1)
        return prepare_from_mano(
            self._layer, [name], pose, np.asarray(data["shape"], np.float64).reshape(1, -1),
            np.asarray(data["rot"], np.float64).reshape(1, 3), use_pca=self.use_pca,
            flat_hand_mean=self.flat, transforms=self.transforms,
        )[0]  # fmt: skip


class VertexFilesSource:
    """MANO-topology posed meshes (metres; .ply/.obj/.off, or .npy (V,3) vertices)."""

    def __init__(self, files: Sequence[str | Path], mano_model: str | Path):
        self.files = {Path(f).stem: str(f) for f in files}
        self.mano_model = str(mano_model)
        self._model = None

    def names(self) -> list[str]:
        return sorted(self.files)

    def prepare(self, name: str) -> PreparedHand:
        from halo.hands.mano import load_mano_model  # noqa: PLC0415

        if self._model is None:
            self._model = load_mano_model(self.mano_model)
        path = Path(self.files[name])
        if path.suffix == ".npy":
            verts = np.load(path, allow_pickle=False)
        else:
            verts = np.asarray(trimesh.load(path, process=False, force="mesh").vertices)
        return prepare_from_vertices(self._model, name, verts)


class YouTube3DSource:
    """Hands of a YouTube3D annotation file (needs the user's MANO_RIGHT.pkl).

    The JSON is parsed once in the parent process; forked workers share it.
    Hands that fail the handedness check are reported and skipped.
    """

    def __init__(self, json_path: str | Path, mano_model: str | Path, *, limit: int | None = None):
        from halo.data.youtube3d import hand_name, load_youtube3d, resolve_mano_model  # noqa: PLC0415

        self.json_path, self.mano_model_path, self.limit = str(json_path), str(mano_model), limit
        self._model = resolve_mano_model(mano_model)
        self._data = load_youtube3d(json_path, num_vertices=self._model.num_vertices)
        annotations = self._data.annotations[:limit] if limit is not None else self._data.annotations
        self._by_name = {}
        for ann in annotations:
            image = self._data.images.get(ann.image_id)
            self._by_name[hand_name(image.name if image else str(ann.image_id), ann.id)] = (ann, image)

    def names(self) -> list[str]:
        return list(self._by_name)

    def prepare(self, name: str) -> PreparedHand:
        from halo.data.youtube3d import convert_annotation  # noqa: PLC0415

        ann, image = self._by_name[name]
        hand = convert_annotation(ann, self._model, image=image)
        if not hand.chirality_ok:
            raise ValueError(f"{self.json_path}: annotation {ann.id} is not a right hand after mirroring")
        return prepare_from_vertices(self._model, name, hand.vertices)


class PreparedFilesSource:
    """Hands written by ``halo data prepare`` (one ``.npz`` per hand, see :func:`halo.data.prepare.save_prepared`)."""

    def __init__(self, files: Sequence[str | Path]):
        self.files = {Path(f).stem: str(f) for f in files}

    def names(self) -> list[str]:
        return sorted(self.files)

    def prepare(self, name: str) -> PreparedHand:
        from halo.data.prepare import load_prepared  # noqa: PLC0415

        return load_prepared(self.files[name])


class PreparedListSource:
    """Hands prepared beforehand (kept in memory; workers receive them by fork)."""

    def __init__(self, hands: Sequence[PreparedHand]):
        self.hands = {h.name: h for h in hands}

    def names(self) -> list[str]:
        return list(self.hands)

    def prepare(self, name: str) -> PreparedHand:
        return self.hands[name]


# ----------------------------------------------------------------------------- building


@dataclass
class BuildReport:
    split_dir: Path
    written: list[str]
    skipped_existing: list[str]
    failed: dict[str, str]
    seconds: float

    @property
    def num_ok(self) -> int:
        return len(self.written) + len(self.skipped_existing)

    def summary(self) -> str:
        rate = len(self.written) / self.seconds if self.seconds > 0 else float("nan")
        s = (f"{self.split_dir}: {len(self.written)} built ({rate:.1f} hands/s), "
             f"{len(self.skipped_existing)} already done, {len(self.failed)} failed")  # fmt: skip
        return s


_WORKER: dict[str, Any] = {}


def _init_worker(source: HandSource, config: BuildConfig, split_dir: str, seed: int) -> None:
    _WORKER.update(source=source, config=config, split_dir=split_dir, seed=seed)


def _init_pool_worker(*args) -> None:
    torch.set_num_threads(1)  # one process per core; the inside test threads on its own
    _init_worker(*args)


def _build_one(name: str) -> tuple[str, str | None]:
    try:
        hand = _WORKER["source"].prepare(name)
        s = sample_occupancy(hand, _WORKER["config"], _seed_of(name, _WORKER["seed"]) + 1)
        write_sample(
            _WORKER["split_dir"], name,
            points=s.points, occupancies=s.occupancies, iou_points=s.iou_points,
            iou_occupancies=s.iou_occupancies, surface_points=s.surface_points,
            surface_normals=s.surface_normals, mesh_vertices=hand.vertices, mesh_faces=hand.faces,
            keypoints=hand.keypoints, part_transforms=hand.part_transforms, bone_lengths=hand.bone_lengths,
            labelled_points=hand.surface_points, labels=hand.surface_labels, betas=hand.betas,
            normalization=hand.normalization,
        )  # fmt: skip
        return name, None
    except Exception as exc:  # one bad sample is reported and skipped, never written
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return name, detail


def build_split(
    source: HandSource,
    split_dir: str | Path,
    config: BuildConfig | None = None,
    *,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    resume: bool = True,
    on_error: Callable[[str, str], None] | None = None,
) -> BuildReport:
    """Build every hand of ``source`` into ``split_dir`` (original layout).

    Finished samples (all four files present) are skipped when ``resume``;
    a sample that fails is reported (``on_error(name, message)``, default: a
    line on stderr) and left out of ``datalist.txt``.  ``datalist.txt`` lists
    every finished sample of the source, in the source's order.
    """
    config = config or BuildConfig()
    split_dir = Path(split_dir)
    split_dir.mkdir(parents=True, exist_ok=True)
    names = source.names()
    done = finished_samples(split_dir) if resume else set()
    todo = [n for n in names if n not in done]
    written: list[str] = []
    failed: dict[str, str] = {}
    report_error = on_error or (lambda n, m: print(f"[halo data] skipped {n}: {m}", file=sys.stderr))
    t0 = time.perf_counter()
    bar = progress_bar(total=len(todo), desc=f"building {split_dir.name}", unit="hand", enabled=progress)
    args = (source, config, str(split_dir), seed)
    try:
        if workers <= 1 or len(todo) <= 1:
            _init_worker(*args)
            results = map(_build_one, todo)
            pool = None
        else:
            if hasattr(source, "warm"):
                source.warm()  # e.g. the synthetic model: built once here, inherited by forked workers
            from halo.geometry.inside import inside_backend  # noqa: PLC0415

            inside_backend()  # import open3d once in the parent (~1 s per process otherwise)
            ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
            pool = ctx.Pool(min(workers, len(todo)), initializer=_init_pool_worker, initargs=args)
            results = pool.imap_unordered(_build_one, todo, chunksize=4)
        for name, error in results:
            if error is None:
                written.append(name)
            else:
                failed[name] = error
                report_error(name, error)
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
    finished = set(written) | (done & set(names))
    ordered = [n for n in names if n in finished]
    if ordered:
        write_datalist(split_dir, ordered)
    return BuildReport(
        split_dir=split_dir,
        written=[n for n in names if n in set(written)],
        skipped_existing=[n for n in names if n in done],
        failed=failed,
        seconds=time.perf_counter() - t0,
    )


SPLITS = ("train", "val", "test")
MANIFEST = "dataset.json"


def build_synthetic_dataset(
    root: str | Path,
    *,
    num: dict[str, int],
    seed: int = 0,
    config: BuildConfig | None = None,
    workers: int = 1,
    progress: bool = True,
    model_path: str | Path | None = None,
) -> dict[str, BuildReport]:
    """Write a synthetic dataset in the original layout under ``root/<split>/``.

    ``num`` maps split names to hand counts (e.g. ``{"train": 2000, "val": 200,
    "test": 200}``); every split draws different hands (the split name is part
    of each sample's name and thus of its seed).  Resumable: finished samples
    are kept.  A ``dataset.json`` manifest records the parameters.
    """
    config = config or BuildConfig()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    reports = {}
    for split, n in num.items():
        source = SyntheticHandSource(int(n), split=split, seed=seed, model_path=model_path)
        reports[split] = build_split(
            source, root / split, config, seed=seed, workers=workers, progress=progress
        )
    manifest = {"source": "synthetic", "seed": seed, "num": {k: int(v) for k, v in num.items()},
                "config": config.to_dict(),
                "complete": all(not r.failed for r in reports.values())}  # fmt: skip
    atomic_write_json(root / MANIFEST, manifest)
    return reports


def synthetic_dataset_key(num: dict[str, int], seed: int, config: BuildConfig) -> str:
    """Cache key of a synthetic dataset: a short hash of everything that determines its content."""
    return cache_key({"num": {k: int(v) for k, v in sorted(num.items())}, "seed": seed,
                      "config": config.to_dict(), "format": 1})  # fmt: skip
