"""The one sample -> mesh -> score pipeline for generated grasps (no Lightning).

Used by the grasp-validation callback (``callbacks.grasp_validation``) and ``halo generate grasps``;
the tables, renders and diversity of its results are :mod:`halo.grasp.report` and
:mod:`halo.grasp.diversity`.

Everything is metres.  A grasp is (21,3) keypoints in the frame of its object mesh; its hand
surface is HALO's marching-cubes mesh (:func:`halo.meshing.hand_mesh.extract_hand_mesh`), scored against the
object with :func:`halo.grasp.metrics.grasp_metrics` (interpenetration volume, penetration
depth, signed distance, contact).  A grasp whose hand cannot be meshed (degenerate skeleton,
empty surface) is kept with ``error`` set and NaN metrics and counts as "no contact".
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.grasp.metrics import GraspMetrics, grasp_metrics
from halo.grasp.selection import choose_grasps
from halo.meshing.hand_mesh import extract_hand_mesh
from halo.utils.progress import progress_bar

__all__ = [
    "GraspObject",
    "GraspResult",
    "Sampler",
    "evaluate_grasp",
    "generate_grasps",
    "sample_surface_points",
]

#: ``sample(object_points (P,3) float32, n, generator) -> (n,21,3)`` keypoints in the object's centred
#: frame (metres): a HALO-VAE's ``sample`` with its refinement setting bound.
Sampler = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]


@dataclass
class GraspObject:
    """One object to generate grasps for.

    ``points`` are the model's input (object surface samples, centred: the frame the VAE was
    trained in); ``center`` moves generated keypoints back to the frame of ``mesh``, the mesh
    the grasps are scored against.
    """

    name: str
    mesh: trimesh.Trimesh
    points: np.ndarray  # (P,3) float32, metres, centred
    center: np.ndarray = field(default_factory=lambda: np.zeros(3))  # (3,) metres


@dataclass
class GraspResult:
    """One generated grasp: keypoints, its HALO hand mesh and metrics (NaN when it failed)."""

    object_name: str
    index: int
    keypoints: np.ndarray  # (21,3) metres, the object's frame
    hand: trimesh.Trimesh | None = None
    metrics: GraspMetrics | None = None
    mesh_seconds: float = math.nan
    error: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.object_name}_{self.index}"

    def row(self) -> dict[str, object]:
        m = self.metrics
        return {
            "object": self.object_name,
            "grasp": self.index,
            "volume_cm3": m.volume_cm3 if m else math.nan,
            "depth_cm": m.depth_cm if m else math.nan,
            "min_distance_cm": m.min_distance_cm if m else math.nan,
            "contact": bool(m.contact) if m else False,
            "mesh_seconds": self.mesh_seconds,
            "error": self.error or "",
            **self.extra,
        }


def sample_surface_points(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> np.ndarray:
    """(n,3) float32 area-uniform surface samples of ``mesh`` (metres), reproducible for a seed."""
    points, _ = trimesh.sample.sample_surface(mesh, int(n), seed=seed)
    return np.asarray(points, dtype=np.float32)


def evaluate_grasp(
    halo_model: HaloModel,
    obj: trimesh.Trimesh,
    keypoints: np.ndarray,
    *,
    object_name: str = "object",
    index: int = 0,
    resolution_0: int = 16,
    upsampling_steps: int = 2,
    pitch_m: float = 0.001,
    contact_tol_m: float = 0.005,
    interpolate: str = "logit",
) -> GraspResult:
    """Mesh one grasp's hand with HALO and score it against ``obj`` (both metres, the same frame)."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(21, 3)
    result = GraspResult(object_name, index, kp)
    t0 = time.perf_counter()
    try:
        hand = extract_hand_mesh(
            halo_model,
            kp,
            resolution_0=resolution_0,
            upsampling_steps=upsampling_steps,
            interpolate=interpolate,
        ).mesh
    except ValueError as exc:  # CanonicalizationError (degenerate skeleton) is a ValueError
        result.error = f"no hand mesh: {exc}"
        return result
    result.mesh_seconds = time.perf_counter() - t0
    # Score the hand as mesh files store it (float32 vertices), so `halo eval grasps` on the
    # written files reproduces these numbers voxel for voxel.
    hand.vertices = np.asarray(hand.vertices, dtype=np.float32).astype(np.float64)
    result.hand = hand
    if len(hand.faces) == 0:
        result.error = "empty hand mesh (HALO occupancy below the threshold everywhere)"
        return result
    try:
        result.metrics = grasp_metrics(
            hand,
            obj,
            pitch_m=pitch_m,
            contact_tol_m=contact_tol_m,
            hand_name=f"hand {result.name}",
            object_name=f"object {object_name}",
        )
    except ValueError as exc:  # MeshNotWatertightError and friends
        result.error = f"metrics failed: {exc}"
    return result


