"""Helpers of ``train.py``: instantiating callbacks/loggers, the W&B online/offline decision,
saving the resolved config, the end-of-run summary, and what runs on clusters need: the
config resolvers ``halo.*`` (process rank, W&B sweep group, SLURM sizes), the checkpoint a
requeued job resumes from, and a single-run command line for the DDP ranks Lightning starts."""

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
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from halo.core.checkpoint import CheckpointError, read_checkpoint

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


def wandb_logger(offline: bool | str = "auto", **kwargs: Any) -> WandbLogger:
    """``WandbLogger`` whose ``offline`` defaults to the automatic decision above.

    ``offline``: ``"auto"`` (default), ``True`` or ``False``.  When the run is offline,
    ``WANDB_MODE=offline`` is exported too, so processes that Lightning starts
    later (DDP ranks) and any direct ``wandb.init`` agree and never prompt.

    ``group``: empty (the default) puts the jobs of one sweep (``-m``, Optuna, SLURM) in one
    group named after the sweep directory (:func:`sweep_group`); single runs stay ungrouped.
    A job that restarts in a directory that already has a W&B run (a requeued SLURM job)
    continues that run (``id`` + ``resume="allow"``) instead of opening a second one.
    """
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
    if not kwargs.get("group"):
        kwargs["group"] = sweep_group() or None
    if kwargs.get("save_dir"):
        Path(kwargs["save_dir"]).mkdir(parents=True, exist_ok=True)
        # Rank 0 alone opens the W&B run (ranks > 0 would only see the run rank 0 just started).
        previous = previous_wandb_run_id(kwargs["save_dir"]) if process_rank() == 0 else None
        if previous and not (kwargs.get("id") or kwargs.get("version")):
            # A requeued/restarted job runs in the same directory: continue its W&B run
            # instead of opening a second one (the group still collects the sweep's jobs).
            log.info("continuing W&B run %s found in %s", previous, kwargs["save_dir"])
            kwargs.update(id=previous, resume="allow")
    return RequeueSafeWandbLogger(offline=bool(offline), **kwargs)


