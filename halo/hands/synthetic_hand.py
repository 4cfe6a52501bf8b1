"""A procedurally built right hand in the MANO file format, and a natural-pose sampler.

No MANO file can be shipped (its licence forbids redistribution), so the
project's default data come from this model.  It goes through the same
:class:`halo.hands.mano.ManoLayer`, files and readers as a real MANO model.

Conventions (rest pose, metres; chosen to match MANO's right hand):

* wrist joint (MANO joint 0) at the origin;
* fingers point along -x, the back of the hand faces +y (the palm faces -y),
  the thumb is on the +z side;
* 16 joints in MANO's internal order (0 wrist, 1-3 index, 4-6 middle,
  7-9 pinky, 10-12 ring, 13-15 thumb) with MANO's kinematic tree; fingertip
  vertices in the order thumb, index, middle, ring, pinky;
* pose parameters are MANO's: per joint an axis-angle rotation in the
  (rest-aligned) parent frame.  Positive flexion curls a finger towards the
  palm (about +z for a finger along -x).

Construction (see :func:`build_synthetic_hand_model`):

1. A skeleton with adult proportions (wrist to middle fingertip 0.1835 m,
   palm 0.096 m, phalanges within ~10% of measured hands).
2. A signed distance field: a rounded palm slab, a thenar pad, tapered
   capsules per phalanx, joined with smooth minimums (webs between fingers).
3. A hand-topology control mesh (palm tube of 20-vertex rings closed at the
   wrist, four finger tubes branching from it, the thumb tube growing out of
   its palmar-radial side, 8-vertex rings denser near joints), one Loop
   subdivision, then vertices are pulled onto the distance field's zero set
   with tangential relaxation.  The result is one closed (sealed wrist),
   watertight, manifold component whose edge loops run around the fingers,
   which keeps linear blend skinning clean at bent joints.
4. Skinning weights from each vertex's position along its finger chain with
   smooth blends across joints, diffused over the surface; a convex joint
   regressor that reproduces the joint centres; 10 shape blend shapes
   (size, palm width/length/thickness, finger length/thickness, thumb, index
   vs ring, pinky, fleshiness); zero pose blend shapes; a 45-D PCA pose basis
   from :func:`sample_hand_poses`.

The parts live in their own modules: :mod:`halo.hands.synthetic_design` (skeleton, SDF),
:mod:`halo.hands.synthetic_mesh` (surface), :mod:`halo.hands.synthetic_rig` (weights,
regressor, joint frames, shape space) and :mod:`halo.hands.pose_sampler` (poses); this
module assembles the model, writes it and caches it.  The names users call are
re-exported here.

The topology is fixed by this code (no marching cubes, no library remesher),
so the same model is produced on every machine.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from halo.core.skeleton import FINGER_NAMES
from halo.hands.mano import ManoModel, load_mano_model, save_mano_model_npz, save_mano_model_pkl
from halo.hands.mano_file import MANO_PARENTS
from halo.hands.pose_sampler import POSE_KINDS, finger_clearances, interpolate_poses, sample_hand_poses
from halo.hands.synthetic_mesh import rest_surface
from halo.hands.synthetic_rig import (
    POSE_LIMITS_DEG,
    angles_to_pose,
    joint_frames,
    joint_regressor,
    pose_to_angles,
    shape_blend_shapes,
    skinning_weights,
)

__all__ = [
    "POSE_KINDS",
    "POSE_LIMITS_DEG",
    "angles_to_pose",
    "build_synthetic_hand_model",
    "finger_clearances",
    "get_synthetic_hand_model",
    "interpolate_poses",
    "joint_frames",
    "load_synthetic_hand_model",
    "pose_to_angles",
    "sample_hand_poses",
    "save_synthetic_hand_model",
]


def _pca_pose_basis(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """hands_mean (45,) and hands_components (45,45) (orthonormal rows, by decreasing variance)."""
    poses = sample_hand_poses(num_samples, seed)
    mean = poses.mean(0)
    _, _, vt = np.linalg.svd(poses - mean, full_matrices=False)
    return mean, vt


# ----------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------


def build_synthetic_hand_model(seed: int = 0, num_pca_samples: int = 6000) -> ManoModel:
    """Build the synthetic right hand as a :class:`halo.hands.mano.ManoModel`.

    Args:
        seed: seed of the pose samples behind the PCA pose space (the mesh,
            weights, regressor and shape space do not depend on it).
        num_pca_samples: poses drawn from :func:`sample_hand_poses` for the PCA.

    Returns:
        A MANO-format model: ~1,580 vertices, ~3,150 faces, closed and
        watertight (sealed wrist), 16 joints, 10 betas, zero pose blend shapes.
    """
    verts, faces, tip_ids = rest_surface()
    weights = skinning_weights(verts, faces)
    regressor = joint_regressor(verts)
    joints = regressor @ verts
    tips = np.array([tip_ids[n] for n in FINGER_NAMES])
    mean, components = _pca_pose_basis(seed, num_pca_samples)
    kintree = np.array([[2**32 - 1, *MANO_PARENTS[1:]], list(range(16))], dtype=np.int64)
    return ManoModel(
        v_template=verts,
        f=faces,
        weights=weights,
        posedirs=np.zeros((len(verts), 3, 135)),
        shapedirs=shape_blend_shapes(verts, faces, weights, joints),
        J_regressor=regressor,
        kintree_table=kintree,
        hands_components=components,
        hands_mean=mean,
        tip_vertex_ids=tips,
        side="right",
        source="<synthetic hand>",
    )


def save_synthetic_hand_model(model: ManoModel, path: str | Path) -> Path:
    """Write the model as ``.npz`` (dense arrays) or ``.pkl`` (official MANO pickle layout), by suffix."""
    path = Path(path)
    if path.suffix == ".npz":
        return save_mano_model_npz(model, path)
    if path.suffix == ".pkl":
        return save_mano_model_pkl(model, path)
    raise ValueError(f"save_synthetic_hand_model: {path}: use a .npz or .pkl suffix")


def load_synthetic_hand_model(path: str | Path) -> ManoModel:
    """Read a model written by :func:`save_synthetic_hand_model` (either format)."""
    return load_mano_model(path)


@functools.lru_cache(maxsize=4)
def _cached_model(seed: int) -> ManoModel:
    model = build_synthetic_hand_model(seed)
    for value in model.arrays().values():
        value.setflags(write=False)  # shared by every caller in this process
    return model


def get_synthetic_hand_model(cache_path: str | Path | None = None, seed: int = 0) -> ManoModel:
    """The synthetic hand, built once per process and, with ``cache_path``, once per machine.

    The in-process model is shared, so its arrays are read-only (copy to edit).

    Args:
        cache_path: optional ``.npz`` file; read when it exists, else written
            after building.
        seed: PCA seed (see :func:`build_synthetic_hand_model`).
    """
    if cache_path is not None and Path(cache_path).is_file():
        return load_mano_model(cache_path)
    model = _cached_model(seed)
    if cache_path is not None:
        save_mano_model_npz(model, cache_path)
    return model
