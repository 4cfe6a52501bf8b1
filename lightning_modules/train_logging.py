"""Per-step training logs shared by the LightningModules: losses and throughput."""

from __future__ import annotations

import time
from typing import Any

import torch

__all__ = ["TrainStepLogging"]


class TrainStepLogging:
    """Mixin for a ``LightningModule``: ``train/loss``, ``train/<term>_loss`` and throughput per step.

    The subclass calls :meth:`log_train_losses` from ``training_step`` and says what one batch
    holds in :meth:`batch_counts` (``{"samples": B}``, optionally more, e.g. ``{"points": B*N}``);
    each count is logged as ``train/<name>_per_s`` over forward + backward + update, data loading
    excluded.
    """

    _step_started: float | None = None

    def batch_counts(self, batch: dict) -> dict[str, int]:
        raise NotImplementedError

    def log_train_losses(self, total: torch.Tensor, terms: dict[str, torch.Tensor], batch: dict) -> None:
        bsz = self.batch_counts(batch)["samples"]
        self.log("train/loss", total, on_step=True, on_epoch=False, prog_bar=True, batch_size=bsz)
        for name, value in terms.items():
            self.log(f"train/{name}_loss", value, on_step=True, on_epoch=False, batch_size=bsz)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        self._step_started = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: dict, batch_idx: int) -> None:
        # After the optimizer step: one batch's forward + backward + update, loading excluded.
        if self._step_started is None:
            return
        seconds = time.perf_counter() - self._step_started
        counts = self.batch_counts(batch)
        for name, count in counts.items():
            self.log(
                f"train/{name}_per_s",
                count / seconds,
                on_step=True,
                on_epoch=False,
                batch_size=counts["samples"],
            )
        self._step_started = None