class RequeueSafeWandbLogger(WandbLogger):
    """``WandbLogger`` that closes its W&B run when Lightning's SLURM requeue handler finalizes the loggers.

    On the requeue signal Lightning calls ``logger.finalize("finished")`` ("make sure we get all the
    metrics"), saves ``hpc_ckpt_<n>.ckpt`` and requeues; SLURM then stops every process of the job,
    W&B's service process too, which loses whatever it had not written yet (an offline run file
    keeps only whole 32 KiB blocks).  Finishing the run there writes everything; metrics logged
    later in that attempt (until Lightning stops at SIGTERM) are dropped, and the requeued job
    continues the same run (see :func:`wandb_logger`).
    """

    _closed_for_requeue = False

    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "finished" and self._experiment is not None and not self._closed_for_requeue:
            self._closed_for_requeue = True
            finish_wandb()

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        if not self._closed_for_requeue:
            super().log_metrics(metrics, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if not self._closed_for_requeue:
            super().log_hyperparams(params)


def previous_wandb_run_id(save_dir: str | Path) -> str | None:
    """Id of the newest W&B run under ``<save_dir>/wandb/`` (``run-<time>-<id>`` or
    ``offline-run-<time>-<id>``), or None when this directory never had one."""
    runs = [p for p in Path(save_dir, "wandb").glob("*run-*-*") if p.is_dir() and not p.is_symlink()]
    if not runs:
        return None
    newest = max(runs, key=lambda p: p.name.split("run-", 1)[1])  # names sort by their timestamp
    return newest.name.rsplit("-", 1)[1] or None


def finish_wandb() -> None:
    """Close an open W&B run (so the next job of a multirun starts its own).

    Never raises: it runs in ``train.py``'s ``finally``, where an error would replace the one
    that is on its way out.  On a cluster the job's whole process tree gets the stop signal
    (SIGTERM before a requeue), W&B's service process included, and ``wandb.finish`` then fails
    with a lost connection; the job must still end as a stopped (requeued) job, not a failed one.
    """
    import sys

    if "wandb" in sys.modules:
        import wandb

        if wandb.run is not None:
            try:
                wandb.finish()
            except Exception as exc:  # noqa: BLE001 - see docstring
                log.warning("W&B run not closed cleanly (%s: %s)", type(exc).__name__, exc)


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
    for sub in ("meshes", "renders", "grasps"):
        if (run_dir / sub).is_dir():
            lines.append(f"{sub}: {run_dir / sub}")
    return lines


# ---------------------------------------------------------------------------- clusters / distributed
def process_rank() -> int:
    """Global rank of this process, known before ``torch.distributed`` starts.

    Lightning's own reading of the environment (``RANK``, ``LOCAL_RANK`` of the ranks it
    launches, ``SLURM_PROCID`` of SLURM tasks): 0 for a plain single process.
    """
    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _rank_suffix() -> str:
    """``""`` on rank 0, ``"_rank<N>"`` elsewhere (per-rank log file names)."""
    rank = process_rank()
    return "" if rank == 0 else f"_rank{rank}"


def _rank_zero_value(value: Any) -> Any:
    """``value`` on rank 0, None on the other ranks (``hydra.output_subdir``: one ``.hydra/`` writer)."""
    return value if process_rank() == 0 else None


def sweep_group(base_dir: str | None = None) -> str:
    """W&B group of this job: the sweep it belongs to, or ``""`` for a single run.

    The sweep directory (``hydra.sweep.dir``) identifies a sweep: every job of one ``-m``
    launch (basic, Optuna, SLURM, and a requeued job again) shares it.  Shown relative to
    ``base_dir`` (default: the launch directory) when it lies under it, e.g.
    ``outputs/train/multiruns/2026-11-21_10-00-00``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return ""
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return ""
    sweep_dir = Path(str(hydra_cfg.sweep.dir)).absolute()
    base = Path(base_dir or str(hydra_cfg.runtime.cwd)).absolute()
    try:
        return str(sweep_dir.relative_to(base))
    except ValueError:
        return str(sweep_dir)


def launch_dir() -> str:
    """The directory ``train.py`` was started from: Hydra's ``runtime.cwd`` inside a job, the current
    directory before one exists (the sweeper process resolving ``hydra.sweep.dir``, where
    ``${hydra:runtime.cwd}`` is not available yet)."""
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return str(HydraConfig.get().runtime.cwd)
    return os.getcwd()


def slurm_tasks_per_node(devices: Any) -> int:
    """SLURM tasks per node for ``trainer.devices``: Lightning's SLURM environment wants one task per
    device (it checks ``--ntasks-per-node`` against ``devices``), so the count must be a number."""
    valid = isinstance(devices, int | str) and not isinstance(devices, bool) and str(devices).isdigit()
    if not valid or int(devices) < 1:
        raise ValueError(
            f"trainer.devices={devices!r}: SLURM jobs need a device count (one task per device), "
            "e.g. trainer.devices=4"
        )
    return int(devices)


def slurm_gpus_per_node(accelerator: Any, devices: Any) -> int | None:
    """GPUs to request per node: ``trainer.devices`` when ``trainer.accelerator`` is a GPU, else none."""
    if str(accelerator).lower() in ("gpu", "cuda"):
        return slurm_tasks_per_node(devices)
    return None


def register_resolvers() -> None:
    """The ``${halo.*:}`` config resolvers (idempotent; done when this module is imported).

    - ``halo.launch_dir``: where train.py was started (:func:`launch_dir`);
    - ``halo.rank_suffix``: ``""`` on rank 0, ``_rank<N>`` elsewhere (log file names);
    - ``halo.rank_zero_only:VALUE``: VALUE on rank 0, null elsewhere;
    - ``halo.sweep_group:``: the W&B group of a sweep's jobs (see :func:`sweep_group`);
    - ``halo.slurm_tasks_per_node:DEVICES`` / ``halo.slurm_gpus_per_node:ACCELERATOR,DEVICES``.
    """
    resolvers = {
        "halo.launch_dir": launch_dir,
        "halo.rank_suffix": _rank_suffix,
        "halo.rank_zero_only": _rank_zero_value,
        "halo.sweep_group": sweep_group,
        "halo.slurm_tasks_per_node": slurm_tasks_per_node,
        "halo.slurm_gpus_per_node": slurm_gpus_per_node,
    }
    for name, fn in resolvers.items():
        OmegaConf.register_new_resolver(name, fn, replace=True)


register_resolvers()


#: Checkpoints a restarted job may continue from, relative to its run directory: Lightning's
#: ``hpc_ckpt_<n>.ckpt`` (saved on SLURM's requeue signal, in ``trainer.default_root_dir``),
#: ``checkpoints/last.ckpt`` (callbacks/last_checkpoint.yaml, saved at every validation) and the
#: other ``checkpoints/*.ckpt`` (the best ones), which a damaged last.ckpt falls back to.
RESUME_PATTERNS = ("hpc_ckpt_*.ckpt", "checkpoints/*.ckpt")


def resume_checkpoint(run_dir: str | Path, *, trust_pickle: bool = False) -> Path | None:
    """The newest readable checkpoint in ``run_dir`` that a requeued or restarted job continues from.

    A SLURM job that is requeued (preemption, time limit, Lightning's auto-requeue) starts again
    in the same run directory; the newest of its checkpoints (``RESUME_PATTERNS``, by
    modification time) holds the furthest state.  A checkpoint that cannot be read (truncated by
    a full disk or a node dying mid-copy, or one that would need full unpickling without
    ``trust_pickle``) is skipped with a warning naming it, and the next newest is used.  None in
    a fresh directory; :class:`~halo.core.checkpoint.CheckpointError` (one line) when there are
    checkpoints but none is readable.
    """
    run_dir = Path(run_dir)
    found = [p for pattern in RESUME_PATTERNS for p in run_dir.glob(pattern) if p.is_file()]
    if not found:
        return None
    skipped = []
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            check_checkpoint(path, trust_pickle=trust_pickle)
        except CheckpointError as exc:
            log.warning("auto_resume: skipping %s", exc)
            skipped.append(path.name)
            continue
        return path
    raise CheckpointError(
        f"auto_resume: none of the {len(found)} checkpoints in {run_dir} is readable ({', '.join(skipped)}; "
        "warnings above say why): set ckpt_path=PATH to a good one, or auto_resume=false to start over"
    )


def check_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> Path:
    """``path`` when it is a readable Lightning checkpoint (without running code from it unless
    ``trust_pickle``); :class:`~halo.core.checkpoint.CheckpointError` naming the file otherwise."""
    payload = read_checkpoint(path, trust_pickle=trust_pickle)
    if not isinstance(payload, dict) or "state_dict" not in payload:
        keys = sorted(map(str, payload))[:8] if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a Lightning checkpoint (no 'state_dict'; top-level keys: {keys})")
    return Path(path)


#: Hydra overrides a DDP rank must not inherit from a multirun job: it is a single run in the
#: job's own directory (Lightning adds ``hydra.run.dir``/``hydra.output_subdir``/``hydra.job.name``).
_RANK_DROPS = ("hydra.mode", "hydra.run.dir", "hydra.output_subdir", "hydra.job.name")


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("~+")


def ddp_rank_argv(argv0: str) -> list[str]:
    """Command line for the DDP ranks Lightning starts as new processes, as one single run.

    Lightning re-runs ``sys.argv`` for ranks > 0 and appends ``hydra.run.dir=<HydraConfig run.dir>``.
    Inside a multirun, ``sys.argv`` is the whole sweep (``-m a=1,2``): each rank would re-run the
    sweep and create its own timestamped sweep directory (the Hydra + DDP duplicate-directory
    problem).  This returns the current job's overrides (the sweep point's values) plus
    ``hydra.mode=RUN``, so a rank runs exactly this job; :func:`pin_hydra_run_dir` points
    ``hydra.run.dir`` at this job's directory.
    """
    from hydra.core.hydra_config import HydraConfig

    overrides = HydraConfig.get().overrides
    hydra_overrides = [o for o in overrides.hydra if _override_key(o) not in _RANK_DROPS]
    return [argv0, *overrides.task, *hydra_overrides, "hydra.mode=RUN"]


def pin_hydra_run_dir() -> str:
    """Set ``hydra.run.dir`` to this job's output directory (what Lightning passes to its ranks)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    hydra_cfg = HydraConfig.get()
    output_dir = str(hydra_cfg.runtime.output_dir)
    with read_write(hydra_cfg), open_dict(hydra_cfg):
        hydra_cfg.run.dir = output_dir
    return output_dir


def spawns_ddp_ranks(trainer: Trainer) -> bool:
    """True when ``trainer`` will start its other ranks by re-running this script (Lightning's
    subprocess launcher: ``strategy=ddp`` outside SLURM/torchrun)."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _SubprocessScriptLauncher):
        return False
    # SLURM tasks, torchrun, and the ranks Lightning started itself (LOCAL_RANK set) create no processes.
    if launcher.cluster_environment.creates_processes_externally:
        return False
    return launcher.num_processes * launcher.num_nodes > 1
