"""LightningDataModules for HALO-VAE: object-conditioned grasps from GRAB-layout data.

* :class:`GrabDataModule` (``data=grab``): a real GRAB download (plus the user's
  MANO right-hand model); records are built once into a cache keyed by the
  root, its file list and the record settings.
* :class:`SyntheticGraspsDataModule` (``data=synthetic_grasps``, the default for
  HALO-VAE): procedural objects grasped by the synthetic hand, generated on first
  use in the GRAB layout (:mod:`halo.grasp.synthetic_grab`) and then read by the same code.

Batches are dicts of float32 tensors in metres, in the object-centred frame
(origin = the centre of the posed object's bounding box, GRAB world orientation,
optionally randomly rotated about the origin):

- ``keypoints`` (B,21,3): hand keypoints (public MANO order);
- ``object_points`` (B,P,3): object surface samples;
- ``inside_points`` (B,M,3): samples inside the object volume (interpenetration term);
- ``object_index`` (B,) long: index into :attr:`GraspDataModule.object_names`.

Splits are by object (GRAB's standard split for real data).  Records are built in
``prepare_data`` (once per node, before other ranks read them).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from scipy.spatial.transform import Rotation
from torch.utils.data import Dataset

from datamodules.loading import SplitLoaders
from halo.grasp.grab import GrabFileError
from halo.grasp.records import (
    SPLITS,
    GraspObject,
    RecordsConfig,
    build_grasp_records,
    grasp_object,
    load_objects,
    records_finished,
    records_key,
)
from halo.utils.cache import build_once, cache_key, keyed_dir

__all__ = ["GraspRecordsDataset", "GraspDataModule", "GrabDataModule", "SyntheticGraspsDataModule"]


class GraspRecordsDataset(Dataset):
    """One split of a records folder (:mod:`halo.grasp.records`).

    Args:
        records_dir: the build's output folder.
        split: ``train`` / ``val`` / ``test``.
        n_object_points / n_inside_points: samples drawn per item from the
            object's stored surface / volume samples (without replacement when
            enough are stored).
        augment_rotation: rotate each item by a uniformly random rotation about
            the object centre (training augmentation).
        deterministic: the same samples (and rotation) for an index every time.
        max_samples: use a seeded random subset of this size (validation).
        seed: base seed.
    """

    def __init__(
        self,
        records_dir: str | Path,
        split: str,
        *,
        n_object_points: int = 600,
        n_inside_points: int = 600,
        augment_rotation: bool = False,
        deterministic: bool = False,
        max_samples: int | None = None,
        seed: int = 0,
    ):
        self.records_dir = Path(records_dir)
        split_dir = self.records_dir / split
        if not records_finished(self.records_dir):
            raise GrabFileError(f"{self.records_dir}: no finished grasp records (meta.json missing)")
        self.names, objects = load_objects(self.records_dir)
        self._surface = [np.asarray(objects[n]["surface"], dtype=np.float32) for n in self.names]
        self._inside = [np.asarray(objects[n]["inside"], dtype=np.float32) for n in self.names]
        if (split_dir / "keypoints.npy").is_file():
            self.keypoints = np.load(split_dir / "keypoints.npy", mmap_mode="r")
            self.object_index = np.load(split_dir / "object_index.npy")
            self.rotation = np.load(split_dir / "object_rotation.npy", mmap_mode="r")
            self.translation = np.load(split_dir / "object_translation.npy", mmap_mode="r")
        else:  # a split without frames (e.g. no val objects in a small root)
            self.keypoints = np.zeros((0, 21, 3), np.float32)
            self.object_index = np.zeros(0, np.int32)
            self.rotation = np.zeros((0, 3, 3), np.float32)
            self.translation = np.zeros((0, 3), np.float32)
        self.indices = np.arange(len(self.keypoints))
        if max_samples is not None and max_samples < len(self.indices):
            # Seeded (the original drew an unseeded subset, so val loss was not comparable across runs).
            rng = np.random.default_rng([seed, 7])
            self.indices = np.sort(rng.choice(len(self.indices), size=max_samples, replace=False))
        self.n_object_points = int(n_object_points)
        self.n_inside_points = int(n_inside_points)
        self.augment_rotation = augment_rotation
        self.deterministic = deterministic
        self.seed = seed

    def __len__(self) -> int:
        return len(self.indices)

    @staticmethod
    def _pick(points: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        return points[rng.choice(len(points), size=n, replace=n > len(points))]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i = int(self.indices[index])
        if self.deterministic:
            rng = np.random.default_rng([self.seed, i])
        else:  # from torch's generator: seeded runs are reproducible (seed_everything, worker seeds)
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        obj = int(self.object_index[i])
        rot = np.asarray(self.rotation[i], dtype=np.float32)
        t = np.asarray(self.translation[i], dtype=np.float32)
        surface = self._pick(self._surface[obj], self.n_object_points, rng) @ rot.T + t
        inside = self._pick(self._inside[obj], self.n_inside_points, rng) @ rot.T + t
        keypoints = np.array(self.keypoints[i], dtype=np.float32)  # a copy: the records are memory-mapped
        if self.augment_rotation:
            q = Rotation.random(random_state=rng).as_matrix().astype(np.float32)
            surface, inside, keypoints = surface @ q.T, inside @ q.T, keypoints @ q.T
        return {
            "keypoints": torch.from_numpy(np.ascontiguousarray(keypoints)),
            "object_points": torch.from_numpy(np.ascontiguousarray(surface, dtype=np.float32)),
            "inside_points": torch.from_numpy(np.ascontiguousarray(inside, dtype=np.float32)),
            "object_index": torch.tensor(obj, dtype=torch.long),
        }


class GraspDataModule(SplitLoaders, L.LightningDataModule):
    """Loaders over a finished records folder (subclasses build it in ``prepare_data``).

    Args:
        records_dir: folder written by :func:`halo.grasp.records.build_grasp_records`.
        batch_size / val_batch_size: items per batch.
        n_object_points / n_inside_points: per item (the original: 600 each).
        augment_rotation: random rotations of training items.
        max_val_samples: seeded validation subset size (the original: 1,500, unseeded).
        num_workers: DataLoader workers.
        seed: sampling seed.
    """

    def __init__(
        self,
        records_dir: str | Path | None = None,
        *,
        batch_size: int = 64,
        val_batch_size: int = 128,
        n_object_points: int = 600,
        n_inside_points: int = 600,
        augment_rotation: bool = False,
        max_val_samples: int | None = 1500,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        # Plain types only, so checkpoints load with torch.load(weights_only=True).
        for key, value in list(self.hparams.items()):
            if isinstance(value, Path):
                self.hparams[key] = str(value)
            elif value is not None and not isinstance(value, str | int | float | bool | list | tuple | dict):
                self.hparams[key] = str(getattr(value, "source", value))
        self.records_dir = None if records_dir is None else Path(records_dir)
        self.datasets: dict[str, GraspRecordsDataset] = {}

    def _records(self) -> Path:
        if self.records_dir is None:
            raise ValueError("data.records_dir is not set")
        return self.records_dir

    def dataset(self, split: str) -> GraspRecordsDataset:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if split not in self.datasets:
            hp = self.hparams
            train = split == "train"
            self.datasets[split] = GraspRecordsDataset(
                self._records(),
                split,
                n_object_points=hp.n_object_points,
                n_inside_points=hp.n_inside_points,
                augment_rotation=hp.augment_rotation and train,
                deterministic=not train,
                max_samples=None if train else hp.max_val_samples,
                seed=hp.seed,
            )
        return self.datasets[split]

    @property
    def object_names(self) -> list[str]:
        return load_objects(self._records())[0]

    def split_objects(self) -> dict[str, list[str]]:
        """The object names of each split (from the records' meta.json)."""
        meta = json.loads((self._records() / "meta.json").read_text())
        return meta["objects"]

    def grasp_objects(self, split: str) -> list[GraspObject]:
        """The split's objects, centred at their bounding-box centre (for generation-time evaluation)."""
        names, objects = load_objects(self._records())
        wanted = self.split_objects()[split]
        return [grasp_object(n, objects[n]) for n in names if n in wanted]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            for split in ("train", "val"):
                self.dataset(split)
            if len(self.datasets["train"]) == 0:
                raise GrabFileError(f"{self._records()}: the train split has no frames")
        if stage == "validate":
            self.dataset("val")
        if stage in (None, "test"):
            self.dataset("test")

    def split_dataset(self, stage: str):
        return self.dataset(stage)


def _records_config(**kwargs) -> RecordsConfig:
    # Hydra passes ListConfig / DictConfig: plain tuples keep the config hashable and JSON-able.
    clean = {
        str(k): (tuple(v) if isinstance(v, Sequence) and not isinstance(v, str) else v)
        for k, v in kwargs.items()
        if v is not None
    }
    unknown = sorted(set(clean) - {f.name for f in dataclasses.fields(RecordsConfig)})
    if unknown:
        raise ValueError(
            f"data.records: unknown keys {unknown}; known: {[f.name for f in dataclasses.fields(RecordsConfig)]}"
        )
    return RecordsConfig(**clean)


class GrabDataModule(GraspDataModule):
    """A GRAB download -> cached records -> loaders.

    Args:
        root: the GRAB root (holds ``grab/`` and ``tools/``).
        mano_model: path to the right-hand MANO model (``MANO_RIGHT.pkl``).
        cache_dir: where records are built (``<cache_dir>/grab_records-<key>``).
        records: :class:`halo.grasp.records.RecordsConfig` fields (frame stride,
            contact filter, intents, subjects, object split, samples per object).
        Other arguments: :class:`GraspDataModule`.
    """

    def __init__(
        self,
        root: str | Path | None = None,
        mano_model: str | Path | None = None,
        cache_dir: str | Path = "data/grab_records",
        records: dict | None = None,
        **kwargs,
    ):
        super().__init__(None, **kwargs)
        if root is None:
            raise ValueError("data.root is not set: point it at the GRAB folder that holds grab/ and tools/")
        self.root = Path(root)
        self.mano_model = mano_model
        self.cache_dir = Path(cache_dir)
        self.records_config = _records_config(**(records or {}))
        self._key: str | None = None

    def _records(self) -> Path:
        if self.records_dir is None:
            self._key = records_key(self.root, self.records_config, str(self.mano_model or ""))
            self.records_dir = keyed_dir(self.cache_dir, "grab_records", self._key)
            self.hparams["records_dir"] = str(self.records_dir.resolve())
        return self.records_dir

    def prepare_data(self) -> None:
        # Locked: DDP nodes and the parallel jobs of a sweep share the cache folder.
        out = self._records()
        build_once(out, lambda: records_finished(out), self._build_records)

    def _build_records(self) -> None:
        out = self._records()
        print(f"[halo] building grasp records from {self.root} into {out}")
        report = build_grasp_records(self.root, out, self.records_config, mano_model=self.mano_model)
        print(f"[halo] {report.summary()}")


class SyntheticGraspsDataModule(GrabDataModule):
    """Synthetic grasps generated on first use in the GRAB layout, then read like GRAB.

    The GRAB-layout root is ``cache_dir/grab/<key>`` (:func:`halo.grasp.synthetic_grab.synthetic_grab_root`,
    keyed by the generation settings) and its records ``cache_dir/records-<key>``
    (keyed by those and the record settings).  Object names follow GRAB's, so the
    standard split applies (test: mug, wineglass, toothpaste; val: apple, toothbrush).

    Args:
        cache_dir: holds the generated root and its records.
        objects / grasps_per_object / subjects / grasp_frames / away_frames /
            generation_seed: :class:`halo.grasp.synthetic_grab.SyntheticGrabConfig`.
        generation_workers: processes used to generate.
        records: record settings (:class:`halo.grasp.records.RecordsConfig` fields).
        Other arguments: :class:`GraspDataModule`.
    """

    def __init__(
        self,
        cache_dir: str | Path = "data/synthetic_grasps",
        *,
        objects: int | None = None,
        grasps_per_object: int = 32,
        subjects: int = 4,
        grasp_frames: int = 8,
        away_frames: int = 2,
        generation_seed: int = 0,
        generation_workers: int = 2,
        records: dict | None = None,
        **kwargs,
    ):
        from halo.grasp import synthetic_grab as grasp_synth

        self.synth_config = grasp_synth.SyntheticGrabConfig(
            objects=objects,
            grasps_per_object=grasps_per_object,
            subjects=subjects,
            grasp_frames=grasp_frames,
            away_frames=away_frames,
            seed=generation_seed,
        )
        records = dict(records or {})
        records.setdefault("frame_stride", 1)  # synthetic frames are distinct grasps, not a 120 fps stream
        cache_dir = Path(cache_dir)
        self._synth_key = grasp_synth.synthetic_grab_key(self.synth_config)
        super().__init__(cache_dir / "grab" / self._synth_key, None, cache_dir, records, **kwargs)
        self.generation_workers = int(generation_workers)

    def _records(self) -> Path:
        if self.records_dir is None:
            # The root may not exist yet: key the records on the generation and record settings.
            self._key = cache_key([self._synth_key, dataclasses.asdict(self.records_config)])
            self.records_dir = keyed_dir(self.cache_dir, "records", self._key)
            self.hparams["records_dir"] = str(self.records_dir.resolve())
        return self.records_dir

    def prepare_data(self) -> None:
        from halo.grasp import synthetic_grab as grasp_synth

        if records_finished(self._records()):
            return
        root = grasp_synth.synthetic_grab_root(
            self.cache_dir / "grab", self.synth_config, workers=self.generation_workers
        )
        if root != self.root:  # pragma: no cover - guards the key convention above
            raise RuntimeError(f"synthetic root {root} is not the expected {self.root}")
        super().prepare_data()
