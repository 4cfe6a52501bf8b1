"""Marching-cubes validation: meshes, surface metrics and renders of fixed validation hands.

:class:`MeshValidation` runs at the end of every ``every_n_epochs``-th validation (the
sanity check excluded) and, with ``on_fit_end``, once more with the final weights when
training ends (unless the last validation already saw them).  For the first
``num_hands`` hands of the validation split it

* extracts the meshes with the current weights, all hands batched through the network
  (:func:`halo.meshing.hand_mesh.extract_hand_meshes` with ``pl_module.halo_model`` where it is,
  CPU or GPU, under ``no_grad``: no copy, training is not disturbed; a float32 copy only when the
  weights are in another precision),
* scores it with :func:`halo.eval.mesh_evaluation.evaluate_sample` (the same code as ``halo eval
  meshes``) against the split's point cloud and IoU points, and logs the means through
  ``pl_module.log`` (so every logger gets them and ``ModelCheckpoint``/``EarlyStopping`` can
  monitor them): ``val_mesh/iou`` (mesh inside test), ``val_mesh/chamfer_l1_mm``,
  ``val_mesh/chamfer_l2_mm2``, ``val_mesh/normal_consistency``, ``val_mesh/fscore_1mm``,
  ``val_mesh/fscore_2mm``, ``val_mesh/empty_fraction`` and ``val_mesh/seconds_per_mesh``
  (extraction wall time).  The final extraction's values go to the loggers directly
  (Lightning allows no ``self.log`` after training) and into ``trainer.callback_metrics``.
* writes ``<out_dir>/meshes/<tag>/<name>.ply`` (+ ``metrics.csv``) and
  ``<out_dir>/renders/<tag>.png`` (each hand: predicted | ground truth, one camera framed
  on the ground truth, captions with IoU and Chamfer-L1), where ``<tag>`` is
  ``epoch_XXXX_step_XXXXXXX`` (``final_step_XXXXXXX`` at the end): validation is step-based
  in the default trainer config, so an epoch can hold several validations;
* sends the render to image-capable loggers (W&B: ``val_mesh/renders`` image and
  ``val_mesh/meshes`` 3-D objects from ``.glb`` files; TensorBoard: ``add_image``; CSV:
  nothing more).

It also keeps, at every validation, (training wall seconds since fit start, global step,
``val/iou``) and redraws ``<out_dir>/renders/val_iou_curve.png`` (+ ``.csv``).  The wall
time excludes this callback's own work, so the curve does not depend on its settings; the
CSV also holds the raw wall time.  The history is part of the callback's checkpoint state,
so a resumed run continues the curve.

``out_dir`` defaults to ``trainer.default_root_dir``, which ``train.py`` sets to the Hydra
run directory (``conf/trainer/default.yaml``: ``default_root_dir: ${paths.output_dir}``).

Distributed runs: the mesh work and every file/logger call happen on global rank zero;
its metric values are broadcast (``trainer.strategy.broadcast``) and logged identically on
every rank (with ``sync_dist``, a no-op mean), so monitoring them works everywhere.  A failure of the
mesh work is reported as a warning and skips that round instead of stopping the run.

Cost (measured on the 2-core CPU VM, default network, 4 hands at 32/2, 20k samples):
see the README of callbacks / the report; roughly 0.5 s extraction + 0.1 s metrics +
0.15 s render per hand with one torch thread.
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
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

from callbacks.validation_rounds import ValidationRounds, is_wandb, log_step
from halo.core.model import HaloModel
from halo.eval.mesh_evaluation import (
    EvalSample,
    comparison_grid,
    evaluate_sample,
    format_label,
    load_eval_sample,
    render_comparison,
    write_rows_csv,
)
from halo.eval.surface_metrics import summarize_metrics
from halo.geometry.mesh_io import save_mesh
from halo.meshing.hand_mesh import extract_hand_meshes
from halo.utils.tables import write_csv

__all__ = ["MeshValidation", "curve_y_limits"]

#: Logged as ``val_mesh/<name>``: the mean of the per-hand row value.
LOGGED = {
    "iou": "iou",
    "chamfer_l1_mm": "chamfer_l1_mm",
    "chamfer_l2_mm2": "chamfer_l2_mm2",
    "normal_consistency": "normal_consistency",
    "fscore_1mm": "fscore_1mm",
    "fscore_2mm": "fscore_2mm",
    "empty_fraction": "empty",
    "seconds_per_mesh": "seconds",
}


def curve_y_limits(values: list[float]) -> tuple[float, float]:
    """The val-IoU curve's y range: the values' range with 0.02 of room, at least 0.05 tall, within 0..1.

    Zoomed to the values because a fixed 0..1 axis drew a trained run's 0.86 -> 0.89 as a flat line;
    0..1 when there is no finite value yet.
    """
    if not values:
        return 0.0, 1.0
    low = max(0.0, min(values) - 0.02)
    return low, max(min(1.0, max(values) + 0.02), low + 0.05)


class MeshValidation(ValidationRounds):
    """Extract, score, save and render meshes of the first validation hands (see module docstring).

    Args:
        every_n_epochs: run at every N-th validation (counted over validations, sanity check
            excluded; with step-based validation that is every N-th ``val_check_interval``).
        num_hands: the first K hands of the validation split (always the same ones).
        resolution_0, upsampling_steps: mesh extraction (effective resolution_0 * 2**steps).
        n_samples: points sampled on each predicted mesh for the surface metrics.
        on_fit_end: one more extraction with the final weights when training ends.
        render: write and log the predicted | ground-truth render grid.
        log_meshes: send the meshes to W&B as 3-D objects (files are always written).
        out_dir: where ``meshes/`` and ``renders/`` go (default ``trainer.default_root_dir``).
        render_size: pixels per render tile.
        hands_per_row: hands (predicted + ground-truth pairs) per row of the grid.
    """

    prefix = "val_mesh/"

    def __init__(
        self,
        every_n_epochs: int = 1,
        num_hands: int = 4,
        resolution_0: int = 32,
        upsampling_steps: int = 2,
        n_samples: int = 20_000,
        on_fit_end: bool = True,
        render: bool = True,
        log_meshes: bool = True,
        out_dir: str | Path | None = None,
        render_size: int = 256,
        hands_per_row: int = 2,
    ):
        super().__init__(every_n_epochs=every_n_epochs, on_fit_end=on_fit_end, out_dir=out_dir)
        if int(num_hands) < 1:
            raise ValueError(f"num_hands must be >= 1, got {num_hands}")
        if int(resolution_0) < 2 or int(upsampling_steps) < 0:
            raise ValueError(
                f"resolution_0 must be >= 2 and upsampling_steps >= 0, got {resolution_0} / {upsampling_steps}"
            )
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1, got {n_samples}")
        self.num_hands = int(num_hands)
        self.resolution_0 = int(resolution_0)
        self.upsampling_steps = int(upsampling_steps)
        self.n_samples = int(n_samples)
        self.render = bool(render)
        self.log_meshes = bool(log_meshes)
        self.render_size = int(render_size)
        self.hands_per_row = int(hands_per_row)

        self.mesh_seconds = 0.0  # this callback's cumulative work, excluded from the curve's wall time
        self._samples: list[EvalSample] | None = None
        self._fit_t0: float | None = None

    # ------------------------------------------------------------------ state (resume)
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "mesh_seconds": self.mesh_seconds}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.mesh_seconds = float(state_dict.get("mesh_seconds", 0.0))
        if self._fit_t0 is not None and self.history:  # restored after on_fit_start (some strategies)
            self._fit_t0 = time.perf_counter() - self.history[-1]["wall_s"]

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Resumed fits continue the curve where the checkpointed history ended.
        offset = self.history[-1]["wall_s"] if self.history else 0.0
        self._fit_t0 = time.perf_counter() - offset

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # callback_metrics holds this validation's epoch values only after on_validation_epoch_end.
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        t0 = self._fit_t0 if self._fit_t0 is not None else time.perf_counter()
        wall = time.perf_counter() - t0
        value = trainer.callback_metrics.get("val/iou")
        self.history.append(
            {
                "wall_s": wall,
                "train_wall_s": wall - self.mesh_seconds,
                "step": float(trainer.global_step),
                "val_iou": float(value) if value is not None else float("nan"),
            }
        )
        if trainer.is_global_zero:
            try:
                self._write_curve(self.root(trainer) / "renders")
            except Exception as exc:  # noqa: BLE001 - a plotting problem must not stop training
                rank_zero_warn(f"MeshValidation: could not write the val/iou curve: {exc}")

    # ------------------------------------------------------------------ the work
    def _run_on_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool):
        t0 = time.perf_counter()
        try:
            return super()._run_on_rank_zero(trainer, pl_module, final)
        finally:
            self.mesh_seconds += time.perf_counter() - t0

    def _halo_model(self, pl_module: L.LightningModule) -> HaloModel:
        model = getattr(pl_module, "halo_model", None)
        if model is None and isinstance(getattr(pl_module, "model", None), HaloModel):
            model = pl_module.model
        if not isinstance(model, HaloModel):
            raise TypeError(
                f"{type(pl_module).__name__} has no `halo_model` (a halo.core.model.HaloModel) to mesh"
            )
        # Meshing runs on the model's device without autograd and changes no state, so the live
        # model is used as is; only half-precision weights get a float32 copy (culling radii and
        # the iso-surface need full precision).
        if model.network.weights[0].dtype != torch.float32:
            return copy.deepcopy(model).to(dtype=torch.float32)
        return model

    def _val_samples(self, trainer: L.Trainer) -> list[EvalSample]:
        if self._samples is not None:
            return self._samples
        dataset = None
        loaders = trainer.val_dataloaders
        if isinstance(loaders, dict):
            loaders = next(iter(loaders.values()), None)
        if isinstance(loaders, list | tuple):
            loaders = loaders[0] if loaders else None
        if loaders is not None:
            dataset = getattr(loaders, "dataset", None)
        if not (hasattr(dataset, "split_dir") and hasattr(dataset, "names")):
            get = getattr(trainer.datamodule, "_dataset", None)
            dataset = get("val") if callable(get) else None
        if not (hasattr(dataset, "split_dir") and hasattr(dataset, "names")):
            raise TypeError(
                "the validation dataset has no `split_dir`/`names` (the original dataset layout); "
                "MeshValidation needs datamodules.hand_occupancy's datasets"
            )
        iou_points = getattr(dataset, "iou_points_per_sample", None)
        self._samples = [
            load_eval_sample(dataset.split_dir, name, iou_points=iou_points)
            for name in list(dataset.names)[: self.num_hands]
        ]
        return self._samples

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> dict[str, float]:
        samples = self._val_samples(trainer)
        model = self._halo_model(pl_module)
        threshold = float(getattr(pl_module, "hparams", {}).get("iou_threshold", 0.5))
        tag = self.tag(trainer, final)
        root = self.root(trainer)
        mesh_dir = root / "meshes" / tag
        mesh_dir.mkdir(parents=True, exist_ok=True)
        want_glb = self.log_meshes and any(is_wandb(lg) for lg in trainer.loggers)
        rows, pairs, glbs = [], [], []
        hands = extract_hand_meshes(
            model,
            np.stack([s.keypoints for s in samples]),
            resolution_0=self.resolution_0,
            upsampling_steps=self.upsampling_steps,
            threshold=threshold,
        )
        for sample, hand in zip(samples, hands, strict=True):
            row, hand = evaluate_sample(
                model,
                sample,
                n_samples=self.n_samples,
                threshold=threshold,
                with_occupancy_iou=False,
                hand=hand,
            )
            rows.append(row)
            save_mesh(hand.mesh, mesh_dir / f"{sample.name}.ply")
            if want_glb and len(hand.mesh.faces):
                glbs.append(mesh_dir / f"{sample.name}.glb")
                save_mesh(hand.mesh, glbs[-1])
            if self.render:
                pairs.append(
                    render_comparison(hand.mesh, sample.gt_mesh(), sample.keypoints, size=self.render_size)
                )
        write_rows_csv(rows, mesh_dir / "metrics.csv")
        summary = summarize_metrics(rows)  # NaN-aware means, as `halo eval meshes` reports them
        metrics = {name: summary[key]["mean"] for name, key in LOGGED.items()}

        grid = None
        if self.render and pairs:
            from halo.viz import render

            grid = comparison_grid(pairs, [format_label(r) for r in rows], hands_per_row=self.hands_per_row)
            render.save_png(grid, root / "renders" / f"{tag}.png")
        self._log_media(trainer, grid, glbs, tag, [r["name"] for r in rows])
        return metrics

    def _log_media(self, trainer: L.Trainer, grid, glbs: list[Path], tag: str, names: list[str]) -> None:
        step = log_step(trainer)
        for logger in trainer.loggers:
            self._log_grid(logger, grid, tag, step)
            if is_wandb(logger) and glbs:
                import wandb

                objects = [wandb.Object3D(str(p)) for p in glbs]
                logger.log_metrics({self.prefix + "meshes": objects}, step=step)

    # ------------------------------------------------------------------ val/iou curve
    def _write_curve(self, out: Path) -> Path | None:
        if not self.history:
            return None
        out.mkdir(parents=True, exist_ok=True)
        columns = ["train_wall_s", "wall_s", "step", "val_iou"]
        write_csv(
            [{k: h.get(k, "") for k in columns} for h in self.history], out / "val_iou_curve.csv", columns
        )
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        # Figure + Agg canvas directly: no pyplot, so the process-wide backend is left alone.
        fig = Figure(figsize=(6.0, 3.6), dpi=120)
        FigureCanvasAgg(fig)
        ax = fig.add_subplot(1, 1, 1)
        seconds = [h["train_wall_s"] for h in self.history]
        minutes = max(seconds) >= 120.0
        x = [v / 60.0 for v in seconds] if minutes else seconds
        y = [h["val_iou"] for h in self.history]
        ax.plot(x, y, marker="o", markersize=3, linewidth=1.5, color="#3060c0")
        finite = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(b)]
        if finite:
            best = max(finite, key=lambda p: p[1])
            ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(-10, 8), fontsize=8)
        ax.set_ylim(*curve_y_limits([b for _, b in finite]))
        last = self.history[-1]
        ax.set_xlabel(f"training wall time ({'min' if minutes else 's'}; mesh validation excluded)")
        ax.set_xlim(left=0.0)
        ax.set_ylabel("val/iou")
        ax.set_title(f"val/iou vs wall time (step {int(last['step'])})", fontsize=10)
        ax.grid(True, alpha=0.3)
        fig.tight_layout()
        path = out / "val_iou_curve.png"
        fig.savefig(path)
        return path
