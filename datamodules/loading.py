"""DataLoader construction shared by the datamodules (cluster-safe workers)."""

from __future__ import annotations

import os
import signal

from torch.utils.data import DataLoader, Dataset

__all__ = ["cluster_safe_worker_init", "split_loader"]

#: Signals a cluster sends to every process of a job step, DataLoader workers included: SIGUSR1
#: (Lightning's SLURM requeue signal), SIGUSR2 (submitit's) and SIGTERM (preemption, cancel).
#: Forked workers inherit the training process's Python handlers for them.
_TRAINER_SIGNALS = ("SIGUSR1", "SIGUSR2", "SIGTERM")


def cluster_safe_worker_init(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: workers ignore the cluster's requeue/stop signals.

    SLURM signals every process of a job step.  A worker would otherwise run the handlers it
    inherited from the training process (Lightning's: save a checkpoint and ``scontrol requeue``
    from inside the worker) or die and fail the step.  The training process alone reacts, and its
    workers end with it.  Also applies Lightning's per-worker seeding, which Lightning adds only
    to loaders without a ``worker_init_fn`` (``seed_everything(workers=True)``).
    """
    for name in _TRAINER_SIGNALS:
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def split_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int) -> DataLoader:
    """A split's DataLoader: training (``shuffle``) drops the last partial batch when a full one exists."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=shuffle and len(dataset) >= batch_size,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        worker_init_fn=cluster_safe_worker_init if num_workers > 0 else None,
    )


class SplitLoaders:
    """Mixin for a LightningDataModule: train/val/test loaders over ``self.split_dataset(stage)``.

    Uses ``hparams.batch_size`` (training), ``hparams.val_batch_size`` (validation and test) and
    ``hparams.num_workers``.
    """

    def split_dataset(self, stage: str) -> Dataset:
        raise NotImplementedError

    def _loader(self, stage: str, batch_size: int, shuffle: bool) -> DataLoader:
        return split_loader(self.split_dataset(stage), batch_size, shuffle, self.hparams.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.hparams.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.hparams.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.val_batch_size, shuffle=False)