def generate_grasps(
    sample: Sampler,
    halo_model: HaloModel,
    objects: Sequence[GraspObject],
    grasps_per_object: int,
    *,
    seed: int = 0,
    resolution_0: int = 16,
    upsampling_steps: int = 2,
    pitch_m: float = 0.001,
    contact_tol_m: float = 0.005,
    show_progress: bool = False,
    interpolate: str = "logit",
    refine: Callable[[np.ndarray, GraspObject], np.ndarray] | None = None,
    oversample: int = 1,
    gravity: tuple[float, float, float] | None = None,
) -> list[GraspResult]:
    """Sample ``grasps_per_object`` grasps per object, mesh each hand with HALO and score it.

    Object ``k`` draws its latents from ``torch.Generator().manual_seed(seed * 1000 + k)``, so a
    seed gives the same grasps at every call (the callback's rounds differ only by the model).
    Results are in object order, then grasp index; keypoints in the frame of ``object.mesh``.
    ``refine(keypoints (n,21,3), object)`` (e.g. test-time refinement through HALO,
    :func:`halo.grasp.refine.refine_grasps`) maps each object's sampled grasps, in that frame,
    before they are meshed and scored.  ``oversample`` K > 1 draws K x ``grasps_per_object``
    grasps, refines them all (when ``refine`` is given) and keeps the ``grasps_per_object`` that
    touch the object from the most opposing sides and, with ``gravity`` (its direction in the
    objects' frames), whose contacts can best carry the object
    (:func:`halo.grasp.selection.choose_grasps`), in their sampling order.  The choice is made on
    the final hands: chosen before refinement, it did not make refined grasps hold better in the
    simulation (README, HALO-VAE).
    """
    if int(grasps_per_object) < 1:
        raise ValueError(f"grasps_per_object must be >= 1, got {grasps_per_object}")
    if int(oversample) < 1:
        raise ValueError(f"oversample must be >= 1, got {oversample}")
    results: list[GraspResult] = []
    for k, obj in enumerate(objects):
        generator = torch.Generator().manual_seed(int(seed) * 1000 + k)
        points = torch.from_numpy(np.ascontiguousarray(obj.points, dtype=np.float32))
        with torch.no_grad():  # scoped: callers in the same process keep autograd
            keypoints = sample(points, int(grasps_per_object) * int(oversample), generator)
        keypoints = keypoints.detach().cpu().numpy().astype(np.float64) + np.asarray(obj.center, np.float64)
        if refine is not None:
            keypoints = np.asarray(refine(keypoints, obj), dtype=np.float64)
        if int(oversample) > 1:
            keep = choose_grasps(
                halo_model, keypoints, obj.mesh, int(grasps_per_object), gravity=gravity
            ).keep
            keypoints = keypoints[keep]
        for i, kp in progress_bar(
            enumerate(keypoints), total=len(keypoints), desc=obj.name, unit="grasp", enabled=show_progress
        ):
            results.append(
                evaluate_grasp(
                    halo_model,
                    obj.mesh,
                    kp,
                    object_name=obj.name,
                    index=i,
                    resolution_0=resolution_0,
                    upsampling_steps=upsampling_steps,
                    pitch_m=pitch_m,
                    contact_tol_m=contact_tol_m,
                    interpolate=interpolate,
                )
            )
    return results
