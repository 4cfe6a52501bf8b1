"""LightningDataModules for HALO base: hand occupancy samples in the original layout.

* :class:`HandOccupancyDataModule` reads a preprocessed root (``data=youtube3d``:
  the published YouTube3D test set, or anything ``halo data build`` wrote);
* :class:`SyntheticHandsDataModule` (``data=synthetic_hands``, the default)
  first builds the synthetic dataset into a cache folder keyed by its
  generation parameters, then reads it with the same code.

Batches are dicts of tensors in metres (the sample's normalized frame):

- ``points`` (B,N,3), ``occupancies`` (B,N) float {0,1}: N points drawn with
  replacement from the ``points/`` file (half uniform, half near-surface), with
  the original's Gaussian jitter on the float16 values;
- ``keypoints`` (B,21,3), ``is_left`` (B,) (always False: stored hands are right hands);
- validation/test only: ``iou_points`` (B,K,3), ``iou_occupancies`` (B,K) from
  ``points_iou/`` (uniform in the box; the original read ``points/`` instead);
- optional ``surface_points`` (B,M,3), ``surface_labels`` (B,M) for the part-label loss;
- ``index`` (B,) position in the split's ``datalist.txt``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import Dataset

from datamodules.loading import SplitLoaders
from halo.core.skeleton import model_units_to_metres
from halo.data.build import BuildConfig, build_synthetic_dataset, synthetic_dataset_key
from halo.data.layout import (
    DatasetFormatError,
    finished_samples,
    read_datalist,
    read_points,
    sample_paths,
)
from halo.utils.cache import build_once, keyed_dir

__all__ = [
    "HandOccupancyDataModule",
    "HandOccupancyDataset",
    "SyntheticHandsDataModule",
]


class HandOccupancyDataset(Dataset):
    """One split of the original layout.

    Args:
        split_dir: ``<root>/<split>`` with ``datalist.txt``.
        points_per_sample: training points drawn (with replacement) per item.
        iou_points_per_sample: uniform IoU points per item (None: none; -1: all).
        surface_per_sample: labelled surface points per item (0: none).
        jitter: std of the Gaussian added to the float16 points, model units
            (the original: 1e-4).
        deterministic: draw the same points for an index every time (validation).
        max_samples: use only the first samples of the split.
        cache_in_memory: keep every item's decoded arrays in memory after its first read (the
            same values, so the same draws: ~0.6 MB per hand of 50k points). Reading and decoding
            a ``points/`` file costs ~3.5 ms, about half of a default-run training step on 2
            cores; every later epoch then only indexes arrays. Each DataLoader worker fills its
            own copy.
    """

    def __init__(
        self,
        split_dir: str | Path,
        *,
        points_per_sample: int = 2048,
        iou_points_per_sample: int | None = None,
        surface_per_sample: int = 0,
        jitter: float = 1e-4,
        deterministic: bool = False,
        max_samples: int | None = None,
        seed: int = 0,
        cache_in_memory: bool = False,
    ):
        self.split_dir = Path(split_dir)
        self.names = read_datalist(self.split_dir)
        if max_samples is not None:
            self.names = self.names[: int(max_samples)]
        self.points_per_sample = int(points_per_sample)
        self.iou_points_per_sample = iou_points_per_sample
        self.surface_per_sample = int(surface_per_sample)
        self.jitter_m = model_units_to_metres(float(jitter))
        self.deterministic = deterministic
        self.seed = seed
        self._warned_iou = False
        self.cache_in_memory = bool(cache_in_memory)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def _rng(self, index: int) -> np.random.Generator:
        if self.deterministic:
            return np.random.default_rng([self.seed, index])
        # Drawn from torch's generator, which seed_everything seeds (and DataLoader workers derive
        # from it): a seeded run is reproducible, and every item still gets fresh points.
        return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))

    def _iou_points(self, name: str, train_file) -> tuple[np.ndarray, np.ndarray]:
        path = sample_paths(self.split_dir, name)["points_iou"]
        if path.is_file():
            iou = read_points(path, with_metadata=False)
            pts, occ = iou.points, iou.occupancies
        else:
            # Layouts without points_iou/ (e.g. the published test set): the first half
            # of points/ is the uniform part (im2mesh writes uniform points first).
            if not self._warned_iou:
                warnings.warn(f"{path} missing: using the uniform half of points/ for IoU", stacklevel=2)
                self._warned_iou = True
            half = len(train_file.points) // 2
            pts, occ = train_file.points[:half], train_file.occupancies[:half]
        k = self.iou_points_per_sample
        if k is not None and k >= 0:
            pts, occ = pts[:k], occ[:k]  # uniform points are in random order: a prefix is a fair subsample
        return pts, occ

    def _arrays(self, index: int) -> dict[str, np.ndarray]:
        """One hand's arrays: read from its files, or from memory after the first read."""
        cached = self._cache.get(index)
        if cached is not None:
            return cached
        name = self.names[index]
        path = sample_paths(self.split_dir, name)["points"]
        data = read_points(path, with_surface=self.surface_per_sample > 0)
        arrays = {"points": data.points, "occupancies": data.occupancies, "keypoints": data.keypoints}
        if self.iou_points_per_sample is not None:
            arrays["iou_points"], arrays["iou_occupancies"] = self._iou_points(name, data)
        if self.surface_per_sample > 0:
            if data.surface_points is None:
                raise DatasetFormatError(
                    f"{path}: no labelled surface points ('verts'/'vert_labels'), needed for the part-label loss"
                )
            arrays["surface_points"], arrays["surface_labels"] = data.surface_points, data.surface_labels
        if self.cache_in_memory:
            self._cache[index] = arrays
        return arrays

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        data = self._arrays(index)
        rng = self._rng(index)
        idx = rng.integers(0, len(data["points"]), self.points_per_sample)
        points = data["points"][idx].astype(np.float32)
        if self.jitter_m > 0:
            points = points + rng.normal(0.0, self.jitter_m, points.shape).astype(np.float32)
        item = {
            "points": torch.from_numpy(points),
            "occupancies": torch.from_numpy(data["occupancies"][idx].astype(np.float32)),
            "keypoints": torch.from_numpy(data["keypoints"].astype(np.float32)),
            "is_left": torch.tensor(False),
            "index": torch.tensor(index),
        }
        if self.iou_points_per_sample is not None:
            item["iou_points"] = torch.from_numpy(data["iou_points"].astype(np.float32))
            item["iou_occupancies"] = torch.from_numpy(data["iou_occupancies"].astype(np.float32))
        if self.surface_per_sample > 0:
            sidx = rng.integers(0, len(data["surface_points"]), self.surface_per_sample)
            item["surface_points"] = torch.from_numpy(data["surface_points"][sidx].astype(np.float32))
            item["surface_labels"] = torch.from_numpy(data["surface_labels"][sidx])
        return item


