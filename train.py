"""Train a HALO model: ``python train.py [experiment=NAME] [group=option] [key=value ...]``.

Everything (data, model, callbacks, loggers, trainer) is built from the Hydra
configs in ``conf/`` (``conf/train.yaml`` lists the groups and the common
commands).  Each run gets its own directory (``outputs/train/runs/<time>/``, or
``outputs/train/multiruns/<time>/<job>/`` with ``-m``) holding Hydra's
``.hydra/``, ``config_resolved.yaml``, the log, ``checkpoints/`` and the
loggers' files.  The directory is printed at the end, also when the run fails.

Clusters and several processes (README, "Running on a cluster"):

* ``hydra/launcher=slurm`` submits each job to SLURM (hydra-submitit-launcher); Lightning's
  SLURM environment takes the ranks from the SLURM tasks and owns requeueing (SIGUSR1 before
  the time limit: ``hpc_ckpt_<n>.ckpt`` + ``scontrol requeue``).  A requeued job starts again in
  the same run directory and continues from its newest checkpoint (``auto_resume``).
* ``trainer=ddp`` / ``trainer=ddp_sim`` outside SLURM: Lightning starts ranks > 0 by re-running
  this script; they get this job's overrides and directory, also inside a multirun, so a job
  has exactly one run directory and one logger run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig

from halo.utils.allocator import flush_denormals, tune_allocator
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
    # page-fault fresh memory, which is several times slower on VMs (halo/utils/allocator.py).
    tune_allocator()
    # Backward passes through HALO (the VAE's frozen-base terms, the base's own culled parts) are
    # full of ~1e-40 gradients, on which a CPU's matrix products take a slow path; flushing them to
    # zero changes values by < 1.2e-38.  The same context refinement and halo fit use, so their
    # own blocks inside a run do not switch it off, and it is off again after the run.
    with flush_denormals():
        return _fit_and_test(cfg)


def _fit_and_test(cfg: DictConfig) -> tuple[dict[str, float], dict[str, Any]]:
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.paths.output_dir)
    run_utils.save_resolved_config(cfg, run_dir)

    log.info("data: %s", cfg.data._target_)
    datamodule: L.LightningDataModule = hydra.utils.instantiate(cfg.data)
    log.info("model: %s", cfg.model._target_)
    # Checkpoints the model reads itself (model.init_from, model.halo_checkpoint) run no code from the
    # file unless the user opts in; the switch is not saved in the model's hparams.
    trust = bool(cfg.get("trust_checkpoint", False))
    model: L.LightningModule = hydra.utils.instantiate(cfg.model, trust_checkpoint=trust)
    loggers = run_utils.instantiate_loggers(cfg.get("logger"))
    callbacks = run_utils.instantiate_callbacks(
        cfg.get("callbacks"),
        have_logger=bool(loggers),
        progress_bar=cfg.trainer.get("enable_progress_bar", True),
    )
    trainer: L.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    run_utils.log_config(loggers, cfg, model)

    with _ddp_ranks_run_this_job(trainer), _stopped_means_stopped(trainer):
        if cfg.get("train", True):
            ckpt_path = cfg.get("ckpt_path")
            if ckpt_path is not None:
                # One clear line (file, refused global, opt-in) instead of torch's page-long refusal.
                run_utils.check_checkpoint(ckpt_path, trust_pickle=trust)
            elif cfg.get("auto_resume", True):
                # A requeued SLURM job (or any restart in the same directory) continues where it stopped;
                # unreadable checkpoints (truncated last.ckpt) are skipped for the next newest one.
                found = run_utils.resume_checkpoint(run_dir, trust_pickle=trust)
                if found is not None:
                    log.info(
                        "resuming from %s (auto_resume; ckpt_path=... to choose, auto_resume=false to restart)",
                        found,
                    )
                    ckpt_path = str(found)
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        best = _best_checkpoint(trainer)

        if cfg.get("test", False):
            if best is None:
                log.warning("no best checkpoint (checkpointing off?): testing the current weights")
            trainer.test(model, datamodule=datamodule, ckpt_path=best, weights_only=True)
            metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    exported = None
    if trainer.is_global_zero:
        if cfg.get("export_best", True):
            exported = _export_best_network(model, best, run_dir)
        print("\n".join(run_utils.summary_lines(run_dir, metrics, best, exported)), flush=True)
    objects = {"cfg": cfg, "datamodule": datamodule, "model": model, "trainer": trainer, "loggers": loggers}
    return metrics, objects


@contextlib.contextmanager
def _stopped_means_stopped(trainer: L.Trainer):
    """After SIGTERM (the cluster stops the job: requeue, preemption, cancel), an error is part of the stop.

    SLURM signals every process of the job, so W&B's service process or DataLoader workers may be
    gone before Lightning reaches its next SIGTERM check, and the next call to them raises.  That
    error is re-raised as Lightning's own ``SIGTERMException`` (a ``SystemExit``): Hydra and
    submitit then treat the job as stopped rather than failed, so a sweep keeps waiting for the
    requeued job instead of reporting a failure.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        yield
    except Exception as exc:
        if not trainer.received_sigterm:
            raise
        log.warning("error after SIGTERM, treated as part of the stop: %s: %s", type(exc).__name__, exc)
        raise SIGTERMException() from exc


