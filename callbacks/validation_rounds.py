"""The shared mechanics of the rank-zero validation callbacks (mesh and grasp validation).

A :class:`ValidationRounds` subclass implements :meth:`ValidationRounds._run` (the work of one
round: compute, write files, render; returns ``{name: value}``).  This base decides when a round
runs (every ``every_n_epochs``-th validation, the sanity check excluded, and once more with the
final weights when training ends unless the last validation already saw them), runs it on global
rank zero only, broadcasts the metrics to every rank and logs them as ``<prefix><name>``, keeps
the round history in the callback's checkpoint state, and names the output folders.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_warn

__all__ = ["ValidationRounds", "is_tensorboard", "is_wandb", "log_step"]


def log_step(trainer: Any) -> int:
    """Logger step of the current weights, Lightning's convention: the index of the last trained batch.

    (``self.log`` in a validation after optimizer step k writes step k - 1, as do the metrics of
    training batch k - 1; renders and the final metrics use the same step.)
    """
    return max(int(trainer.global_step) - 1, 0)


def is_wandb(logger: Any) -> bool:
    try:
        from lightning.pytorch.loggers import WandbLogger
    except ImportError:  # pragma: no cover
        return False
    return isinstance(logger, WandbLogger)


def is_tensorboard(logger: Any) -> bool:
    from lightning.pytorch.loggers import TensorBoardLogger

    return isinstance(logger, TensorBoardLogger)


class ValidationRounds(L.Callback):
    """Base of the validation callbacks (see the module docstring).

    Args:
        every_n_epochs: run at every N-th validation (counted over validations, sanity check
            excluded; with step-based validation that is every N-th ``val_check_interval``).
        on_fit_end: one more round with the final weights when training ends.
        out_dir: where the subclass's folders go (default ``trainer.default_root_dir``).
    """

    #: Logged metric names are ``prefix + name``.
    prefix: str = ""
    #: Run rounds only while fitting (not in a stand-alone ``trainer.validate``).
    fit_only: bool = False

    def __init__(self, every_n_epochs: int = 1, on_fit_end: bool = True, out_dir: str | Path | None = None):
        super().__init__()
        if int(every_n_epochs) < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = int(every_n_epochs)
        self.final_round = bool(on_fit_end)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.history: list[dict[str, float]] = []  # one entry per round or validation, subclass-defined
        self.validations = 0  # non-sanity validations seen (this and resumed fits)
        self.last_metrics: dict[str, float] | None = None
        self._last_round_step: int | None = None

    # ------------------------------------------------------------------ state (resume)
    def state_dict(self) -> dict[str, Any]:
        return {"history": [dict(h) for h in self.history], "validations": self.validations}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]
        self.validations = int(state_dict.get("validations", 0))

    # ------------------------------------------------------------------ paths
    def root(self, trainer: L.Trainer) -> Path:
        return self.out_dir if self.out_dir is not None else Path(trainer.default_root_dir)

    @staticmethod
    def tag(trainer: L.Trainer, final: bool = False) -> str:
        if final:
            return f"final_step_{trainer.global_step:07d}"
        return f"epoch_{trainer.current_epoch:04d}_step_{trainer.global_step:07d}"

    # ------------------------------------------------------------------ hooks
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (self.fit_only and trainer.state.fn != TrainerFn.FITTING):
            return
        self.validations += 1
        if self.validations % self.every_n_epochs:
            return
        metrics = self._run_everywhere(trainer, pl_module, final=False)
        if metrics is None:
            return
        to_loggers = bool(trainer.loggers)  # callback_metrics (monitoring) either way
        # Identical on every rank (broadcast): the reduction of sync_dist changes nothing, it only
        # tells Lightning the epoch-level value is consistent across ranks (no warning).
        sync = trainer.world_size > 1
        for name, value in metrics.items():
            pl_module.log(
                self.prefix + name, value, on_step=False, on_epoch=True, sync_dist=sync, logger=to_loggers
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # "On fit end": the last hook where the strategy (broadcast) and the loggers are still
        # up; Lightning refuses self.log here, so values go to the loggers directly.
        if not self.final_round or self._last_round_step == trainer.global_step:
            return
        metrics = self._run_everywhere(trainer, pl_module, final=True)
        if metrics is None:
            return
        logged = {self.prefix + k: v for k, v in metrics.items()}
        for logger in trainer.loggers:
            logger.log_metrics(logged, step=log_step(trainer))
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in logged.items()})

    # ------------------------------------------------------------------ loggers
    def _log_grid(self, logger: Any, grid: Any, tag: str, step: int) -> None:
        """The round's render grid as ``<prefix>renders`` (W&B image or TensorBoard image)."""
        if grid is None:
            return
        if is_wandb(logger):
            logger.log_image(key=self.prefix + "renders", images=[grid], step=step, caption=[tag])
        elif is_tensorboard(logger):
            logger.experiment.add_image(self.prefix + "renders", grid, global_step=step, dataformats="HWC")

    # ------------------------------------------------------------------ the work
    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool) -> dict[str, float]:
        raise NotImplementedError

    def _run_on_rank_zero(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool):
        """``_run``, with a failure reported as a warning (the round is skipped, training goes on)."""
        try:
            return self._run(trainer, pl_module, final)
        except Exception as exc:  # noqa: BLE001 - report and keep training
            lines = traceback.format_exception_only(type(exc), exc)
            rank_zero_warn(
                f"{type(self).__name__} skipped at step {trainer.global_step}: {''.join(lines).strip()}"
            )
            return None

    def _run_everywhere(self, trainer: L.Trainer, pl_module: L.LightningModule, final: bool):
        """Rank 0 computes (and writes); every rank gets the same metrics back (or None)."""
        metrics = self._run_on_rank_zero(trainer, pl_module, final) if trainer.is_global_zero else None
        metrics = trainer.strategy.broadcast(metrics, src=0)
        self._last_round_step = trainer.global_step
        self.last_metrics = metrics
        return metrics
