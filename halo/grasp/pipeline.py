"""Generated grasps -> HALO hand meshes, grasp metrics, renders and tables (shared by the validation
callback and ``halo generate grasps``; no Lightning).

Everything is metres.  A grasp is (21,3) keypoints in the frame of its object mesh; its hand
surface is HALO's marching-cubes mesh (:func:`halo.meshing.hand_mesh.extract_hand_mesh`), scored against the
object with :func:`halo.grasp.metrics.grasp_metrics` (interpenetration volume, penetration
depth, signed distance, contact).  A grasp whose hand cannot be meshed (degenerate skeleton,
empty surface) is kept with ``error`` set and NaN metrics and counts as "no contact".
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.grasp.metrics import GraspMetrics, cluster_analysis, grasp_metrics
from halo.meshing.hand_mesh import extract_hand_mesh

__all__ = [
    "GraspResult",
    "OBJECT_TABLE_COLUMNS",
    "GRASP_TABLE_COLUMNS",
    "diversity",
    "evaluate_grasp",
    "format_markdown_table",
    "grasp_view",
    "progress",
    "object_rows",
    "render_grasp",
    "sample_surface_points",
    "summary_row",
    "write_csv",
]


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


GRASP_TABLE_COLUMNS = (
    "object",
    "grasp",
    "volume_cm3",
    "depth_cm",
    "min_distance_cm",
    "contact",
    "mesh_seconds",
    "error",
)
OBJECT_TABLE_COLUMNS = (
    "object",
    "grasps",
    "volume_cm3",
    "depth_cm",
    "min_distance_cm",
    "contact_ratio",
    "failed",
)


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
) -> GraspResult:
    """Mesh one grasp's hand with HALO and score it against ``obj`` (both metres, the same frame)."""
    kp = np.asarray(keypoints, dtype=np.float32).reshape(21, 3)
    result = GraspResult(object_name, index, kp)
    t0 = time.perf_counter()
    try:
        hand = extract_hand_mesh(
            halo_model, kp, resolution_0=resolution_0, upsampling_steps=upsampling_steps
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


def _nanmean(values: Sequence[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def summary_row(results: Sequence[GraspResult], label: str) -> dict[str, object]:
    """Means over grasps (failed ones excluded from the means, counted as no contact)."""
    rows = [r.row() for r in results]
    return {
        "object": label,
        "grasps": len(rows),
        "volume_cm3": _nanmean([r["volume_cm3"] for r in rows]),
        "depth_cm": _nanmean([r["depth_cm"] for r in rows]),
        "min_distance_cm": _nanmean([r["min_distance_cm"] for r in rows]),
        "contact_ratio": (sum(bool(r["contact"]) for r in rows) / len(rows)) if rows else math.nan,
        "failed": sum(1 for r in results if r.error),
    }


def object_rows(results: Sequence[GraspResult]) -> list[dict[str, object]]:
    """One :func:`summary_row` per object (in first-seen order) plus an ``all`` row."""
    names = list(dict.fromkeys(r.object_name for r in results))
    rows = [summary_row([r for r in results if r.object_name == n], n) for n in names]
    rows.append(summary_row(results, "all"))
    return rows


def diversity(keypoints: np.ndarray, k: int = 20, seed: int = 0) -> dict[str, float]:
    """``entropy`` and ``cluster_size_cm`` of :func:`halo.grasp.metrics.cluster_analysis`, k capped at N // 2.

    Hands the canonical frame is undefined for are dropped; fewer than 2 hands give NaN.
    """
    kp = np.asarray(keypoints, dtype=np.float64).reshape(-1, 21, 3)
    kp = kp[np.isfinite(kp).all(axis=(1, 2))]
    if len(kp) < 2:
        return {"entropy": math.nan, "cluster_size_cm": math.nan, "k": 0}
    k = max(1, min(int(k), len(kp) // 2))  # k = N would put every hand in its own cluster
    try:
        stats = cluster_analysis(kp, k=k, seed=seed)
    except ValueError:  # degenerate hands (parallel root bones) have no canonical frame
        from halo.grasp.vae import plausible_hands

        ok = plausible_hands(torch.from_numpy(kp)).numpy()
        if ok.sum() < 2:
            return {"entropy": math.nan, "cluster_size_cm": math.nan, "k": 0}
        stats = cluster_analysis(kp[ok], k=max(1, min(k, int(ok.sum()) // 2)), seed=seed)
    return {"entropy": stats.entropy, "cluster_size_cm": stats.cluster_size_cm, "k": stats.k}


# ----------------------------------------------------------------------------- renders


def grasp_view(keypoints: np.ndarray, object_center: np.ndarray) -> np.ndarray:
    """Camera rotation (rows x, y, z) looking across the hand-object axis: object below, hand above."""
    kp = np.asarray(keypoints, dtype=np.float64).reshape(21, 3)
    up = kp[[0, 5, 9, 13, 17]].mean(0) - np.asarray(object_center, dtype=np.float64)  # object -> palm
    side = kp[5] - kp[17]  # pinky MCP -> index MCP: look along the palm's width
    if np.linalg.norm(up) < 1e-9:
        up = kp[9] - kp[0]
    y = -up / max(np.linalg.norm(up), 1e-12)  # image y points down: the palm goes up
    z = side - (side @ y) * y
    if np.linalg.norm(z) < 1e-9:
        z = np.cross(y, [1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.cross(y, [0.0, 1.0, 0.0])
    z /= np.linalg.norm(z)
    return np.stack([np.cross(y, z), y, z])


def render_grasp(
    hand: trimesh.Trimesh | None, obj: trimesh.Trimesh, keypoints: np.ndarray, *, size: int = 256
) -> np.ndarray:
    """(size,size,3) uint8: hand (light blue) + object (sand), framed on both, across the grasp axis."""
    from halo.viz import render

    meshes = [obj] + ([hand] if hand is not None and len(hand.faces) else [])
    colors = [(0.85, 0.75, 0.6)] + ([(0.55, 0.7, 0.95)] if len(meshes) > 1 else [])
    frame = np.concatenate([np.asarray(m.vertices) for m in meshes])
    view = grasp_view(keypoints, np.asarray(obj.bounds).mean(0))
    camera = render.Camera.framing(frame, width=size, height=size, fill=0.85, view=view)
    return render.render_scene(meshes, colors=colors, camera=camera)


# ----------------------------------------------------------------------------- tables


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.3f}"
    return str(value)


def format_markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` (floats to 3 decimals)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None) -> Path:
    """Rows -> CSV (columns: ``columns`` or the first row's keys)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow(r)
    return path


def progress(iterable: Iterable, total: int, desc: str, enabled: bool = True) -> Iterable:
    """tqdm progress on stderr when enabled and more than one item."""
    import sys

    from tqdm import tqdm

    return tqdm(
        iterable, total=total, desc=desc, unit="grasp", disable=not enabled or total < 2, file=sys.stderr
    )