#: Environment variables Lightning sets in the launching process when it starts DDP ranks.
_DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextlib.contextmanager
def _ddp_ranks_run_this_job(trainer: L.Trainer):
    """While ``trainer`` fits/tests with DDP ranks it starts itself: they run this one job, and the
    process is clean for the next job of a multirun afterwards.

    Lightning re-runs ``sys.argv`` (+ ``hydra.run.dir``) for ranks > 0; inside a multirun that
    would re-run the whole sweep in new directories, so the ranks get this job's overrides and
    directory instead.  Afterwards the ranks are waited for (killed after an error), the process
    group is destroyed and Lightning's DDP variables are removed from the environment: the next
    job of the sweep starts its own ranks.  No-op when nothing is spawned (one device, SLURM
    tasks, torchrun) or outside Hydra.
    """
    from hydra.core.hydra_config import HydraConfig

    if not (HydraConfig.initialized() and run_utils.spawns_ddp_ranks(trainer)):
        yield
        return
    import __main__

    spec = getattr(__main__, "__spec__", None)
    if spec is not None and spec.name != "train":
        # e.g. hydra/launcher=submitit_local runs jobs as `python -m submitit.core._submit`.
        raise RuntimeError(
            f"trainer.strategy needs Lightning to start {trainer.world_size - 1} more process(es) by re-running "
            f"`python -m {spec.name}`, which is not train.py. Launch DDP jobs with `python train.py` "
            "directly, or on SLURM with hydra/launcher=slurm (one SLURM task per device)."
        )
    saved_argv, saved_env = sys.argv, {k: os.environ.get(k) for k in _DDP_ENV}
    sys.argv = run_utils.ddp_rank_argv(saved_argv[0])
    run_dir = run_utils.pin_hydra_run_dir()
    log.info("DDP: %d processes, ranks > 0 run in %s", trainer.world_size, run_dir)
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        sys.argv = saved_argv
        _end_ddp_job(trainer, saved_env, failed)


def _end_ddp_job(trainer: L.Trainer, saved_env: dict[str, str | None], failed: bool) -> None:
    import torch.distributed as dist

    for proc in getattr(trainer.strategy.launcher, "procs", []):
        if failed and proc.poll() is None:
            proc.kill()  # a rank waiting in a collective for this one would hang until the timeout
        try:
            proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            log.warning("DDP rank process %d did not finish: killing it", proc.pid)
            proc.kill()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


# ---------------------------------------------------------------------------- one-line errors
def _input_error_types() -> tuple[type[BaseException], ...]:
    """Errors that mean "your configuration or your files are wrong" (their messages name the
    file/key and the fix), as opposed to bugs, which keep their traceback."""
    from omegaconf.errors import OmegaConfBaseException

    from halo.grasp.records import RecordsWriteError
    from halo.utils.errors import InputError

    return (
        ConfigOverrideError,
        InputError,
        RecordsWriteError,
        FileNotFoundError,
        NotADirectoryError,
        OmegaConfBaseException,
    )


def _is_input_error(exc: BaseException) -> bool:
    from hydra.errors import InstantiationException

    if isinstance(exc, InstantiationException):
        # A constructor rejecting a config value (wrong type, unknown option) or a _target_ not found.
        cause = exc.__cause__
        return cause is None or isinstance(cause, (*_input_error_types(), ValueError, TypeError))
    return isinstance(exc, _input_error_types())


def _input_error_line(exc: BaseException, cfg: DictConfig) -> str:
    from hydra.errors import InstantiationException

    message = " ".join(str(exc).split())
    if isinstance(exc, InstantiationException) and exc.__cause__ is not None:
        key = getattr(exc, "full_key", "") or ""
        message = f"{key + ': ' if key else ''}{' '.join(str(exc.__cause__).split())}"
    hint = _config_key_hint(cfg, message)
    return f"{message}{hint}"


def _config_key_hint(cfg: DictConfig, message: str) -> str:
    """`` [data.root=/x: check or override it]`` when a config value appears in the message but its key does not."""
    from omegaconf import OmegaConf

    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the hint is optional
        return ""
    best: tuple[str, str] | None = None
    stack = [("", plain)]
    while stack:
        prefix, node = stack.pop()
        for key, value in node.items() if isinstance(node, dict) else []:
            name = f"{prefix}{key}"
            if isinstance(value, dict):
                stack.append((f"{name}.", value))
            elif (
                isinstance(value, str)
                and os.sep in value  # paths: the files the message is about
                and value in message
                and not name.startswith(("paths.", "hydra."))
                and (best is None or len(value) > len(best[1]))
            ):
                best = (name, value)
    if best is None or best[0] in message:
        return ""
    return f" [config key {best[0]}={best[1]}: fix the file or override {best[0]}=...]"


