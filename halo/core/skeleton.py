"""Hand skeleton conventions, defined once.

Public convention (every function that takes or returns keypoints outside this
package): 21 joints in the MANO / manopth output order, in metres::

    0 wrist
    1-4   thumb  CMC, MCP, IP, tip
    5-8   index  MCP, PIP, DIP, tip
    9-12  middle MCP, PIP, DIP, tip
    13-16 ring   MCP, PIP, DIP, tip
    17-20 pinky  MCP, PIP, DIP, tip

The original HALO code also used two private orders (MANO-internal "halo" order
and a level-major "biomech" order) and a model scale of metres / 0.4.  Those
live here behind named conversion functions and nowhere else.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_JOINTS = 21
NUM_PARTS = 16
NUM_BONES = 20

JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb_cmc", "thumb_mcp", "thumb_ip", "thumb_tip",
    "index_mcp", "index_pip", "index_dip", "index_tip",
    "middle_mcp", "middle_pip", "middle_dip", "middle_tip",
    "ring_mcp", "ring_pip", "ring_dip", "ring_tip",
    "pinky_mcp", "pinky_pip", "pinky_dip", "pinky_tip",
)  # fmt: skip

FINGER_NAMES: tuple[str, ...] = ("thumb", "index", "middle", "ring", "pinky")

#: Parent of each joint in the public order (-1 for the wrist).
JOINT_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)

#: The 20 bones as (parent joint, child joint) in the public order, finger-major.
BONES: tuple[tuple[int, int], ...] = tuple((JOINT_PARENTS[j], j) for j in range(1, NUM_JOINTS))

#: Joints of each finger from root (CMC / MCP) to tip, public order.
FINGER_JOINTS: tuple[tuple[int, int, int, int], ...] = (
    (1, 2, 3, 4),
    (5, 6, 7, 8),
    (9, 10, 11, 12),
    (13, 14, 15, 16),
    (17, 18, 19, 20),
)

#: Fingers in MANO's internal (16-joint) order, and each finger's MANO joints root to distal.
#: The MANO layer, the synthetic hand and the grasp synthesizer index MANO joints with these.
MANO_FINGER_ORDER: tuple[str, ...] = ("index", "middle", "pinky", "ring", "thumb")
MANO_FINGER_JOINTS: dict[str, tuple[int, int, int]] = {
    name: (3 * i + 1, 3 * i + 2, 3 * i + 3) for i, name in enumerate(MANO_FINGER_ORDER)
}

#: HALO's 16 occupancy parts: name and the bone (parent, child) that drives it.
#: Part order follows the original network (MANO internal joint order):
#: palm, index x3, middle x3, pinky x3, ring x3, thumb x3.  The palm bone is
#: wrist -> middle MCP (its length is the palm length fed to the network).
PART_NAMES: tuple[str, ...] = (
    "palm",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "pinky1", "pinky2", "pinky3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)  # fmt: skip
PART_BONES: tuple[tuple[int, int], ...] = (
    (0, 9),
    (5, 6), (6, 7), (7, 8),
    (9, 10), (10, 11), (11, 12),
    (17, 18), (18, 19), (19, 20),
    (13, 14), (14, 15), (15, 16),
    (1, 2), (2, 3), (3, 4),
)  # fmt: skip

# ----------------------------------------------------------------------------
# Private orders of the original implementation.
# "biomech" = level-major: wrist, the 5 finger roots (thumb..pinky), the 5
# second joints, the 5 third joints, the 5 tips.  "halo" = MANO internal order.
# Each array maps: new[i] = old[ARRAY[i]] along the joint axis.
# ----------------------------------------------------------------------------
_MANO_TO_BIOMECH = (0, 1, 5, 9, 13, 17, 2, 6, 10, 14, 18, 3, 7, 11, 15, 19, 4, 8, 12, 16, 20)
_BIOMECH_TO_MANO = tuple(int(i) for i in np.argsort(_MANO_TO_BIOMECH))
_MANO_TO_HALO = (0, 5, 6, 7, 9, 10, 11, 17, 18, 19, 13, 14, 15, 1, 2, 3, 4, 8, 12, 16, 20)
_HALO_TO_MANO = tuple(int(i) for i in np.argsort(_MANO_TO_HALO))

#: The original network's model space is metres / 0.4 (x2.5) in the
#: normalized hand frame.  Private: use the conversion helpers below.
MODEL_UNITS_PER_METRE = 2.5
#: Half side of the original query/training box, model units (+-22 cm).
MODEL_BOX_HALF_SIDE = 0.55


def _reorder(x, order, joint_axis: int):
    if isinstance(x, torch.Tensor):
        return x.index_select(joint_axis, torch.as_tensor(order, device=x.device))
    return np.take(np.asarray(x), order, axis=joint_axis)


def mano_to_biomech(x, joint_axis: int = -2):
    """Reorder joints (21 along ``joint_axis``) from the public order to the level-major order."""
    return _reorder(x, _MANO_TO_BIOMECH, joint_axis)


def biomech_to_mano(x, joint_axis: int = -2):
    """Inverse of :func:`mano_to_biomech`."""
    return _reorder(x, _BIOMECH_TO_MANO, joint_axis)


def mano_to_halo(x, joint_axis: int = -2):
    """Reorder joints (21 along ``joint_axis``) from the public order to MANO's internal order."""
    return _reorder(x, _MANO_TO_HALO, joint_axis)


