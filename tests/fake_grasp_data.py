"""A tiny in-memory grasp datamodule with the grasp batch contract (tests only; no files, seconds to build).

Objects are spheres of 2.5-4.5 cm radius; each grasp is the procedural test skeleton
(:func:`halo.hands.sequences.pose_skeleton`) curled around its sphere: the sphere's centre sits
between the palm and the fingertips and its radius leaves ~8 mm to the closest joint, so the
fingers touch it like a hand would.  Everything is object-centred, metres, float32.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import trimesh
from scipy.spatial.transform import Rotation
from torch.utils.data import DataLoader, Dataset

from halo.grasp.records import GraspObject
from halo.hands.sequences import KEY_POSES, pose_skeleton

FINGER_THICKNESS_M = 0.008


def sphere_object(name: str, radius: float, n_surface: int = 2000, n_inside: int = 2000, seed: int = 0):
    """A :class:`GraspObject` sphere centred at the origin (metres)."""
    rng = np.random.default_rng(seed)
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=radius)
    surface = rng.normal(size=(n_surface, 3))
    surface = surface / np.linalg.norm(surface, axis=1, keepdims=True) * radius
    inside = rng.normal(size=(n_inside, 3))
    inside = inside / np.linalg.norm(inside, axis=1, keepdims=True)
    inside *= radius * rng.uniform(size=(n_inside, 1)) ** (1 / 3)
    return GraspObject(name=name, mesh=mesh, surface_points=surface, inside_points=inside)


def grasp_around(radius: float, rng: np.random.Generator) -> np.ndarray:
    """(21,3) metres: a curled hand around a sphere of ``radius`` at the origin, random orientation."""
    flex = KEY_POSES["grasp"] + rng.uniform(-0.15, 0.15, size=(5, 3))
    kp = pose_skeleton(flex)
    palm = kp[[5, 9, 13, 17]].mean(0)
    tips = kp[[4, 8, 12, 16, 20]].mean(0)
    centre = 0.5 * (palm + tips)
    kp = kp - centre
    # Slide the hand along the grip axis (towards its palm) until its closest joint is one finger
    # thickness off the sphere surface: the fingers touch, nothing penetrates.
    axis = (palm - centre) / np.linalg.norm(palm - centre)
    offsets = np.arange(-0.05, 0.15, 0.0005)
    gaps = np.linalg.norm(kp[None] + offsets[:, None, None] * axis, axis=-1).min(-1)
    kp = kp + offsets[np.argmax(gaps >= radius + FINGER_THICKNESS_M)] * axis
    rot = Rotation.random(random_state=rng).as_matrix()
    return kp @ rot.T


#: A HALO-VAE small enough for CPU tests (halo.grasp.vae.GraspVaeConfig fields).
SMALL_VAE = {
    "object_dim": 32,
    "object_hidden_dim": 32,
    "z_dim": 8,
    "encoder_dim": 64,
    "decoder_dim": 64,
    "refine_dim": 32,
}


class _Grasps(Dataset):
    def __init__(
        self, keypoints, object_index, objects, n_object_points, n_inside_points, seed, deterministic
    ):
        self.keypoints = keypoints
        self.object_index = object_index
        self.objects = objects
        self.n_object_points = n_object_points
        self.n_inside_points = n_inside_points
        self.seed = seed
        self.deterministic = deterministic

    def __len__(self) -> int:
        return len(self.keypoints)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, i]) if self.deterministic else np.random.default_rng()
        obj = self.objects[int(self.object_index[i])]
        surface = obj.surface_points[rng.choice(len(obj.surface_points), self.n_object_points, replace=False)]
        inside = obj.inside_points[rng.choice(len(obj.inside_points), self.n_inside_points, replace=False)]
        return {
            "keypoints": torch.tensor(self.keypoints[i], dtype=torch.float32),
            "object_points": torch.tensor(surface, dtype=torch.float32),
            "inside_points": torch.tensor(inside, dtype=torch.float32),
            "object_index": torch.tensor(int(self.object_index[i]), dtype=torch.long),
        }


class FakeGraspDataModule(L.LightningDataModule):
    """Spheres grasped by curled skeletons; ``grasp_objects(split)`` like the real grasp datamodules."""

    def __init__(
        self,
        num_train: int = 64,
        num_val: int = 16,
        batch_size: int = 16,
        val_batch_size: int = 16,
        n_object_points: int = 128,
        n_inside_points: int = 128,
        train_radii: tuple[float, ...] = (0.025, 0.03, 0.035, 0.04, 0.045),
        val_radii: tuple[float, ...] = (0.0325, 0.0425),
        seed: int = 0,
    ):
        super().__init__()
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.n_object_points = n_object_points
        self.n_inside_points = n_inside_points
        self.seed = seed
        self.objects = [sphere_object(f"ball{int(r * 1000)}", r, seed=k) for k, r in enumerate(train_radii)]
        self.objects += [
            sphere_object(f"val{int(r * 1000)}", r, seed=100 + k) for k, r in enumerate(val_radii)
        ]
        self.splits = {
            "train": list(range(len(train_radii))),
            "val": list(range(len(train_radii), len(self.objects))),
        }
        rng = np.random.default_rng(seed)
        self.data = {}
        for split, n in (("train", num_train), ("val", num_val)):
            ids = np.array([self.splits[split][i % len(self.splits[split])] for i in range(n)])
            radii = [float(np.linalg.norm(self.objects[o].mesh.vertices, axis=1).max()) for o in ids]
            kps = np.stack([grasp_around(r, rng) for r in radii])
            self.data[split] = (kps.astype(np.float32), ids)

    @property
    def object_names(self) -> list[str]:
        return [o.name for o in self.objects]

    def grasp_objects(self, split: str) -> list[GraspObject]:
        return [self.objects[i] for i in self.splits[split]]

    def _dataset(self, split: str) -> _Grasps:
        kps, ids = self.data[split]
        return _Grasps(
            kps, ids, self.objects, self.n_object_points, self.n_inside_points, self.seed, split != "train"
        )

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("train"), batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self._dataset("val"), batch_size=self.val_batch_size, shuffle=False)
