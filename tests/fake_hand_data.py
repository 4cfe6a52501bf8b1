"""A tiny in-memory hand-occupancy datamodule for training tests (no files, no mesh tests).

Each "hand" is the union of capsules around the 20 skeleton bones of a
procedurally posed skeleton (``halo.hands.sequences.random_skeletons``): cheap exact
occupancy, a hand-like shape, and the batch format of the real datamodules.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from halo.core.skeleton import PART_BONES
from halo.hands.sequences import random_skeletons

# All 20 bones (parent, child) of the MANO-order skeleton: wrist to each finger root, then the chains.
_BONES = np.array(
    [(0, r) for r in (1, 5, 9, 13, 17)] + [(r + i, r + i + 1) for r in (1, 5, 9, 13, 17) for i in range(3)]
)
_RADIUS = 0.009  # metres


def _segment_distance(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance (N,S) from points (N,3) to segments a-b (S,3)."""
    ab = b - a
    t = np.einsum("nsk,sk->ns", points[:, None] - a, ab) / np.maximum((ab * ab).sum(-1), 1e-12)
    closest = a + np.clip(t, 0, 1)[..., None] * ab
    return np.linalg.norm(points[:, None] - closest, axis=-1)


def capsule_occupancy(points: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
    return (
        _segment_distance(points, keypoints[_BONES[:, 0]], keypoints[_BONES[:, 1]]).min(-1) < _RADIUS
    ).astype(np.float32)


def _part_of_bone(parent: int, child: int) -> int:
    for k, (p, c) in enumerate(PART_BONES):
        if (p, c) == (parent, child):
            return k
    return 0  # wrist-to-root bones of the four fingers belong to the palm


class CapsuleHands(Dataset):
    def __init__(self, num: int, num_points: int, num_iou_points: int, seed: int, num_surface: int = 0):
        self.keypoints = random_skeletons(num, seed=seed).astype(np.float32)
        self.num_points, self.num_iou_points, self.num_surface = num_points, num_iou_points, num_surface
        self.seed = seed

    def __len__(self) -> int:
        return len(self.keypoints)

    def _near_surface(self, rng, kp: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
        bone = rng.integers(0, len(_BONES), n)
        t = rng.uniform(0, 1, (n, 1))
        axis_pts = kp[_BONES[bone, 0]] * (1 - t) + kp[_BONES[bone, 1]] * t
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
        return axis_pts + _RADIUS * direction, bone

    def __getitem__(self, idx: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, idx])  # fixed samples: tests can overfit them
        kp = self.keypoints[idx]
        half = self.num_points // 2
        centre = kp.mean(0)
        uniform = centre + rng.uniform(-0.12, 0.12, (self.num_points - half, 3))
        surface, _ = self._near_surface(rng, kp, half)
        points = np.concatenate([uniform, surface + rng.normal(scale=0.004, size=surface.shape)]).astype(
            np.float32
        )
        sample = {
            "points": torch.from_numpy(points),
            "occupancies": torch.from_numpy(capsule_occupancy(points, kp)),
            "keypoints": torch.from_numpy(kp),
        }
        if self.num_iou_points:
            iou_pts = (centre + rng.uniform(-0.12, 0.12, (self.num_iou_points, 3))).astype(np.float32)
            sample["iou_points"] = torch.from_numpy(iou_pts)
            sample["iou_occupancies"] = torch.from_numpy(capsule_occupancy(iou_pts, kp))
        if self.num_surface:
            pts, bone = self._near_surface(rng, kp, self.num_surface)
            labels = [_part_of_bone(*_BONES[b]) for b in bone]
            sample["surface_points"] = torch.from_numpy(pts.astype(np.float32))
            sample["surface_labels"] = torch.tensor(labels, dtype=torch.int64)
        return sample


class CapsuleHandsDataModule(L.LightningDataModule):
    """Stand-in for the real hand datamodules in tests; the same batch format."""

    def __init__(
        self,
        num_train: int = 8,
        num_val: int = 4,
        num_test: int = 4,
        batch_size: int = 4,
        num_points: int = 512,
        num_iou_points: int = 1024,
        num_surface_points: int = 0,
        num_workers: int = 0,
        seed: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        self.train_set = CapsuleHands(hp.num_train, hp.num_points, 0, hp.seed, hp.num_surface_points)
        self.val_set = CapsuleHands(hp.num_val, hp.num_points, hp.num_iou_points, hp.seed + 1)
        self.test_set = CapsuleHands(hp.num_test, hp.num_points, hp.num_iou_points, hp.seed + 2)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.hparams.batch_size, shuffle=shuffle, num_workers=self.hparams.num_workers
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)
