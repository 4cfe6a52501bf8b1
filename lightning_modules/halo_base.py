"""HALO base occupancy model as a LightningModule (thin glue around :class:`halo.core.model.HaloModel`).

Batch format (dicts of collated tensors, metres, every tensor in the sample's own frame):

* ``points`` (B,N,3) float32 query points and ``occupancies`` (B,N) float32 in {0, 1};
* ``keypoints`` (B,21,3) float32, MANO joint order; optional ``is_left`` (B,) bool (mirrored);
* optional ``surface_points`` (B,M,3) and ``surface_labels`` (B,M) int64 part ids 0..15
  (only needed for the skinning loss);
* validation/test batches may add ``iou_points`` (B,K,3) / ``iou_occupancies`` (B,K):
  uniform points on which ``val/iou`` is measured (``val/loss`` always uses ``points``).

Metrics: ``{train,val,test}/loss`` and its components, ``val/iou`` = mean over
samples of the per-sample IoU (intersection / union of the occupied sets at
``iou_threshold``, as the original's ``compute_iou``; a sample whose union is
empty counts as 1), ``val/iou_best`` (best ``val/iou`` so far in this fit),
``train/samples_per_s`` and ``train/points_per_s`` (forward + backward +
optimizer step of one batch, data loading excluded).

Every constructor argument is a plain value saved by ``save_hyperparameters``,
so ``HaloBaseModule.load_from_checkpoint(path)`` rebuilds the network without
the Hydra config.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics import MaxMetric, MeanMetric

from halo.core.checkpoint import LIGHTNING_NETWORK_HPARAM, load_model, save_checkpoint
from halo.core.model import HaloModel, NetworkConfig
from halo.eval.mesh_evaluation import occupancy_iou  # one definition: `halo eval meshes` reproduces val/iou
from lightning_modules.train_logging import TrainStepLogging

LOSSES = ("mse", "bce")
SCHEDULERS = ("cosine", "onecycle")


def _plain(value: Any) -> Any:
    """DictConfig/ListConfig (Hydra) -> plain containers, so hparams survive ``weights_only`` loading."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # the module works without Hydra installed
        return value
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class HaloBaseModule(TrainStepLogging, L.LightningModule):
    """Keypoints + query points -> occupancy, trained on ground-truth occupancy samples.

    Args:
        net: :class:`~halo.core.model.NetworkConfig` fields (any key it accepts is passed through;
            ``part_radii`` turns on part culling, which the CPU recipe uses: each part is evaluated
            only near its bone, in training and meshing alike).
        loss: ``"mse"`` (the original: MSE between the max-over-parts sigmoid probability and
            the 0/1 occupancy) or ``"bce"`` (binary cross-entropy with logits on the
            max-over-parts logit; for a hard max that is the logit of the occupancy).
            Either way only the winning part gets a gradient at each point.
        skinning_weight: weight of the original's optional part-label loss: on labelled surface
            points every part's sigmoid output is regressed (MSE) onto one-hot(label) * 0.5,
            i.e. the labelled part sits on its iso-surface and the others are empty there.
            Needs ``surface_points``/``surface_labels`` in training batches.
        lr, weight_decay: Adam settings (the original: 1e-4, 0).
        scheduler: ``None`` (constant, the original), ``"cosine"`` (optional linear warm-up then
            cosine decay to 0 over the trainer's total steps) or ``"onecycle"`` (torch OneCycleLR
            over the trainer's total steps; cannot be extended when resuming with more steps).
        warmup_steps: linear warm-up length for ``"cosine"``.
        coordinate_scale: train the part MLPs' first-layer weights on the canonical point
            coordinates as ``k * V`` (k = this value) instead of directly: they start k times
            larger and Adam, which is invariant to a gradient's scale, moves them k times faster.
            The network and its checkpoints stay the original's (the exported weights are
            ``k * V``); only the optimisation changes. Why: canonical coordinates are a few
            hundredths of a model unit across a finger, so the surface needs weights far above
            their initial ~0.1, and Adam at lr 1e-3 takes tens of thousands of steps to grow
            them. Measured (4,000-step proxy runs on the synthetic hands): val IoU 0.835 at k=1,
            0.868 at k=4, 0.867 at k=10; after 1,000 steps 0.717 against 0.82; at 16,000 steps
            the gain shrinks to 0.890 against 0.887. 1 = the original. With ``init_from`` the
            loaded weights replace the scaled start; the k-times step still applies.
        init_from: checkpoint to start from (the original ``model_best.pt``, a ``halo-base`` file or
            a HaloBaseModule ``.ckpt``, read by :func:`halo.core.checkpoint.load_model`); copied in when ``fit``
            starts (a resumed fit then restores its own checkpoint's weights over it).
        iou_threshold: occupancy probability threshold of ``val/iou``.
        trust_checkpoint: read ``init_from`` with full unpickling (can run code: only for files you
            trust; train.py passes its ``trust_checkpoint`` key).  Not saved in the hparams, so a
            shared checkpoint cannot switch it on.
    """

    def __init__(
        self,
        net: dict | None = None,
        loss: str = "mse",
        skinning_weight: float = 0.0,
        lr: float = 1e-4,
        weight_decay: float = 0.0,
        scheduler: str | None = None,
        warmup_steps: int = 0,
        coordinate_scale: float = 1.0,
        init_from: str | None = None,
        iou_threshold: float = 0.5,
        trust_checkpoint: bool = False,
    ):
        super().__init__()
        self.trust_checkpoint = bool(trust_checkpoint)
        net = _plain(net) or {}
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; allowed: {', '.join(LOSSES)}")
        if scheduler is not None and scheduler not in SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)} or null")
        if skinning_weight < 0:
            raise ValueError(f"skinning_weight must be >= 0, got {skinning_weight}")
        if not (math.isfinite(coordinate_scale) and coordinate_scale > 0):
            raise ValueError(f"coordinate_scale must be a finite number > 0, got {coordinate_scale}")
        # Every network field, resolved (e.g. part_radii "default" -> its 16 numbers): a checkpoint
        # keeps meaning the same network when a default changes.  Plain types only, so
        # load_from_checkpoint works with weights_only=True.
        net_config = NetworkConfig.from_dict(net)
        self.save_hyperparameters(
            {
                LIGHTNING_NETWORK_HPARAM: net_config.to_dict(),
                "loss": loss,
                "skinning_weight": float(skinning_weight),
                "lr": float(lr),
                "weight_decay": float(weight_decay),
                "scheduler": scheduler,
                "warmup_steps": int(warmup_steps),
                "coordinate_scale": float(coordinate_scale),
                "init_from": None if init_from is None else str(init_from),
                "iou_threshold": float(iou_threshold),
            },
            logger=False,  # train.py logs the whole resolved config instead
        )
        self.model = HaloModel(net_config)
        if coordinate_scale != 1.0:
            with torch.no_grad():
                self._coordinate_weights().mul_(coordinate_scale)

        self.val_loss = MeanMetric()
        self.val_iou = MeanMetric()
        self.val_iou_best = MaxMetric()
        self.test_loss = MeanMetric()
        self.test_iou = MeanMetric()
        self._checkpoint_step = 0  # global step of the Lightning checkpoint this module was loaded from

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._checkpoint_step = int(checkpoint.get("global_step", 0))

    # ------------------------------------------------------------------ the plain network
    @property
    def halo_model(self) -> HaloModel:
        """The trained :class:`halo.core.model.HaloModel` (usable without Lightning)."""
        return self.model

    def export_halo_checkpoint(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write the network in this project's ``halo-base`` format (``halo mesh --checkpoint`` reads it)."""
        step = self.global_step if self._trainer is not None else self._checkpoint_step
        meta = {"source_format": "lightning", "global_step": int(step), **(metadata or {})}
        return save_checkpoint(self.model, path, meta)

    def load_network_weights(self, path: str | Path) -> dict:
        """Copy the weights of a HALO base checkpoint into this module's network; returns its metadata."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"init_from: checkpoint {path} does not exist")
        source, meta = load_model(path, trust_pickle=self.trust_checkpoint)
        try:
            self.model.load_state_dict(source.state_dict(), strict=True)
        except RuntimeError as exc:
            ours, theirs = self.model.config.to_dict(), source.config.to_dict()
            diff = {k: (ours.get(k), theirs.get(k)) for k in ours | theirs if ours.get(k) != theirs.get(k)}
            raise ValueError(
                f"init_from: {path} holds a different architecture than model.net "
                f"(differing fields, ours vs file: {diff}): {exc}"
            ) from exc
        return meta

    def forward(self, points: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
        """Occupancy probabilities (B,N) of ``points`` (B,N,3) for hands ``keypoints`` (B,21,3), metres.

        ``HaloModel.occupancy``: differentiable with autograd on, the inference path without.
        """
        return self.model.occupancy(points, keypoints)

    # ------------------------------------------------------------------ losses
    def occupancy_loss(self, out, occupancies: torch.Tensor) -> torch.Tensor:
        if self.hparams.loss == "mse":
            return F.mse_loss(out.occupancy, occupancies)
        if self.model.config.smooth_max:  # no single logit to take: BCE on the probability
            return F.binary_cross_entropy(out.occupancy.clamp(1e-6, 1 - 1e-6), occupancies)
        return F.binary_cross_entropy_with_logits(
            self.model.network.union_logit(out.part_logits), occupancies
        )

    def skinning_loss(self, batch: dict) -> torch.Tensor:
        if "surface_points" not in batch or "surface_labels" not in batch:
            raise KeyError(
                "skinning_weight > 0 needs 'surface_points' and 'surface_labels' in training batches; "
                "configure the datamodule to provide labelled surface samples"
            )
        out = self.model(batch["surface_points"], batch["keypoints"], batch.get("is_left"), return_parts=True)
        target = F.one_hot(batch["surface_labels"].long(), self.model.config.num_parts).to(out.part_logits)
        return F.mse_loss(torch.sigmoid(out.part_logits), 0.5 * target)

    def _losses(self, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        out = self.model(batch["points"], batch["keypoints"], batch.get("is_left"), return_parts=True)
        parts = {"occupancy": self.occupancy_loss(out, batch["occupancies"])}
        total = parts["occupancy"]
        if self.hparams.skinning_weight > 0:
            parts["skinning"] = self.skinning_loss(batch)
            total = total + self.hparams.skinning_weight * parts["skinning"]
        return total, parts, out

    # ------------------------------------------------------------------ fit
    def setup(self, stage: str) -> None:
        # init_from is applied when a fit starts, not in __init__, so load_from_checkpoint never
        # reads that file.  A resumed fit (ckpt_path=...) restores its own weights after this hook.
        if stage == "fit" and self.hparams.init_from:
            self.load_network_weights(self.hparams.init_from)

    def on_train_start(self) -> None:
        # The sanity-check validation must not count as the best IoU of the run.
        self.val_iou_best.reset()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        total, parts, _ = self._losses(batch)
        self.log_train_losses(total, parts, batch)
        return total

    def batch_counts(self, batch: dict) -> dict[str, int]:
        bsz, num_points = batch["points"].shape[:2]
        return {"samples": bsz, "points": bsz * num_points}

    # ------------------------------------------------------------------ validation / test
    def _evaluate(self, batch: dict, loss_metric: MeanMetric, iou_metric: MeanMetric) -> None:
        total, _, out = self._losses(batch)
        bsz = batch["points"].shape[0]
        loss_metric.update(total, weight=bsz)
        if "iou_points" in batch:
            # No autograd in validation: occupancy() takes the chunked inference path (~5x faster).
            occ = self.model.occupancy(batch["iou_points"], batch["keypoints"], batch.get("is_left"))
            gt = batch["iou_occupancies"]
        else:
            occ, gt = out.occupancy, batch["occupancies"]
        iou_metric.update(occupancy_iou(occ, gt, self.hparams.iou_threshold))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.val_loss, self.val_iou)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/iou", self.val_iou, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        self.val_iou_best.update(self.val_iou.compute())
        self.log("val/iou_best", self.val_iou_best.compute(), sync_dist=True, prog_bar=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, self.test_loss, self.test_iou)
        self.log("test/loss", self.test_loss, on_step=False, on_epoch=True)
        self.log("test/iou", self.test_iou, on_step=False, on_epoch=True)

    # ------------------------------------------------------------------ optimization
    def _coordinate_weights(self) -> torch.Tensor:
        """(P,H,3) view of the part MLPs' first-layer weights on the canonical coordinates."""
        return self.model.network.weights[0][:, :, :3]

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        k = self.hparams.get("coordinate_scale", 1.0)
        if k == 1.0:
            return super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        before = self._coordinate_weights().detach().clone()
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        with torch.no_grad():  # the step of V = W / k, seen on W: k times Adam's step on W
            weights = self._coordinate_weights()
            weights.add_((k - 1.0) * (weights - before))

    def configure_optimizers(self):
        hp = self.hparams
        optimizer = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if not math.isfinite(total_steps) or total_steps <= 0:
            raise ValueError(
                f"scheduler {hp.scheduler!r} needs a finite training length: set trainer.max_steps "
                "or trainer.max_epochs"
            )
        total_steps = int(total_steps)
        if hp.scheduler == "onecycle":
            scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=hp.lr, total_steps=total_steps)
        else:
            # A LambdaLR recomputes its factor from the step count, so a resumed fit with a
            # longer schedule stretches the decay instead of failing or restarting the cosine.
            warmup = max(0, hp.warmup_steps)

            def cosine(step: int) -> float:
                if step < warmup:
                    return (step + 1) / warmup
                progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
                return 0.5 * (1.0 + math.cos(math.pi * progress))

            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
