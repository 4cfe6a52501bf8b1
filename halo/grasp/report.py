"""Tables, diversity and renders of generated grasps (:mod:`halo.grasp.pipeline` results).

One summary for the grasp-validation callback and ``halo generate grasps``: per-object means
(:func:`object_rows`), the diversity of all grasps pooled (:func:`halo.grasp.diversity.grasp_diversity`),
a markdown report (:func:`report_markdown`), CSV rows, and hand + object renders.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh

from halo.grasp.diversity import Diversity, grasp_diversity
from halo.grasp.pipeline import GraspResult
from halo.utils.tables import markdown_table, write_csv

__all__ = [
    "GRASP_TABLE_COLUMNS",
    "OBJECT_TABLE_COLUMNS",
    "GraspSummary",
    "format_markdown_table",
    "grasp_label",
    "grasp_view",
    "object_rows",
    "render_grasp",
    "report_markdown",
    "summarize_grasps",
    "summary_row",
    "write_csv",
]

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


@dataclass(frozen=True)
class GraspSummary:
    """Per-object rows (the last one is ``all``) and the diversity of all grasps pooled."""

    per_object: list[dict[str, object]]
    diversity: Diversity

    @property
    def overall(self) -> dict[str, object]:
        return self.per_object[-1]


def summarize_grasps(
    results: Sequence[GraspResult], *, k: int = 20, seed: int = 0, init: str = "random"
) -> GraspSummary:
    """Per-object means + :func:`halo.grasp.diversity.grasp_diversity` over every grasp's keypoints."""
    keypoints = np.stack([r.keypoints for r in results]) if results else np.zeros((0, 21, 3))
    return GraspSummary(object_rows(results), grasp_diversity(keypoints, k=k, seed=seed, init=init))


def report_markdown(title: str, summary: GraspSummary) -> str:
    """``# title``, the per-object table and the diversity sentence."""
    table = format_markdown_table(summary.per_object, OBJECT_TABLE_COLUMNS)
    return f"# {title}\n\n{table}\n{summary.diversity.line()}\n"


# ----------------------------------------------------------------------------- tables


def format_markdown_table(rows: Sequence[dict], columns: Sequence[str]) -> str:
    """A GitHub markdown table of ``rows`` (floats to 3 decimals): :func:`halo.utils.tables.markdown_table`."""
    return markdown_table(rows, columns)


# ----------------------------------------------------------------------------- renders


def grasp_label(result: GraspResult) -> str:
    """Render caption: grasp name, interpenetration volume and contact (or "failed")."""
    m = result.metrics
    if m is None:
        return f"{result.name} failed"
    return f"{result.name} {m.volume_cm3:.1f} cm3, {'contact' if m.contact else 'no contact'}"


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