def halo_to_mano(x, joint_axis: int = -2):
    """Inverse of :func:`mano_to_halo`."""
    return _reorder(x, _HALO_TO_MANO, joint_axis)


def metres_to_model_units(x):
    """Metres (normalized hand frame) -> the original network's model units."""
    return x * MODEL_UNITS_PER_METRE


def model_units_to_metres(x):
    """The original network's model units -> metres (normalized hand frame)."""
    return x / MODEL_UNITS_PER_METRE


def bone_lengths_from_keypoints(keypoints: torch.Tensor) -> torch.Tensor:
    """Lengths (..., 16) of the 16 part bones, metres, in part order."""
    parent = keypoints[..., [p for p, _ in PART_BONES], :]
    child = keypoints[..., [c for _, c in PART_BONES], :]
    return (child - parent).norm(dim=-1)


_BONE_PARENTS = [p for p, _ in BONES]
_BONE_CHILDREN = [c for _, c in BONES]


def bone_vectors(keypoints):
    """(..., 20, 3) child - parent of the 20 bones in :data:`BONES` order (finger-major, root bone
    first) for keypoints (..., 21, 3); numpy arrays and torch tensors alike."""
    return keypoints[..., _BONE_CHILDREN, :] - keypoints[..., _BONE_PARENTS, :]


#: A hand with a bone shorter than this (metres) has no defined canonical frame.
MIN_BONE_LENGTH_M = 1e-3


def plausible_skeletons(keypoints: torch.Tensor) -> torch.Tensor:
    """(B,) bool for keypoints (B,21,3), metres: finite, every bone >= 1 mm, index and middle root bones
    not parallel.

    HALO's canonicalization is undefined for the other hands (it raises on them); callers that
    must not stop on one degenerate hand (training losses, grasp diversity) filter with this first.
    """
    kp = keypoints.detach()
    finite = torch.isfinite(kp).flatten(1).all(-1)
    kp = torch.nan_to_num(kp)
    bones_ok = (bone_vectors(kp).norm(dim=-1) >= MIN_BONE_LENGTH_M).all(-1)
    middle, index = kp[:, 9] - kp[:, 0], kp[:, 5] - kp[:, 0]
    sin = torch.linalg.cross(middle, index, dim=-1).norm(dim=-1) / (
        middle.norm(dim=-1) * index.norm(dim=-1)
    ).clamp_min(1e-30)
    return finite & bones_ok & (sin > 1e-3)
