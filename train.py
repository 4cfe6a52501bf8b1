"""Train a HALO model: ``python train.py [experiment=NAME] [group=option] [key=value ...]``.

Everything (data, model, callbacks, loggers, trainer) is built from the Hydra
configs in ``conf/`` (``conf/train.yaml`` lists the groups and the common
commands).  Each run gets its own directory (``outputs/train/runs/<time>/``, or
``outputs/train/multiruns/<time>/<job>/`` with ``-m``) holding Hydra's
``.hydra/``, ``config_resolved.yaml``, the log, ``checkpoints/`` and the
loggers' files.  The directory is printed at the end, also when the run fails.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from halo.perf import tune_allocator
from lightning_modules import run_utils

log = logging.getLogger("train")


def _best_checkpoint(trainer: L.Trainer) -> str | None:
    callback = trainer.checkpoint_callback
    path = getattr(callback, "best_model_path", "") if callback is not None else ""
    return path if path and Path(path).is_file() else None


def _export_best_network(model: L.LightningModule, best: str | None, run_dir: Path) -> Path | None:
    """Best weights -> this project's HALO checkpoint format, so ``halo mesh --checkpoint`` can use them."""
    if best is None or not hasattr(model, "export_halo_checkpoint"):
        return None
    best_model = type(model).load_from_checkpoint(best, map_location="cpu", weights_only=True)
    return best_model.export_halo_checkpoint(
        run_dir / "checkpoints" / "halo_base_best.pt", metadata={"lightning_checkpoint": best}
    )


def train(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit (and optionally test) from a composed config; returns (metrics, built objects)."""
    # Large, short-lived activations: glibc's default mmap threshold makes every step
    # page-fault fresh memory, which is several times slower on VMs (halo/perf.py).
    tune_allocator()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    run_utils.save_resolved_config(cfg, run_dir)

    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("model: %s", cfg.model._target_)
    model: L.LightningModule = hydra.utils.instantiate(cfg.model)
    loggers = run_utils.instantiate_loggers(cfg.get("logger"))
    callbacks = run_utils.instantiate_callbacks(
        cfg.get("callbacks"),
        have_logger=bool(loggers),
        progress_bar=cfg.trainer.get("enable_progress_bar", True),
    )
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    run_utils.log_config(loggers, cfg, model)

    if cfg.get("train", True):
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = _best_checkpoint(trainer)

    if cfg.get("test", False):
        if best is None:
            log.warning("no best checkpoint (checkpointing off?): testing the current weights")
        trainer.test(model, datamodule=datamodule, ckpt_path=best)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    exported = None
    if trainer.is_global_zero:
        if cfg.get("export_best", True):
            exported = _export_best_network(model, best, run_dir)
        print("\n".join(run_utils.summary_lines(run_dir, metrics, best, exported)), flush=True)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "loggers": loggers}
    return metrics, objects


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = cfg.paths.output_dir
    try:
        metrics, _ = train(cfg)
    except BaseException:
        print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
        raise
    finally:
        run_utils.finish_wandb()  # a multirun's next job must open its own W&B run
    name = cfg.get("optimized_metric")
    if name and name not in metrics and not _is_multirun():
        log.warning("optimized_metric %r was not logged (fine for a single run)", name)
        return None
    return run_utils.metric_value(metrics, name)


if __name__ == "__main__":
    main()
