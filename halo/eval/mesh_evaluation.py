"""Mesh-level evaluation of a HALO base model on a split of the original dataset layout.

For every sample of ``<root>/<split>`` (see :mod:`halo.data.layout`):

1. the keypoints come from its ``points/`` file;
2. a mesh is extracted with :func:`halo.meshing.hand_mesh.extract_hand_mesh` (timed: ``seconds``);
3. :func:`halo.eval.surface_metrics.mesh_metrics` scores it against the ground-truth ``pointcloud/``
   (points + normals) and the volumetric IoU points (``points_iou/``; for layouts without
   that folder, e.g. the published test set, the uniform first half of ``points/``, as the
   datamodule does), giving Chamfer-L1/L2, accuracy, completeness, normal consistency,
   F-scores and the mesh IoU ``iou``;
4. ``occupancy_iou`` is the network's own IoU on the same IoU points (occupancy >= threshold
   vs ground truth, no mesh involved), computed as the training loop's ``val/iou``: per
   sample intersection / union, 1 when both sets are empty.  The mean of ``occupancy_iou``
   over the validation names (the first ``max_val_samples`` of ``datalist.txt``) with the
   same ``iou_points`` prefix (the datamodule's ``iou_points_per_sample``) is the logged
   ``val/iou``.

Everything is metres, in the frame the dataset stores (the normalized hand frame).  No
Lightning here: :mod:`callbacks.mesh_validation` and ``halo eval`` both use these functions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import trimesh

from halo.core.model import HaloModel
from halo.data.layout import (
    read_datalist,
    read_mesh,
    read_pointcloud,
    read_points,
    sample_paths,
)
from halo.eval.surface_metrics import mesh_metrics
from halo.geometry.mesh_io import save_mesh
from halo.meshing.hand_mesh import HandMesh, extract_hand_mesh
from halo.utils.progress import progress_bar
from halo.utils.tables import write_csv
from halo.viz.camera import palm_view

__all__ = [
    "EvalSample",
    "ROW_COLUMNS",
    "comparison_grid",
    "evaluate_sample",
    "evaluate_split",
    "format_label",
    "load_eval_sample",
    "network_iou",
    "occupancy_iou",
    "render_comparison",
    "split_names",
    "write_rows_csv",
]

#: Column order of evaluation rows (``fscore_*`` follow the thresholds given; 1 and 2 mm by default).
ROW_COLUMNS = (
    "name",
    "occupancy_iou",
    "iou",
    "chamfer_l1_mm",
    "chamfer_l2_mm2",
    "accuracy_mm",
    "completeness_mm",
    "normal_consistency",
    "fscore_1mm",
    "fscore_2mm",
    "empty",
    "seconds",
    "vertices",
    "faces",
)


# ---------------------------------------------------------------------------------------------
# Ground truth of one sample
# ---------------------------------------------------------------------------------------------


@dataclass
class EvalSample:
    """Ground truth of one sample, metres, float32 (bool occupancies)."""

    name: str
    split_dir: Path
    keypoints: np.ndarray  # (21,3)
    surface_points: np.ndarray  # (S,3) pointcloud/
    surface_normals: np.ndarray  # (S,3) unit
    iou_points: np.ndarray  # (K,3)
    iou_occupancies: np.ndarray  # (K,) bool
    iou_source: str  # "points_iou" or "points (uniform half)"

    def gt_mesh(self) -> trimesh.Trimesh | None:
        """The sealed ground-truth mesh (``mesh_scaled/``), metres; None when the file is absent."""
        path = sample_paths(self.split_dir, self.name)["mesh"]
        return read_mesh(path) if path.is_file() else None


def load_eval_sample(split_dir: str | Path, name: str, *, iou_points: int | None = None) -> EvalSample:
    """Read one sample's keypoints, point cloud and IoU points.

    ``iou_points``: use only the first K IoU points (the datamodule's ``iou_points_per_sample``
    prefix); None or -1: all.  Without ``points_iou/`` the uniform first half of ``points/``
    is used (im2mesh writes the uniform points first), exactly like the datamodule.
    """
    split_dir = Path(split_dir)
    paths = sample_paths(split_dir, name)
    hand = read_points(paths["points"])
    surface, normals = read_pointcloud(paths["pointcloud"])
    if paths["points_iou"].is_file():
        iou = read_points(paths["points_iou"], with_metadata=False)
        pts, occ, source = iou.points, iou.occupancies, "points_iou"
    else:
        half = len(hand.points) // 2
        pts, occ, source = hand.points[:half], hand.occupancies[:half], "points (uniform half)"
    if iou_points is not None and iou_points >= 0:
        pts, occ = pts[: int(iou_points)], occ[: int(iou_points)]
    return EvalSample(
        name=name,
        split_dir=split_dir,
        keypoints=hand.keypoints.astype(np.float32),
        surface_points=surface,
        surface_normals=normals,
        iou_points=pts.astype(np.float32),
        iou_occupancies=occ.astype(bool),
        iou_source=source,
    )


def split_names(
    split_dir: str | Path, names: Sequence[str] | None = None, limit: int | None = None
) -> list[str]:
    """``names`` (default: the split's ``datalist.txt`` order), cut to the first ``limit``."""
    out = list(names) if names is not None else read_datalist(split_dir)
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        out = out[: int(limit)]
    return out


# ---------------------------------------------------------------------------------------------
# Network IoU (the training loop's val/iou)
# ---------------------------------------------------------------------------------------------


def occupancy_iou(pred_prob: torch.Tensor, gt_occ: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per-sample IoU (B,) of predicted occupancy ``>= threshold`` against ground truth ``>= 0.5``.

    A sample where both sets are empty has IoU 1.  Same definition as
    the logged ``val/iou`` (``lightning_modules.halo_base`` uses this function).
    """
    pred = pred_prob >= threshold
    gt = gt_occ >= 0.5
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(union))


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    p = next(model.parameters(), None)
    return (p.device, p.dtype) if p is not None else (torch.device("cpu"), torch.float32)


@torch.no_grad()
def network_iou(
    model: HaloModel,
    keypoints: np.ndarray,
    points: np.ndarray,
    occupancies: np.ndarray,
    *,
    threshold: float = 0.5,
    is_left: bool = False,
    chunk_size: int = 100_000,
) -> float:
    """IoU of the network's occupancy (>= ``threshold``) at ``points`` against ``occupancies``.

    One forward per ``chunk_size`` points with float32 inputs, as the validation step does.
    """
    device, _ = _model_device_dtype(model)
    kp = torch.as_tensor(np.asarray(keypoints, np.float32), device=device)[None]
    left = torch.tensor([bool(is_left)], device=device)
    pts = torch.as_tensor(np.asarray(points, np.float32), device=device)
    probs = [
        model(pts[None, s : s + chunk_size], kp, left).occupancy[0] for s in range(0, len(pts), chunk_size)
    ]
    pred = torch.cat(probs) if probs else torch.zeros(0, device=device)
    gt = torch.as_tensor(np.asarray(occupancies, np.float32), device=device)
    return float(occupancy_iou(pred[None], gt[None], threshold)[0])


# ---------------------------------------------------------------------------------------------
# Per-sample and per-split evaluation
# ---------------------------------------------------------------------------------------------


def evaluate_sample(
    model: HaloModel,
    sample: EvalSample,
    *,
    resolution_0: int = 32,
    upsampling_steps: int = 2,
    n_samples: int = 100_000,
    threshold: float = 0.5,
    with_occupancy_iou: bool = True,
    fscore_thresholds_mm: Sequence[float] = (1.0, 2.0),
    seed: int = 0,
    hand: HandMesh | None = None,
    interpolate: str = "logit",
) -> tuple[dict, HandMesh]:
    """Extract one mesh (or take ``hand``, e.g. from ``extract_hand_meshes``) and score it; returns (row, mesh).

    The row holds ``name``, ``occupancy_iou`` (NaN when ``with_occupancy_iou`` is False),
    the :class:`~halo.eval.surface_metrics.MeshMetrics` fields (``iou`` is the mesh's inside test at the
    IoU points), ``seconds`` (mesh extraction wall time) and the mesh's ``vertices``/``faces``.
    """
    t0 = time.perf_counter()
    given = hand is not None
    if not given:
        hand = extract_hand_mesh(
            model,
            sample.keypoints,
            resolution_0=resolution_0,
            upsampling_steps=upsampling_steps,
            threshold=threshold,
            interpolate=interpolate,
        )
    seconds = hand.stats.seconds if given else time.perf_counter() - t0
    metrics = mesh_metrics(
        hand.mesh,
        sample.surface_points,
        sample.surface_normals,
        iou_points=sample.iou_points,
        iou_occupancy=sample.iou_occupancies,
        n_samples=n_samples,
        fscore_thresholds_mm=fscore_thresholds_mm,
        seed=seed,
    ).as_dict()
    occ_iou = float("nan")
    if with_occupancy_iou:
        occ_iou = network_iou(
            model, sample.keypoints, sample.iou_points, sample.iou_occupancies, threshold=threshold
        )
    values = {"name": sample.name, "occupancy_iou": occ_iou, **metrics, "seconds": seconds}
    values.update(vertices=len(hand.mesh.vertices), faces=len(hand.mesh.faces))
    row = {k: values[k] for k in ROW_COLUMNS if k in values}
    row.update({k: v for k, v in values.items() if k not in row})  # e.g. other F-score thresholds
    return row, hand


def evaluate_split(
    model: HaloModel,
    split_dir: str | Path,
    *,
    names: Sequence[str] | None = None,
    limit: int | None = None,
    iou_points: int | None = None,
    resolution_0: int = 32,
    upsampling_steps: int = 2,
    n_samples: int = 100_000,
    threshold: float = 0.5,
    with_occupancy_iou: bool = True,
    mesh_dir: str | Path | None = None,
    mesh_format: str = "ply",
    progress: bool = True,
    on_sample: Callable[[dict, HandMesh, EvalSample], None] | None = None,
    interpolate: str = "logit",
) -> list[dict]:
    """Evaluate ``model`` on the samples of ``split_dir``; one row per sample (see :func:`evaluate_sample`).

    Args:
        names: samples to evaluate (default: ``datalist.txt`` order); ``limit`` keeps the first N.
        iou_points: IoU-point prefix per sample (the datamodule's ``iou_points_per_sample``;
            None/-1: all).  With ``names``/``limit`` = the validation subset and the same prefix,
            the mean ``occupancy_iou`` reproduces the logged ``val/iou``.
        resolution_0, upsampling_steps: mesh extraction (effective grid resolution_0 * 2**steps).
        n_samples: points sampled on each predicted mesh for the surface metrics.
        threshold: occupancy iso-level of the mesh and threshold of ``occupancy_iou``.
        with_occupancy_iou: compute ``occupancy_iou`` (a full network forward at every IoU
            point: ~4 s per hand for 100k points on one CPU thread; NaN when False).
        mesh_dir: when given, each mesh is written as ``<mesh_dir>/<name>.<mesh_format>``.
        progress: tqdm bar on stderr.
        on_sample: called with (row, mesh, sample) after each sample (renders, logging).
        interpolate: "logit" (default) or "probability" (the original's meshes); see
            :func:`halo.meshing.hand_mesh.extract_hand_mesh`.
    """
    split_dir = Path(split_dir)
    todo = split_names(split_dir, names, limit)
    if mesh_dir is not None:
        mesh_dir = Path(mesh_dir)
        mesh_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    was_training = model.training
    model.eval()
    try:
        for name in progress_bar(todo, desc="evaluating", unit="hand", enabled=progress):
            sample = load_eval_sample(split_dir, name, iou_points=iou_points)
            row, hand = evaluate_sample(
                model,
                sample,
                resolution_0=resolution_0,
                upsampling_steps=upsampling_steps,
                n_samples=n_samples,
                threshold=threshold,
                with_occupancy_iou=with_occupancy_iou,
                interpolate=interpolate,
            )
            if mesh_dir is not None:
                save_mesh(hand.mesh, mesh_dir / f"{name}.{mesh_format}")
            rows.append(row)
            if on_sample is not None:
                on_sample(row, hand, sample)
    finally:
        model.train(was_training)
    return rows


def write_rows_csv(rows: Sequence[Mapping[str, object]], path: str | Path) -> Path:
    """Rows -> CSV (columns in :data:`ROW_COLUMNS` order, then any others in order of appearance).

    Floats are written with ``repr`` (round-trip exact).
    """
    keys: list[str] = [c for c in ROW_COLUMNS if any(c in r for r in rows)]
    for r in rows:
        keys += [k for k in r if k not in keys]
    exact = [{k: _csv_value(r.get(k, "")) for k in keys} for r in rows]
    return write_csv(exact, path, keys)


def _csv_value(v: object) -> object:
    if isinstance(v, float | np.floating):
        return repr(float(v))
    return v


# ---------------------------------------------------------------------------------------------
# Renders: predicted | ground truth
# ---------------------------------------------------------------------------------------------


def _blank(size: int, shade: int = 235) -> np.ndarray:
    return np.full((size, size, 3), shade, dtype=np.uint8)


def render_comparison(
    pred: trimesh.Trimesh,
    gt: trimesh.Trimesh | None,
    keypoints: np.ndarray,
    *,
    size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, ground truth) renders of one hand with one camera (framed on the GT mesh).

    The camera depends on the ground truth only, so renders of the same hand at different
    training steps are directly comparable.  Empty/missing meshes give a grey tile.
    """
    from halo.viz import render

    frame = gt.vertices if gt is not None and len(gt.faces) else pred.vertices
    if len(frame) == 0:
        return _blank(size), _blank(size)
    camera = render.Camera.framing(
        np.asarray(frame), width=size, height=size, fill=0.85, view=palm_view(keypoints)
    )
    pred_img = render.render_mesh(pred, camera) if len(pred.faces) else _blank(size)
    gt_img = (
        render.render_mesh(gt, camera, color=(0.85, 0.75, 0.6))
        if gt is not None and len(gt.faces)
        else _blank(size)
    )
    return pred_img, gt_img


def comparison_grid(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: Sequence[str],
    *,
    hands_per_row: int = 2,
) -> np.ndarray:
    """Tile (predicted, ground truth) render pairs, ``hands_per_row`` pairs per row.

    ``labels``: one caption per hand, drawn on its predicted tile (the GT tile reads
    "ground truth").
    """
    from halo.viz import render

    if len(pairs) != len(labels):
        raise ValueError(f"got {len(labels)} labels for {len(pairs)} hands")
    images, captions = [], []
    for (pred, gt), label in zip(pairs, labels, strict=True):
        images += [pred, gt]
        captions += [label, "ground truth"]
    ncols = 2 * max(1, min(hands_per_row, len(pairs)))
    return render.render_grid(images, ncols=ncols, labels=captions, pad=4)


def format_label(row: Mapping[str, object]) -> str:
    """Short caption of one row: name, mesh IoU, Chamfer-L1."""
    iou = float(row.get("iou", math.nan))
    cd = float(row.get("chamfer_l1_mm", math.nan))
    return f"{row.get('name', '')}  IoU {iou:.3f}  CD-L1 {cd:.2f} mm"
