"""Hand meshes from keypoints: MISE over the model's query box, back to metres in the input frame.

The grid spans the original generator's box, [-0.55, 0.55]^3 model units
(= +-22 cm around the wrist in the normalized hand frame; ``padding`` 0.1 on a
unit cube), so ``resolution_0=64, upsampling_steps=3`` reproduces the release's
effective 512 grid.  Vertices are mapped back through the inverse global
normalization, so the mesh sits on the keypoints given (metres).

``interpolate="logit"`` (default) places vertices on the zero crossing of the
max part logit, ``"probability"`` on the 0.5 crossing of the occupancy (the
original generator's meshes, exactly).  Both give the same inside/outside at
every grid node; the logit varies nearly linearly across the surface, so
marching cubes' linear interpolation lands on the surface instead of snapping
towards edge midpoints, which removes the terracing of low-resolution meshes
(bench/bench_speed.py prints the smoothness table).

The network runs on the model's device (CPU or GPU); marching cubes on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.core.skeleton import MODEL_UNITS_PER_METRE, PART_NAMES
from halo.meshing.hand_field import FieldStats, HandOccupancyField, check_interpolate
from halo.meshing.isosurface import (
    ExtractionStats,
    extract_isosurface,
    extract_isosurface_dense,
    extract_isosurfaces,
)


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
    interpolate: str = "logit",
    part_colors: np.ndarray | None = None,
) -> HandMesh:
    """Mesh of the hand described by ``keypoints`` (21,3) metres, MANO order.

    Args:
        resolution_0, upsampling_steps: MISE coarse grid and refinement steps;
            effective resolution = resolution_0 * 2**upsampling_steps.
        threshold: occupancy iso-level (probability; the logit field uses ``logit(threshold)``).
        padding: the box is the unit cube grown by ``padding`` (model units).
        part_labels: label vertices by the part attaining the max (``HandMesh.part_labels``).
        part_colors: (P,3) or (P,4) uint8 palette: colour the labelled vertices with it
            (``mesh.visual``; e.g. ``halo.viz.render.PART_COLORS``).
        dense: evaluate the full grid instead of MISE (reference / debugging).
        cull: part culling: "radius" (calibrated canonical-space bounds, default), "ibp"
            (interval bounds, exact but slow for the released model) or False (all parts).
        interpolate: "logit" (smooth at low resolution) or "probability" (the original's meshes).
    """
    kp = np.asarray(keypoints.detach().cpu() if torch.is_tensor(keypoints) else keypoints, dtype=np.float32)
    if kp.shape != (21, 3):
        raise ValueError(f"keypoints must have shape (21, 3) in metres, got {tuple(kp.shape)}")
    check_interpolate(interpolate)
    field = HandOccupancyField(
        model, kp, is_left=is_left, cull=cull, half_side=(1.0 + padding) / 2, interpolate=interpolate
    )
    iso = field.iso_level(threshold)
    lo, hi = _box(padding)
    if dense:
        res = resolution_0 * 2**upsampling_steps
        verts, faces, stats = extract_isosurface_dense(field, lo, hi, res, iso, batch_size)
    else:
        verts, faces, stats = extract_isosurface(
            field, lo, hi, resolution_0, upsampling_steps, iso, batch_size
        )
    return _finish(field, verts, faces, stats, part_labels, part_colors)


def _finish(
    field: HandOccupancyField,
    verts: np.ndarray,
    faces: np.ndarray,
    stats: ExtractionStats,
    part_labels: bool,
    part_colors: np.ndarray | None,
    hand: int = 0,
) -> HandMesh:
    """Model-space extraction of ``field``'s hand ``hand`` -> HandMesh in metres in the keypoints' frame."""
    labels = None
    if part_labels and len(verts):
        labels = field.part_labels(verts.astype(np.float32), hand)
    norm = field.pose.normalization[hand].detach().double().cpu()
    with torch.no_grad():
        # Inverse normalization in float64 on the CPU: the vertices are float64 numpy already.
        inv = torch.linalg.inv(norm)
        v = torch.from_numpy(verts) / MODEL_UNITS_PER_METRE
        verts_m = (v @ inv[:3, :3].T + inv[:3, 3]).numpy()
    if np.linalg.det(norm[:3, :3].numpy()) < 0:  # left hands: the mirror flips the winding
        faces = faces[:, ::-1].copy()
    mesh = trimesh.Trimesh(verts_m, faces, process=False)
    if labels is not None and part_colors is not None:
        palette = np.asarray(part_colors, dtype=np.uint8)
        mesh.visual.vertex_colors = palette[labels % len(palette)]
    return HandMesh(mesh, stats, field.hand_stats[hand], labels)


def extract_hand_meshes(
    model: HaloModel,
    keypoints: np.ndarray | torch.Tensor,
    *,
    is_left: bool | np.ndarray | list[bool] = False,
    resolution_0: int = 32,
    upsampling_steps: int = 3,
    threshold: float = 0.5,
    padding: float = 0.1,
    part_labels: bool = False,
    dense: bool = False,
    cull: bool | str = "radius",
    interpolate: str = "logit",
    part_colors: np.ndarray | None = None,
    hands_per_call: int = 16,
    progress: Callable[[int], None] | None = None,
) -> list[HandMesh]:
    """Meshes of many hands, ``keypoints`` (T,21,3) metres, several hands per network call.

    The same meshes as :func:`extract_hand_mesh` hand by hand (same arguments; ``is_left`` one
    bool or T), but up to ``hands_per_call`` extractions run in lockstep and every round of
    point requests goes through the network once (:func:`halo.meshing.isosurface.extract_isosurfaces`),
    on the model's device: fewer, larger network calls (what a GPU needs) and the calibration
    of all hands of a group in one call.  ``progress(n)`` is called after each group with the
    number of hands done.  Per-hand ``stats.seconds`` is the group's wall time (field
    construction included) divided by its hands.
    """
    kp = keypoints.detach().cpu().numpy() if torch.is_tensor(keypoints) else np.asarray(keypoints)
    kp = kp.astype(np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (21, 3):
        raise ValueError(f"keypoints must have shape (T, 21, 3) in metres, got {tuple(kp.shape)}")
    left = np.broadcast_to(np.asarray(is_left, dtype=bool).reshape(-1), (len(kp),))
    if int(hands_per_call) < 1:
        raise ValueError(f"hands_per_call must be >= 1, got {hands_per_call}")
    check_interpolate(interpolate)
    lo, hi = _box(padding)
    out: list[HandMesh] = []
    for start in range(0, len(kp), int(hands_per_call)):
        t0 = time.perf_counter()
        group = slice(start, start + int(hands_per_call))
        field = HandOccupancyField(
            model, kp[group], left[group], cull=cull, half_side=(1.0 + padding) / 2, interpolate=interpolate
        )
        results = extract_isosurfaces(
            field.numpy_many,
            field.num_hands,
            lo,
            hi,
            resolution_0,
            upsampling_steps,
            field.iso_level(threshold),
            dense=dense,
        )
        wall = (time.perf_counter() - t0) / field.num_hands
        for i, (verts, faces, stats) in enumerate(results):
            # The group's wall time (calibration included) shared equally: what a hand costs.
            share = stats.seconds_eval / max(stats.seconds, 1e-12)
            stats = replace(stats, seconds=wall, seconds_eval=wall * share)
            out.append(_finish(field, verts, faces, stats, part_labels, part_colors, hand=i))
        if progress is not None:
            progress(len(out))
    return out