class HandOccupancyDataModule(SplitLoaders, L.LightningDataModule):
    """Train/val/test loaders over a root in the original layout (see module docstring).

    Args:
        root: dataset root holding ``<split>/datalist.txt``.
        batch_size / val_batch_size: items per batch.
        points_per_sample: training points per item (the original: 2048).
        iou_points_per_sample: uniform points per validation item (-1: all 100k).
        max_val_samples: validate on the first hands only (a fixed subset, not a random one).
        surface_per_sample: labelled surface points per item for the part-label loss (0: off).
        num_workers: DataLoader workers (0 loads in the training process).
        cache_in_memory: keep the training and validation hands in memory after their first
            read (:class:`HandOccupancyDataset`; ~0.6 GB per 1,000 hands of 50k points).
    """

    def __init__(
        self,
        root: str | Path | None = None,
        *,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "test",
        batch_size: int = 64,
        val_batch_size: int = 8,
        points_per_sample: int = 2048,
        iou_points_per_sample: int = -1,
        max_val_samples: int | None = None,
        max_train_samples: int | None = None,
        surface_per_sample: int = 0,
        jitter: float = 1e-4,
        num_workers: int = 0,
        seed: int = 0,
        cache_in_memory: bool = False,
    ):
        super().__init__()
        self.save_hyperparameters(logger=False)
        self.root = None if root is None else Path(root)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.datasets: dict[str, HandOccupancyDataset] = {}

    def split_dir(self, stage: str) -> Path:
        if self.root is None:
            raise ValueError("data.root is not set: point it at a preprocessed dataset root")
        return self.root / self.splits[stage]

    def _dataset(self, stage: str) -> HandOccupancyDataset:
        if stage not in self.datasets:
            hp = self.hparams
            train = stage == "train"
            self.datasets[stage] = HandOccupancyDataset(
                self.split_dir(stage),
                points_per_sample=hp.points_per_sample,
                iou_points_per_sample=None if train else hp.iou_points_per_sample,
                surface_per_sample=hp.surface_per_sample,
                jitter=hp.jitter,
                deterministic=not train,
                max_samples=hp.max_train_samples if train else hp.max_val_samples,
                seed=hp.seed,
                cache_in_memory=hp.cache_in_memory and stage != "test",
            )
        return self.datasets[stage]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._dataset("train")
            self._dataset("val")
        if stage == "validate":
            self._dataset("val")
        if stage in (None, "test"):
            self._dataset("test")

    def split_dataset(self, stage: str):
        return self._dataset(stage)


