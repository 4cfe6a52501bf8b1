"""Fixtures shared by the grasp tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from halo.core.checkpoint import save_checkpoint
from halo.core.model import HaloModel, NetworkConfig


@pytest.fixture(scope="session")
def halo_base(tmp_path_factory) -> Path:
    """A small random HALO base (part culling on, so its 'hand' is a blob around the bones) in this project's format."""
    torch.manual_seed(0)
    model = HaloModel(NetworkConfig(hidden_dims=(16, 16, 16, 16), part_radii="default"))
    return save_checkpoint(model, tmp_path_factory.mktemp("halo_base") / "halo_base_best.pt")
