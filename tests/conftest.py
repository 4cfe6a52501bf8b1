"""Shared pytest fixtures.

Tests that need the released original checkpoint or reference outputs read them
from ``../shared/reference/halo_original`` (or ``$HALO_REFERENCE_DIR``) at test
time and skip with a clear reason when that folder is absent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path:
    env = os.environ.get("HALO_REFERENCE_DIR")
    if env:
        return Path(env)
    return REPO_ROOT.parent / "shared" / "reference" / "halo_original"


@pytest.fixture(scope="session")
def halo_reference() -> Path:
    """Folder with the original release's checkpoint and reference outputs."""
    ref = reference_dir()
    if not (ref / "model_best.pt").is_file() or not (ref / "dev_reference.npz").is_file():
        pytest.skip(
            f"original HALO reference files not found in {ref} "
            "(set HALO_REFERENCE_DIR to the folder holding model_best.pt and dev_reference.npz)"
        )
    return ref


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two cores on CI; keep torch from oversubscribing when xdist runs workers.
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
    yield


@pytest.fixture(scope="session")
def model():
    """The synthetic MANO-format hand model (built once per test process)."""
    from halo.hands.synthetic_hand import get_synthetic_hand_model

    return get_synthetic_hand_model()


@pytest.fixture(scope="session")
def layer(model):
    """A float64 MANO layer over the synthetic hand model."""
    from halo.hands.mano import ManoLayer

    return ManoLayer(model, dtype=torch.float64)
