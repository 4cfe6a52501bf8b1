"""Helpers of ``train.py``: instantiating callbacks/loggers, the W&B online/offline decision,
saving the resolved config, the end-of-run summary."""

from __future__ import annotations

import logging
import math
import netrc
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import hydra
from lightning.pytorch import Callback, LightningModule
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

WANDB_DEFAULT_HOST = "api.wandb.ai"


# ---------------------------------------------------------------------------- W&B online/offline
def _wandb_host() -> str:
    base = os.environ.get("WANDB_BASE_URL")
    return (urlparse(base).hostname if base else None) or WANDB_DEFAULT_HOST


def _netrc_has_wandb_login(host: str) -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    if not path.is_file():
        return False
    try:
        return netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def wandb_offline_reason() -> str | None:
    """Why W&B must run offline here, or None when it can go online.

    Online only when asked for (``WANDB_MODE=online``) or when credentials exist
    (``WANDB_API_KEY`` or a ``~/.netrc``/``$NETRC`` entry for the W&B host, which is
    what ``wandb login`` writes).  Offline otherwise, so wandb never prompts for a
    key: a fresh machine, CI and tests all get an offline run directory.
    """
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode == "online":
        return None
    if mode in ("offline", "dryrun", "disabled"):
        return f"WANDB_MODE={mode}"
    if os.environ.get("WANDB_API_KEY"):
        return None
    host = _wandb_host()
    if _netrc_has_wandb_login(host):
        return None
    return f"no W&B credentials (no WANDB_API_KEY, no netrc entry for {host})"


def wandb_logger(offline: bool | str = "auto", **kwargs: Any):
    """``WandbLogger`` whose ``offline`` defaults to the automatic decision above.

    ``offline``: ``"auto"`` (default), ``True`` or ``False``.  When the run is offline,
    ``WANDB_MODE=offline`` is exported too, so processes that Lightning starts
    later (DDP ranks) and any direct ``wandb.init`` agree and never prompt.
    """
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(offline, str):
        if offline.lower() != "auto":
            raise ValueError(f"logger.wandb.offline must be auto, true or false, got {offline!r}")
        reason = wandb_offline_reason()
        offline = reason is not None
        if offline:
            log.info("W&B runs offline: %s (sync later with `wandb sync <run dir>`)", reason)
    if offline:
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")  # no banner/prompt chatter in job logs
    os.environ.setdefault("WANDB_CONSOLE", "off")  # Lightning/Hydra already capture stdout
    if kwargs.get("save_dir"):
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
    return WandbLogger(offline=bool(offline), **kwargs)


def finish_wandb() -> None:
    """Close an open W&B run (so the next job of a multirun starts its own)."""
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            wandb.finish()


# ---------------------------------------------------------------------------- instantiation
def _entries(cfg: DictConfig | None, what: str) -> Iterable[tuple[str, DictConfig]]:
    if not cfg:
        return []
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"{what} config must be a mapping of name -> config, got {type(cfg).__name__}")
    return [(name, sub) for name, sub in cfg.items() if isinstance(sub, DictConfig) and "_target_" in sub]


def instantiate_loggers(cfg: DictConfig | None) -> list[Logger]:
    """One logger per entry of the ``logger`` group that has a ``_target_`` (``logger=null``: none)."""
    loggers = []
    for name, sub in _entries(cfg, "logger"):
        try:
            loggers.append(hydra.utils.instantiate(sub))
        except Exception as exc:
            missing = _missing_module(exc)
            if missing:
                raise ModuleNotFoundError(
                    f"logger '{name}' needs the Python package '{missing}', which is not installed "
                    f"(pip install {missing}), or pick another logger, e.g. logger=csv"
                ) from exc
            raise
    return loggers


def _missing_module(exc: BaseException) -> str | None:
    while exc is not None:
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            return exc.name.split(".")[0]
        text = str(exc)
        for package in ("tensorboardX", "tensorboard"):
            if f"`{package}`" in text or f"'{package}'" in text or f"{package} is not available" in text:
                return package
        exc = exc.__cause__ or exc.__context__
    return None


def instantiate_callbacks(
    cfg: DictConfig | None, have_logger: bool, progress_bar: bool = True
) -> list[Callback]:
    """Callbacks of the ``callbacks`` group, minus the ones the trainer settings rule out.

    A ``LearningRateMonitor`` needs a logger and a progress-bar callback conflicts with
    ``trainer.enable_progress_bar=false``; both are dropped with a note instead of
    failing, so ``logger=none`` and quiet batch jobs work with the default callbacks.
    """
    callbacks = []
    for name, sub in _entries(cfg, "callbacks"):
        callback = hydra.utils.instantiate(sub)
        if isinstance(callback, LearningRateMonitor) and not have_logger:
            log.info("callback '%s' skipped: it needs a logger and there is none", name)
            continue
        if isinstance(callback, ProgressBar) and not progress_bar:
            log.info("callback '%s' skipped: trainer.enable_progress_bar is false", name)
            continue
        callbacks.append(callback)
    return callbacks


# ---------------------------------------------------------------------------- config / metrics
@rank_zero_only
def save_resolved_config(cfg: DictConfig, run_dir: str | Path) -> Path:
    """Write the fully resolved config next to Hydra's ``.hydra/`` (what actually ran)."""
    path = Path(run_dir) / "config_resolved.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return path


def count_parameters(model: LightningModule) -> dict[str, int]:
    return {
        "model/params_total": sum(p.numel() for p in model.parameters()),
        "model/params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }


def log_config(loggers: list[Logger], cfg: DictConfig, model: LightningModule) -> None:
    """Send the resolved run config plus parameter counts to every logger."""
    if not loggers:
        return
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams.update(count_parameters(model))
    for logger in loggers:
        logger.log_hyperparams(hparams)


def metric_value(metrics: Mapping[str, Any], name: str | None) -> float | None:
    """The value of ``name`` among the run's metrics (for hparam sweeps); clear error when absent."""
    if not name:
        return None
    if name not in metrics:
        raise KeyError(
            f"optimized_metric {name!r} was not logged; available: {sorted(metrics)} "
            "(set optimized_metric to one of them, or null)"
        )
    value = metrics[name]
    return float(value.item() if hasattr(value, "item") else value)


def summary_lines(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    best_checkpoint: str | None,
    exported: str | Path | None = None,
) -> list[str]:
    """Human-readable end-of-run summary: key metrics and where the outputs are."""

    def fmt(key: str) -> str | None:
        if key not in metrics:
            return None
        value = float(metrics[key])
        return f"{key} = {value:.4f}" if math.isfinite(value) else f"{key} = {value}"

    run_dir = Path(run_dir)
    lines = [f"run directory: {run_dir}"]
    lines += [line for line in map(fmt, ("val/iou_best", "val/iou", "val/loss", "test/iou")) if line]
    if best_checkpoint:
        lines.append(f"best checkpoint: {best_checkpoint}")
    if exported:
        lines.append(f"best network (halo mesh --checkpoint): {exported}")
    for sub in ("meshes", "renders"):
        if (run_dir / sub).is_dir():
            lines.append(f"{sub}: {run_dir / sub}")
    return lines
