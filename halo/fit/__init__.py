"""``halo fit``: 21 keypoints from a hand surface through HALO's differentiable occupancy."""

from halo.fit.fit import FitConfig, FitReport, FitResult, fit_hand, fit_hands
from halo.fit.inputs import (
    FitInputError,
    HandSurface,
    free_space_samples,
    hand_surface_from_mesh,
    load_hand_surface,
    single_view_cloud,
)

__all__ = [
    "FitConfig",
    "FitInputError",
    "FitReport",
    "FitResult",
    "HandSurface",
    "fit_hand",
    "fit_hands",
    "free_space_samples",
    "hand_surface_from_mesh",
    "load_hand_surface",
    "single_view_cloud",
]
