"""Transitional re-exports: the grasp synthesizer, the synthetic GRAB writer and its preview moved.

* :mod:`halo.grasp.synthesis`: :class:`GraspSynthesizer` and its configuration;
* :mod:`halo.grasp.synthetic_grab`: :func:`write_synthetic_grab`, :func:`synthetic_grab_root`;
* :mod:`halo.grasp.grab_preview`: :func:`render_grab_grid`.

Only ``halo.cli.data`` still imports from here; the lead removes this module once it is converted.
"""

from halo.grasp.grab_preview import render_grab_grid
from halo.grasp.synthesis import (
    FINGER_NAMES,
    GRAB_PALM_ID,
    Grasp,
    GraspSynthConfig,
    GraspSynthesizer,
    SynthStats,
    grab_part_ids,
    subject_model,
)
from halo.grasp.synthetic_grab import (
    SyntheticGrabConfig,
    SyntheticGrabReport,
    synthetic_grab_key,
    synthetic_grab_root,
    write_synthetic_grab,
)

__all__ = [
    "FINGER_NAMES",
    "GRAB_PALM_ID",
    "Grasp",
    "GraspSynthConfig",
    "GraspSynthesizer",
    "SyntheticGrabConfig",
    "SynthStats",
    "SyntheticGrabReport",
    "grab_part_ids",
    "render_grab_grid",
    "subject_model",
    "synthetic_grab_key",
    "synthetic_grab_root",
    "write_synthetic_grab",
]