class SyntheticHandsDataModule(HandOccupancyDataModule):
    """The built-in synthetic hands, generated on first use into ``cache_dir/<key>/``.

    The key hashes every generation parameter, so changing one builds a new
    dataset and an unchanged configuration reuses the old one (interrupted
    builds resume).  Generation runs in ``prepare_data``: Lightning calls it on one
    process per node while the other ranks wait at a barrier, and a lock file
    (``<cache_dir>/synthetic_hands-<key>.lock``) lets one process build while every other
    one that wants the same dataset (other nodes, the parallel jobs of a sweep) waits and
    then reuses it (:func:`halo.utils.cache.build_once`).  Sample files are written atomically,
    so even where the lock does not reach across machines a second builder only repeats work.
    """

    def __init__(
        self,
        cache_dir: str | Path = "data/synthetic_hands",
        *,
        num_train: int = 2000,
        num_val: int = 200,
        num_test: int = 200,
        generation_seed: int = 0,
        build_workers: int = 2,
        n_points: int = 100_000,
        n_iou_points: int = 100_000,
        n_pointcloud: int = 100_000,
        noise_std: float = 0.01,
        **kwargs,
    ):
        super().__init__(None, **kwargs)
        self.cache_dir = Path(cache_dir)
        self.num = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
        self.generation_seed = int(generation_seed)
        self.build_workers = int(build_workers)
        self.build_config = BuildConfig(
            n_points=n_points, n_iou_points=n_iou_points, n_pointcloud=n_pointcloud, noise_std=noise_std
        )
        key = synthetic_dataset_key(self.num, self.generation_seed, self.build_config)
        self.root = keyed_dir(self.cache_dir, "synthetic_hands", key)
        # Recorded in checkpoints (datamodule_hyper_parameters): `halo eval meshes` finds the data from it.
        self.hparams.update(
            root=str(self.root.resolve()), cache_dir=str(self.cache_dir), num_train=num_train, num_val=num_val,
            num_test=num_test, generation_seed=generation_seed, n_points=n_points, n_iou_points=n_iou_points,
            n_pointcloud=n_pointcloud, noise_std=noise_std,
        )  # fmt: skip

    def is_built(self) -> bool:
        return all(
            len(finished_samples(self.root / split)) >= n and (self.root / split / "datalist.txt").is_file()
            for split, n in self.num.items()
        )

    def prepare_data(self) -> None:
        build_once(self.root, self.is_built, self._build)

    def _build(self) -> None:
        print(f"[halo] generating synthetic hands {self.num} into {self.root}")
        reports = build_synthetic_dataset(
            self.root, num=self.num, seed=self.generation_seed, config=self.build_config,
            workers=self.build_workers,
        )  # fmt: skip
        for report in reports.values():
            print(f"[halo] {report.summary()}")
