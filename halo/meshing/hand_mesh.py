"""Hand meshes from keypoints: MISE over the model's query box, back to metres in the input frame.

The grid spans the original generator's box, [-0.55, 0.55]^3 model units
(= +-22 cm around the wrist in the normalized hand frame; ``padding`` 0.1 on a
unit cube), so ``resolution_0=64, upsampling_steps=3`` reproduces the release's
effective 512 grid.  Vertices are mapped back through the inverse global
normalization, so the mesh sits on the keypoints given (metres).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.core.skeleton import FINGER_NAMES, PART_NAMES
from halo.meshing.hand_field import FieldStats, HandOccupancyField
from halo.meshing.isosurface import ExtractionStats, extract_isosurface, extract_isosurface_dense
from halo.viz.render import FINGER_COLORS, WRIST_COLOR


def _part_colors() -> np.ndarray:
    """(16,3) uint8: each finger's skeleton colour (halo.viz.render), lighter towards the tip; palm = wrist grey."""
    finger_of_part = [FINGER_NAMES.index(name.rstrip("123")) for name in PART_NAMES[1:]]
    level_of_part = [int(name[-1]) - 1 for name in PART_NAMES[1:]]
    colors = [np.array(WRIST_COLOR)]
    for f, lv in zip(finger_of_part, level_of_part, strict=True):
        base = np.array(FINGER_COLORS[f])
        colors.append(base + (1.0 - base) * 0.25 * lv)  # blend towards white
    return np.round(np.stack(colors) * 255).astype(np.uint8)


#: One colour per part (RGB 0-255), matching the skeleton renders' finger colours.
PART_COLORS = _part_colors()


@dataclass
class HandMesh:
    mesh: trimesh.Trimesh  # metres, in the keypoints' frame
    stats: ExtractionStats
    field_stats: FieldStats  # network work: points and (point, part) evaluations, calibration included
    part_labels: np.ndarray | None = None  # (V,) part index per vertex

    @property
    def part_names(self) -> tuple[str, ...]:
        return PART_NAMES


def _box(padding: float) -> tuple[list[float], list[float]]:
    half = (1.0 + padding) / 2
    return [-half] * 3, [half] * 3


def extract_hand_mesh(
    model: HaloModel,
    keypoints: np.ndarray | torch.Tensor,
    *,
    is_left: bool = False,
    resolution_0: int = 32,
    upsampling_steps: int = 3,
    threshold: float = 0.5,
    padding: float = 0.1,
    part_labels: bool = False,
    dense: bool = False,
    cull: bool | str = "radius",
    batch_size: int = 100_000,
) -> HandMesh:
    """Mesh of the hand described by ``keypoints`` (21,3) metres, MANO order.

    Args:
        resolution_0, upsampling_steps: MISE coarse grid and refinement steps;
            effective resolution = resolution_0 * 2**upsampling_steps.
        threshold: occupancy iso-level (probability).
        padding: the box is the unit cube grown by ``padding`` (model units).
        part_labels: colour vertices by the part attaining the max (``mesh.visual``).
        dense: evaluate the full grid instead of MISE (reference / debugging).
        cull: part culling: "radius" (calibrated canonical-space bounds, default), "ibp"
            (interval bounds, exact but slow for the released model) or False (all parts).
    """
    kp = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    if kp.shape != (21, 3):
        raise ValueError(f"keypoints must have shape (21, 3) in metres, got {tuple(kp.shape)}")
    field = HandOccupancyField(model, kp, is_left=is_left, cull=cull, half_side=(1.0 + padding) / 2)
    lo, hi = _box(padding)
    if dense:
        res = resolution_0 * 2**upsampling_steps
        verts, faces, stats = extract_isosurface_dense(field, lo, hi, res, threshold, batch_size)
    else:
        verts, faces, stats = extract_isosurface(
            field, lo, hi, resolution_0, upsampling_steps, threshold, batch_size
        )
    labels = None
    if part_labels and len(verts):
        labels = field.part_labels(verts.astype(np.float32))
    pose = field.pose
    with torch.no_grad():
        verts_m = HaloModel.points_from_model(pose, torch.from_numpy(verts)[None].to(pose.normalization))
    if torch.linalg.det(pose.normalization[0, :3, :3]) < 0:  # left hands: the mirror flips the winding
        faces = faces[:, ::-1].copy()
    mesh = trimesh.Trimesh(verts_m[0].double().numpy(), faces, process=False)
    if labels is not None:
        mesh.visual.vertex_colors = PART_COLORS[labels % len(PART_COLORS)]
    return HandMesh(mesh, stats, field.stats, labels)
