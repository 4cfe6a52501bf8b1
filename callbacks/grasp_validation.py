"""Grasp validation of HALO-VAE: generate grasps for the validation objects, mesh them with HALO, score them.

:class:`GraspValidation` runs at the end of every ``every_n_epochs``-th validation (the sanity
check excluded; validation is step-based in the default trainer config, so this counts
validations like :class:`callbacks.mesh_validation.MeshValidation`) and, with
``on_fit_end``, once more with the final weights.  For each object of
``trainer.datamodule.grasp_objects(split)`` (centred, template orientation) it

* samples ``grasps_per_object`` grasps with ``pl_module.sample`` (the same object points and
  the same latent draws at every round, so the curves show the model changing, not noise;
  refined when the module's ``refine_at_generation`` is on);
* meshes each hand with the frozen HALO base (:func:`halo.meshing.hand_mesh.extract_hand_mesh`, low
  resolution for speed: 16/3 = effective 128 by default) and scores it with
  :func:`halo.grasp.metrics.grasp_metrics` (:func:`halo.grasp.pipeline.generate_grasps`, the pipeline
  ``halo generate grasps`` runs);
* logs ``val_grasp/volume_cm3``, ``val_grasp/depth_cm``, ``val_grasp/contact_ratio`` (means over
  all grasps), ``val_grasp/entropy`` and ``val_grasp/cluster_size_cm`` (k-means diversity of all
  grasps pooled, :func:`halo.grasp.diversity.grasp_diversity`: k capped at half the number of grasps),
  ``val_grasp/failed`` (grasps without a usable hand mesh) and ``val_grasp/seconds``;
* writes ``<out_dir>/grasps/<tag>/{per_object.csv,per_object.md,grasps.csv,keypoints.npz}``,
  ``<out_dir>/renders/grasps_<tag>.png`` (one row per object: hand + object) and redraws
  ``<out_dir>/renders/grasp_metrics_curve.png`` (+ ``.csv``) over the run;
* sends the per-object table (W&B ``val_grasp/per_object`` table) and the render grid
  (W&B image / TensorBoard image) to the loggers.

All file, render and logger work happens on global rank zero; the metric values are broadcast
and logged identically on every rank.  A failure is reported as a warning and skips the round.
``out_dir`` defaults to ``trainer.default_root_dir`` (the Hydra run directory in ``train.py``).
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.validation_rounds import ValidationRounds, is_wandb, log_step
from halo.grasp.pipeline import GraspObject, GraspResult, generate_grasps
from halo.grasp.report import (
    GRASP_TABLE_COLUMNS,
    OBJECT_TABLE_COLUMNS,
    grasp_label,
    render_grasp,
    report_markdown,
    summarize_grasps,
    write_csv,
)
from halo.utils.atomic import atomic_write_text

__all__ = ["GraspValidation"]

CURVE_KEYS = ("volume_cm3", "depth_cm", "contact_ratio", "entropy", "cluster_size_cm")


class GraspValidation(ValidationRounds):
    """Generate, mesh, score, save and render grasps for the validation objects (see module docstring).

    Args:
        every_n_epochs: run at every N-th validation (sanity check excluded).
        grasps_per_object: grasps sampled per object.
        max_objects: the first K objects of the split (None: all).
        split: which objects (``val``; ``test`` for a final look).
        resolution_0, upsampling_steps: HALO mesh extraction (effective resolution_0 * 2**steps).
        pitch_m: grid spacing of the interpenetration volume (HALO: 1 mm).
        contact_tol_m: contact = a hand vertex inside the object or within this distance.
        cluster_k: k of the diversity clustering (HALO: 20; capped at half the number of grasps).
        seed: seeds the object samples and the latent draws (fixed across rounds).
        on_fit_end: one more round with the final weights when training ends.
        render: write and log the render grid; render_size: pixels per tile;
        render_grasps_per_object: tiles per object row.
        out_dir: where ``grasps/`` and ``renders/`` go (default ``trainer.default_root_dir``).
    """

    prefix = "val_grasp/"
    fit_only = True

    def __init__(
        self,
        every_n_epochs: int = 1,
        grasps_per_object: int = 8,
        max_objects: int | None = None,
        split: str = "val",
        resolution_0: int = 16,
        upsampling_steps: int = 3,
        pitch_m: float = 0.001,
        contact_tol_m: float = 0.005,
        cluster_k: int = 20,
        seed: int = 0,
        on_fit_end: bool = True,
        render: bool = True,
        render_size: int = 192,
        render_grasps_per_object: int = 4,
        out_dir: str | Path | None = None,
    ):
        super().__init__(every_n_epochs=every_n_epochs, on_fit_end=on_fit_end, out_dir=out_dir)
        if int(grasps_per_object) < 1:
            raise ValueError(f"grasps_per_object must be >= 1, got {grasps_per_object}")
        if max_objects is not None and int(max_objects) < 1:
            raise ValueError(f"max_objects must be >= 1 or null, got {max_objects}")
        if int(resolution_0) < 2 or int(upsampling_steps) < 0:
            raise ValueError(
                f"resolution_0 must be >= 2 and upsampling_steps >= 0, got {resolution_0} / {upsampling_steps}"
            )
        if pitch_m <= 0 or contact_tol_m < 0:
            raise ValueError(f"pitch_m must be > 0 and contact_tol_m >= 0, got {pitch_m} / {contact_tol_m}")
        self.grasps_per_object = int(grasps_per_object)
        self.max_objects = None if max_objects is None else int(max_objects)
        self.split = split
        self.resolution_0 = int(resolution_0)
        self.upsampling_steps = int(upsampling_steps)
        self.pitch_m = float(pitch_m)
        self.contact_tol_m = float(contact_tol_m)
        self.cluster_k = int(cluster_k)
        self.seed = int(seed)
        self.render = bool(render)
        self.render_size = int(render_size)
        self.render_grasps_per_object = int(render_grasps_per_object)

        self.last_results: list[GraspResult] = []

    # ------------------------------------------------------------------ the work
    def _objects(self, trainer: L.Trainer) -> list:
        dm = trainer.datamodule
        if dm is None or not callable(getattr(dm, "grasp_objects", None)):
            raise TypeError(
                "GraspValidation needs a datamodule with grasp_objects(split) (datamodules.grasp's datamodules)"
            )
        objects = list(dm.grasp_objects(self.split))
        if not objects:
            raise ValueError(f"the datamodule has no {self.split!r} objects to generate grasps for")
        return objects[: self.max_objects] if self.max_objects else objects

    def generate(self, pl_module: L.LightningModule, objects: list) -> list[GraspResult]:
        """Sample, mesh and score ``grasps_per_object`` grasps per object (rank-local; no files)."""
        halo = copy.deepcopy(pl_module.halo_model).to(device="cpu", dtype=torch.float32).eval()
        n_points = int(getattr(pl_module, "hparams", {}).get("object_points", 600))
        targets = []
        for k, obj in enumerate(objects):
            # The same object points at every round, so the curves show the model changing, not noise.
            rng = np.random.default_rng([self.seed, k])
            surface = np.asarray(obj.surface_points, dtype=np.float32)
            pick = rng.choice(len(surface), size=n_points, replace=n_points > len(surface))
            targets.append(GraspObject(obj.name, obj.mesh, surface[pick]))  # centred: center = 0
        return generate_grasps(
            lambda points, n, generator: pl_module.sample(points, n, generator=generator),
            halo,
            targets,
            self.grasps_per_object,
            seed=self.seed,
            resolution_0=self.resolution_0,
            upsampling_steps=self.upsampling_steps,
            pitch_m=self.pitch_m,
            contact_tol_m=self.contact_tol_m,
        )

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> dict[str, float]:
        t0 = time.perf_counter()
        objects = self._objects(trainer)
        results = self.generate(pl_module, objects)
        self.last_results = results
        summary = summarize_grasps(results, k=self.cluster_k, seed=self.seed)
        per_object, overall, div = summary.per_object, summary.overall, summary.diversity
        metrics = {
            "volume_cm3": float(overall["volume_cm3"]),
            "depth_cm": float(overall["depth_cm"]),
            "contact_ratio": float(overall["contact_ratio"]),
            "entropy": float(div.entropy),
            "cluster_size_cm": float(div.cluster_size_cm),
            "failed": float(overall["failed"]),
        }

        tag = self.tag(trainer, final)
        root = self.root(trainer)
        out = root / "grasps" / tag
        write_csv(per_object, out / "per_object.csv", OBJECT_TABLE_COLUMNS)
        atomic_write_text(out / "per_object.md", report_markdown(f"Generated grasps, {tag}", summary))
        write_csv([r.row() for r in results], out / "grasps.csv", GRASP_TABLE_COLUMNS)
        np.savez(
            out / "keypoints.npz",
            keypoints=np.stack([r.keypoints for r in results]).astype(np.float32),
            object=np.array([r.object_name for r in results]),
        )
        grid = self._render(results, objects, root / "renders" / f"grasps_{tag}.png") if self.render else None
        metrics["seconds"] = time.perf_counter() - t0
        self.history.append({"step": float(trainer.global_step), **{k: metrics[k] for k in CURVE_KEYS}})
        try:
            self._write_curve(root / "renders")
        except Exception as exc:  # noqa: BLE001 - a plotting problem must not stop training
            rank_zero_warn(f"GraspValidation: could not write the metric curves: {exc}")
        self._log_media(trainer, grid, per_object, tag)
        return metrics

    def _render(self, results: list[GraspResult], objects: list, path: Path) -> np.ndarray | None:
        from halo.viz import render

        meshes = {o.name: o.mesh for o in objects}
        tiles, labels = [], []
        per_row = max(1, min(self.render_grasps_per_object, self.grasps_per_object))
        for obj in objects:
            mine = [r for r in results if r.object_name == obj.name][:per_row]
            for r in mine:
                tiles.append(render_grasp(r.hand, meshes[obj.name], r.keypoints, size=self.render_size))
                labels.append(grasp_label(r))
            tiles += [np.full((self.render_size, self.render_size, 3), 255, np.uint8)] * (per_row - len(mine))
            labels += [""] * (per_row - len(mine))
        if not tiles:
            return None
        grid = render.render_grid(tiles, ncols=per_row, labels=labels, pad=2)
        render.save_png(grid, path)
        return grid

    def _log_media(self, trainer: L.Trainer, grid, per_object: list[dict], tag: str) -> None:
        step = log_step(trainer)
        for logger in trainer.loggers:
            self._log_grid(logger, grid, tag, step)
            if is_wandb(logger):
                columns = list(OBJECT_TABLE_COLUMNS)
                data = [[_table_value(r[c]) for c in columns] for r in per_object]
                logger.log_table(key=self.prefix + "per_object", columns=columns, data=data, step=step)

    # ------------------------------------------------------------------ curves
    def _write_curve(self, out: Path) -> Path | None:
        if not self.history:
            return None
        out.mkdir(parents=True, exist_ok=True)
        write_csv(self.history, out / "grasp_metrics_curve.csv", ["step", *CURVE_KEYS])
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10.0, 2.6), dpi=110)
        FigureCanvasAgg(fig)
        steps = [h["step"] for h in self.history]
        titles = {
            "volume_cm3": "interpenetration (cm³)",
            "depth_cm": "penetration depth (cm)",
            "contact_ratio": "contact ratio",
            "entropy": "cluster entropy (nats)",
            "cluster_size_cm": "cluster size (cm)",
        }
        for i, key in enumerate(CURVE_KEYS):
            ax = fig.add_subplot(1, len(CURVE_KEYS), i + 1)
            ax.plot(
                steps,
                [h[key] for h in self.history],
                marker="o",
                markersize=3,
                linewidth=1.4,
                color="#3060c0",
            )
            ax.set_title(titles[key], fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if key == "contact_ratio":
                ax.set_ylim(-0.02, 1.02)
            ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / "grasp_metrics_curve.png"
        fig.savefig(path)
        return path


def _table_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
