"""Test helpers: procedurally posed hand skeletons (no external data)."""

from __future__ import annotations

import torch

from halo.hands.sequences import random_skeletons


def random_hands(n: int, seed: int = 0, curl: float = 0.6, dtype=torch.float64) -> torch.Tensor:
    """(n,21,3) plausible right-hand keypoints (metres): random curls, rotation and translation."""
    return torch.tensor(random_skeletons(n, seed=seed, max_flexion=curl), dtype=dtype)


def quiet_trainer(root, **kwargs):
    """A CPU Lightning Trainer without logger, progress bar, summary, checkpoints or sanity check."""
    import lightning as L

    defaults = dict(
        default_root_dir=root,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
    )
    return L.Trainer(**{**defaults, **kwargs})