def _traceback_to_log_file(exc: BaseException) -> str | None:
    """Write ``exc``'s traceback to the file handlers of the root logger only (train.log); their path."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    if not handlers:
        return None
    record = log.makeRecord(
        log.name,
        logging.ERROR,
        __file__,
        0,
        "configuration/input error",
        None,
        (type(exc), exc, exc.__traceback__),
    )
    for handler in handlers:
        handler.handle(record)
    return handlers[0].baseFilename


class ConfigOverrideError(ValueError):
    """A command-line override whose value has the wrong type for its key."""


#: Words Lightning accepts in place of numbers/booleans (trainer.devices=auto, trainer.deterministic=warn).
_LIGHTNING_WORDS = ("auto", "warn")


def check_override_types(cfg: DictConfig) -> None:
    """Each ``key=value`` override keeps the type of the key's value in its config file.

    Hydra configs here have no schema, so ``model.lr=abc`` composes and fails later deep inside a
    constructor (or ``trainer.max_steps=abc`` inside Lightning) with a message that names neither
    the key nor the value.  The default is read from the chosen option's yaml file
    (``conf/<group>/<option>.yaml``) or ``conf/train.yaml``; keys it cannot find are not checked.
    """
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    if not HydraConfig.initialized():
        return
    hydra_cfg = HydraConfig.get()
    conf = Path(__file__).resolve().parent / "conf"
    choices = hydra_cfg.runtime.choices
    for override in hydra_cfg.overrides.task:
        key, _, value = override.partition("=")
        key = key.lstrip("+~")
        group, _, sub = key.partition(".")
        if "/" in key or key in choices or key.startswith("hydra."):
            continue
        option = choices.get(group) if sub else None
        source = conf / group / f"{option}.yaml" if option else conf / "train.yaml"
        if not source.is_file():
            continue
        try:  # the default's type only: interpolations in the file are not resolved
            default = OmegaConf.select(
                OmegaConf.load(source), sub if option else key, throw_on_resolution_failure=False
            )
            actual = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        except Exception:  # noqa: BLE001 - an unreadable default means "not checked", never a new error
            continue
        expected = None
        if actual in _LIGHTNING_WORDS:
            pass
        elif isinstance(default, bool):
            expected = None if isinstance(actual, bool) or actual is None else "true or false"
        elif isinstance(default, int | float) and isinstance(actual, str | bool):
            expected = "an integer" if isinstance(default, int) else "a number"
        if expected:
            raise ConfigOverrideError(
                f"{key}={value}: expected {expected} (the default in {source.relative_to(conf.parent)} is "
                f"{default!r}); e.g. {key}={default}"
            )


def _unknown_config_option(argv: list[str]) -> str | None:
    """One line for ``group=option`` overrides naming a config file that does not exist in conf/.

    Hydra would print a multi-line composition error; this names the key, the value and the
    choices.  Groups outside conf/ (hydra/launcher plugins) and sweep expressions are left to Hydra.
    """
    conf = Path(__file__).resolve().parent / "conf"
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        if group.startswith("hydra") or not (conf / group).is_dir() or "(" in value:
            continue
        for option in value.strip("[]").split(","):
            option = option.strip()
            if option in ("", "null", "none") or (conf / group / f"{option}.yaml").is_file():
                continue
            choices = ", ".join(sorted(p.stem for p in (conf / group).glob("*.yaml")))
            return f"{group}={option}: no config conf/{group}/{option}.yaml; choose one of: {choices}"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    run_dir = cfg.paths.output_dir
    try:
        check_override_types(cfg)
        metrics, _ = train(cfg)
    except Exception as exc:
        if _is_input_error(exc) and not _is_multirun():
            # One line naming the key, the value and the fix; the traceback goes to the run's log file.
            logfile = _traceback_to_log_file(exc)
            where = f" (traceback in {logfile})" if logfile else ""
            print(f"train.py: error: {_input_error_line(exc, cfg)}{where}", file=sys.stderr, flush=True)
            print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        if _is_multirun():
            # Launchers that run jobs elsewhere (SLURM) hand back the exception without its traceback.
            log.exception("job failed")
        print(f"run directory: {run_dir}", file=sys.stderr, flush=True)
        raise
    except BaseException as exc:  # SystemExit (e.g. Lightning's SIGTERMException), KeyboardInterrupt
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        hint = (
            " (a requeued job continues from its newest checkpoint)"
            if isinstance(exc, SIGTERMException)
            else ""
        )
        log.warning("stopped by %s%s", type(exc).__name__, hint)
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
    if problem := _unknown_config_option(sys.argv[1:]):
        print(f"train.py: error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
