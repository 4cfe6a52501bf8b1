"""Cluster mechanics: fast checks of the SLURM launcher config, the resume choice, the rank-aware
resolvers; and (slow) a real SLURM cluster: the README's cluster recipe end to end, an Optuna
search on it, and requeue + resume.

``scripts/slurm_local.sh start`` brings up a single-node SLURM (munged, slurmctld, slurmd; Debian's
slurm-wlm, installed when missing) in a private directory with free ports; the module's fixture
stops it afterwards.  The tests submit through ``hydra/launcher=slurm`` exactly as a user does
(the README command with a tiny experiment and small resources) and read what the jobs wrote.
They skip, with the reason, only where SLURM cannot be started here (not root, no apt).

The cluster tests are marked slow (~2 min together); ``make test-cluster`` runs them (CI: ``.ci/run``).
"""

from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lightning_modules import run_utils
from tests.cluster_helpers import (  # noqa: F401
    TRAIN_PY,
    run_train,
    tiny_halo_data,
    train_env,
    wandb_run_record,
    wandb_runs,
)
from tests.conftest import REPO_ROOT
from tests.training.test_train import CONF, wandb_history

SCRIPT = REPO_ROOT / "scripts" / "slurm_local.sh"
TINY_MAX_STEPS = 20  # conf/experiment/halo_base_tiny.yaml
# The README recipe's resources, shrunk to this 2-core node (partition "debug" is the script's).
SMALL_JOB = [
    "hydra.launcher.partition=debug",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=2",
    "hydra.launcher.timeout_min=10",
]


@dataclass
class Cluster:
    conf: Path
    env: dict[str, str]

    def run(self, *command: str) -> str:
        return subprocess.run(command, env=self.env, capture_output=True, text=True, check=True).stdout

    def job_ids(self) -> list[str]:
        return self.run("squeue", "-h", "-o", "%i").split()

    def job_field(self, job_id: str, field: str) -> str:
        match = re.search(rf"\b{field}=(\S+)", self.run("scontrol", "show", "job", job_id))
        return match.group(1) if match else ""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def slurm_cluster():
    if sys.platform != "linux" or shutil.which("bash") is None:
        pytest.skip("the local SLURM cluster needs Linux and bash")
    # A short path: munge's socket lives in it (unix socket paths are limited to 108 bytes).
    state = Path(tempfile.mkdtemp(prefix="halo-slurm-", dir="/tmp"))
    ctld_port, slurmd_port = _free_ports(2)
    env = {
        **os.environ,
        "HALO_SLURM_DIR": str(state),
        "HALO_SLURM_CTLD_PORT": str(ctld_port),
        "HALO_SLURM_SLURMD_PORT": str(slurmd_port),
        "SLURM_CONF": str(state / "slurm.conf"),
    }
    started = subprocess.run(
        ["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=900
    )
    if started.returncode in (2, 3):  # not root / packages missing and not installable
        pytest.skip(f"SLURM cannot be started here: {started.stderr.strip()}")
    try:
        assert started.returncode == 0, f"scripts/slurm_local.sh start failed:\n{started.stderr}"
        yield Cluster(conf=state / "slurm.conf", env=env)
    finally:
        stopped = subprocess.run(
            ["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120
        )
        assert stopped.returncode == 0, stopped.stderr
        shutil.rmtree(state, ignore_errors=True)


def _wait_for(what: str, condition: Callable[[], object], timeout: float, proc: subprocess.Popen, log: Path):
    """Poll ``condition`` until truthy (returned); fail with the sweep's output after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the sweep ended (rc {proc.returncode}) while waiting for {what}:\n{_tail(log)}")
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}:\n{_tail(log)}")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else "(no output)"


def _job_logs(sweep_dir: Path) -> str:
    """All stdout/stderr that submitit collected from the sweep's SLURM jobs."""
    return "\n".join(p.read_text(errors="replace") for p in sorted(sweep_dir.glob(".submitit/*/*_log.*")))


def _csv_steps(path: Path) -> list[int]:
    with open(path, newline="") as f:
        return [int(float(row["step"])) for row in csv.DictReader(f)]


def _global_step(path: Path) -> int:
    return int(torch.load(path, weights_only=False, map_location="cpu")["global_step"])


# ---------------------------------------------------------------------------- fast: configs and helpers
def _launcher(overrides: list[str], tmp_path: Path) -> dict:
    """hydra.launcher of `train.py -m hydra/launcher=slurm OVERRIDES`, resolved as the sweeper resolves it."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[f"paths.root_dir={tmp_path}", "hydra/launcher=slurm", *overrides],
            return_hydra_config=True,
        )
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_takes_nodes_tasks_and_gpus_from_the_trainer(tmp_path):
    launcher = _launcher(["trainer=ddp", "trainer.devices=8", "trainer.num_nodes=2"], tmp_path)
    assert launcher["_target_"].endswith("SlurmLauncher")
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 8, 8)
    # Lightning owns requeue: SIGUSR1 `signal_delay_s` before the limit, and --requeue.
    assert launcher["additional_parameters"] == {"requeue": True, "signal": "USR1@300"}
    assert launcher["submitit_folder"].startswith(str(tmp_path / "outputs" / "train" / "multiruns"))
    cpu = _launcher(["hydra.launcher.partition=debug", "hydra.launcher.signal_delay_s=60"], tmp_path)
    assert (cpu["nodes"], cpu["tasks_per_node"], cpu["gpus_per_node"]) == (1, 1, None)  # no GPU asked for
    assert cpu["partition"] == "debug" and cpu["additional_parameters"]["signal"] == "USR1@60"
    with pytest.raises(Exception, match="SLURM jobs need a device count"):
        _launcher(["trainer=ddp", "trainer.devices=auto"], tmp_path)


def test_slurm_sizes():
    assert run_utils.slurm_tasks_per_node(4) == 4 and run_utils.slurm_tasks_per_node("2") == 2
    assert run_utils.slurm_gpus_per_node("gpu", 4) == 4 and run_utils.slurm_gpus_per_node("cuda", 1) == 1
    assert (
        run_utils.slurm_gpus_per_node("cpu", 2) is None and run_utils.slurm_gpus_per_node("auto", 1) is None
    )
    for bad in ("auto", -1, 0, [0, 1], True):
        with pytest.raises(ValueError, match="trainer.devices"):
            run_utils.slurm_tasks_per_node(bad)


def test_resume_checkpoint_is_the_newest_of_hpc_and_last(tmp_path):
    assert run_utils.resume_checkpoint(tmp_path) is None  # a fresh run directory
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    best = tmp_path / "checkpoints" / "epoch001-step0000010.ckpt"  # only when last.ckpt is unreadable
    torch.save({"state_dict": {}, "global_step": 10}, best)
    os.utime(best, (500, 500))
    torch.save({"state_dict": {}, "global_step": 20}, last)
    assert run_utils.resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's requeue checkpoint, newer
    torch.save({"state_dict": {}, "global_step": 30}, hpc)
    os.utime(last, (1000, 1000))
    os.utime(hpc, (2000, 2000))
    assert run_utils.resume_checkpoint(tmp_path) == hpc
    os.utime(last, (3000, 3000))  # a restarted job validated again after resuming from hpc_ckpt_1
    assert run_utils.resume_checkpoint(tmp_path) == last


def test_rank_resolvers_and_wandb_group_outside_a_sweep(monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    cfg = OmegaConf.create({"suffix": "${halo.rank_suffix:}", "sub": "${halo.rank_zero_only:.hydra}"})
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    assert (cfg.suffix, cfg.sub) == ("", ".hydra")
    monkeypatch.setattr(rank_zero_only, "rank", 3)  # e.g. SLURM_PROCID=3
    assert (cfg.suffix, cfg.sub) == ("_rank3", None)
    assert run_utils.sweep_group() == ""  # no Hydra job: not part of a sweep
    assert OmegaConf.create({"d": "${halo.launch_dir:}"}).d == os.getcwd()


def test_previous_wandb_run_id_is_the_newest_run_in_the_directory(tmp_path):
    assert run_utils.previous_wandb_run_id(tmp_path) is None
    for name in (
        "offline-run-20260101_120000-aaaa1111",
        "run-20260102_080000-bbbb2222",
        "offline-run-20251231_235959-cccc3333",
    ):
        (tmp_path / "wandb" / name).mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / "run-20260102_080000-bbbb2222")
    assert run_utils.previous_wandb_run_id(tmp_path) == "bbbb2222"


def test_dataloader_workers_ignore_the_cluster_signals():
    """A forked worker must not run the training process's SIGUSR1/SIGTERM handlers (Lightning's requeue)."""
    code = (
        "import signal, sys\n"
        "signal.signal(signal.SIGUSR1, lambda *a: sys.exit('handler ran'))\n"
        "from datamodules.loading import cluster_safe_worker_init\n"
        "cluster_safe_worker_init(0)\n"
        "assert all(signal.getsignal(s) == signal.SIG_IGN for s in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM))\n"
        "import os; os.kill(os.getpid(), signal.SIGUSR1); os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('survived')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and result.stdout.strip() == "survived", result.stderr


def test_slurm_local_script_refuses_clearly_without_root(tmp_path):
    """Exit code 2 + a reason (what the cluster fixture turns into a skip); as root: run it as nobody."""
    command = ["bash", str(SCRIPT), "start"]
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("root without runuser: cannot try the script as an ordinary user")
        command = ["runuser", "-u", "nobody", "--", *command]
    tmp_path.chmod(0o777)
    env = {**os.environ, "HALO_SLURM_DIR": str(tmp_path / "slurm")}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2, result.stderr
    assert "not root" in result.stderr


# ---------------------------------------------------------------------------- the README recipe
@pytest.mark.slow
def test_slurm_sweep_submits_one_job_per_point(slurm_cluster, tmp_path):
    """README "Running on a cluster": `-m hydra/launcher=slurm ... model.lr=a,b` -> 2 SLURM jobs, both complete."""
    cache = tmp_path / "cache"  # empty: both jobs want the dataset at once, one builds it
    result = run_train(
        [
            "-m",
            "hydra/launcher=slurm",
            "experiment=halo_base_tiny",
            "model.lr=1e-3,3e-3",
            *SMALL_JOB,
            f"data.cache_dir={cache}",
        ],
        tmp_path,
        timeout=600,
        SLURM_CONF=str(slurm_cluster.conf),
    )
    (sweep_dir,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    assert f"Submitit 'slurm' sweep output dir : {sweep_dir}" in result.stdout + result.stderr

    # Two SLURM array tasks of one array job, each with submitit's result file.
    tasks = sorted(p.name for p in (sweep_dir / ".submitit").iterdir() if p.is_dir() and "_" in p.name)
    assert len(tasks) == 2 and {t.split("_")[1] for t in tasks} == {"0", "1"}, tasks
    assert all(any((sweep_dir / ".submitit" / t).glob("*_result.pkl")) for t in tasks)
    logs = _job_logs(sweep_dir)
    assert logs.count("SLURM auto-requeueing enabled") == 2  # Lightning saw SLURM in both jobs
    assert logs.count("[halo] generating synthetic hands") == 1  # the dataset was built once

    for job, lr in (("0", 1e-3), ("1", 3e-3)):
        run_dir = sweep_dir / job
        assert OmegaConf.load(run_dir / "config_resolved.yaml").model.lr == lr
        assert _global_step(run_dir / "checkpoints" / "last.ckpt") == TINY_MAX_STEPS
        assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1
        assert (run_dir / "checkpoints" / "halo_base_best.pt").is_file()
        (wandb_file,) = wandb_runs(run_dir)  # metrics: the default logger, offline
        history = wandb_history(wandb_file)
        assert len([row for row in history if "train/loss" in row]) == TINY_MAX_STEPS
        val = [row["val/iou"] for row in history if "val/iou" in row]
        assert len(val) == 2 and all(0.0 <= v <= 1.0 for v in val)
        assert any("val_mesh/iou" in row for row in history)  # mesh validation ran in the job
        # W&B groups the two jobs under the sweep.
        assert wandb_run_record(wandb_file).run_group == str(sweep_dir.relative_to(tmp_path))


# ---------------------------------------------------------------------------- Optuna on SLURM
@pytest.mark.slow
def test_optuna_search_runs_its_trials_as_slurm_jobs(slurm_cluster, tmp_path, tiny_halo_data):  # noqa: F811
    """hparams_search=halo_base_optuna with the SLURM launcher: n_jobs trials at once, each a SLURM job
    whose returned val/iou_best is the value Optuna records; the best one is reported."""
    run_train(
        [
            "hparams_search=halo_base_optuna",
            "hydra/launcher=slurm",
            "experiment=halo_base_tiny",
            "hydra.sweeper.n_trials=2",
            "hydra.sweeper.n_jobs=2",
            *SMALL_JOB,
            *tiny_halo_data,
            "callbacks.mesh_validation=null",
        ],
        tmp_path,
        timeout=600,
        SLURM_CONF=str(slurm_cluster.conf),
    )
    (sweep_dir,) = (tmp_path / "outputs" / "train" / "multiruns").iterdir()
    results = OmegaConf.load(sweep_dir / "optimization_results.yaml")
    objectives = {}
    for job in ("0", "1"):
        cfg = OmegaConf.load(sweep_dir / job / "config_resolved.yaml")
        width = cfg.search.hidden_width
        assert width in (32, 64, 96, 128) and list(cfg.model.net.hidden_dims) == [width] * 4
        assert cfg.model.loss in ("mse", "bce") and 1e-4 <= cfg.model.lr <= 3e-3
        (wandb_file,) = wandb_runs(sweep_dir / job)
        best = [row["val/iou_best"] for row in wandb_history(wandb_file) if "val/iou_best" in row]
        objectives[job] = best[-1]  # what train.py returned to the sweeper for this trial
        assert wandb_run_record(wandb_file).run_group == str(sweep_dir.relative_to(tmp_path))
    assert abs(results.best_value - max(objectives.values())) < 1e-6
    assert set(results.best_params) == {
        "model.lr",
        "search.hidden_width",
        "model.loss",
        "data.points_per_sample",
    }


# ---------------------------------------------------------------------------- requeue + resume
@pytest.mark.slow
def test_requeued_job_resumes_from_its_checkpoint(slurm_cluster, tmp_path, tiny_halo_data):  # noqa: F811
    """SIGUSR1 (time-limit warning) -> Lightning saves hpc_ckpt_1 and requeues; then a plain requeue
    (SIGTERM, as on preemption) -> the job continues from checkpoints/last.ckpt.  Each restart
    resumes where the job stopped, never from step 0, and the sweep itself succeeds."""
    # Long enough that the job is still training when the signals arrive: at 120 steps a faster
    # training step let the job finish between the first last.ckpt and SIGUSR1, and at 400 one
    # fresh-clone CI run (2026-12-06) ended the sweep before the restart from hpc_ckpt_1.
    max_steps = 800
    log = tmp_path / "sweep.log"
    args = [
        "-m",
        "hydra/launcher=slurm",
        "experiment=halo_base_tiny",
        "model.lr=1e-3",
        *SMALL_JOB,
        *tiny_halo_data,
        f"trainer.max_steps={max_steps}",
        "callbacks.mesh_validation=null",
        "logger=many_loggers",  # csv (one version per attempt) + wandb
    ]
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(TRAIN_PY), *args],
            cwd=tmp_path,
            env=train_env(tmp_path, SLURM_CONF=str(slurm_cluster.conf)),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    job_id = None
    try:
        last = _wait_for(
            "the first last.ckpt",
            lambda: next(iter(tmp_path.glob("outputs/train/multiruns/*/0/checkpoints/last.ckpt")), None),
            240,
            proc,
            log,
        )
        run_dir = last.parents[1]
        sweep_dir = run_dir.parent
        (job_id,) = slurm_cluster.job_ids()
        # 1) What SLURM sends `signal_delay_s` before the time limit (--signal=USR1@...).
        slurm_cluster.run("scancel", "--signal=USR1", job_id)
        hpc = run_dir / "hpc_ckpt_1.ckpt"
        resumed_hpc = f"resuming from {hpc}"
        _wait_for("the restart from hpc_ckpt_1", lambda: resumed_hpc in _job_logs(sweep_dir), 240, proc, log)
        # 2) A preemption: SIGTERM and back to the queue, no checkpoint of its own.  Wait until the
        #    restarted job has saved a newer last.ckpt than hpc_ckpt_1.
        _wait_for(
            "a last.ckpt newer than hpc_ckpt_1",
            lambda: last.stat().st_mtime > hpc.stat().st_mtime + 0.01,
            240,
            proc,
            log,
        )
        time.sleep(0.5)  # let the checkpoint finish writing
        slurm_cluster.run("scontrol", "requeue", job_id)
        assert proc.wait(timeout=300) == 0, _tail(log)
    finally:
        if proc.poll() is None:
            proc.kill()
        if job_id is not None and job_id in slurm_cluster.job_ids():
            slurm_cluster.run("scancel", job_id)

    assert slurm_cluster.job_field(job_id, "Restarts") == "2"
    logs = _job_logs(sweep_dir)
    assert logs.count(resumed_hpc) == 1
    if logs.count(f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}") != 1:
        # The requeue's SIGTERM can land while last.ckpt is being rewritten: auto-resume then skips
        # the damaged file (with a warning) for the newest readable checkpoint, as it should.
        assert "auto_resume: skipping" in logs and logs.count("resuming from ") == 2, logs[-3000:]
    # One result, from the last attempt (the stopped ones left none for the sweep to read).
    assert len(re.findall(r"^submitit INFO \(.*\) - Job completed successfully$", logs, re.M)) == 1

    hpc_step = _global_step(hpc)
    assert 0 < hpc_step < max_steps
    # Only the last attempt trained to the end; its last validation checkpoint is within the final
    # validation interval (after a mid-epoch restore Lightning's validation schedule can shift by a step).
    assert logs.count(f"`Trainer.fit` stopped: `max_steps={max_steps}` reached.") == 1
    assert max_steps - 10 < _global_step(run_dir / "checkpoints" / "last.ckpt") <= max_steps
    # One CSV version per attempt: each restart logged from where it resumed, not from step 0.
    versions = sorted((run_dir / "csv").glob("version_*/metrics.csv"))
    assert len(versions) == 3, versions
    first, second, third = (_csv_steps(v) for v in versions)
    assert min(first) == 0
    assert min(second) >= hpc_step - 1  # logger step = index of the last trained batch
    assert min(third) > min(second)
    # W&B: the three attempts continue one run (same id; offline, each attempt has its own folder).
    attempts = wandb_runs(run_dir)
    assert len(attempts) == 3
    assert len({p.parent.name.rsplit("-", 1)[1] for p in attempts}) == 1
    # The attempt stopped through Lightning's requeue handler closed its run first: its metrics up
    # to the requeue were written (W&B's service process is stopped with the job right after).
    first_attempt = [row for row in wandb_history(attempts[0]) if "train/loss" in row]
    # SIGUSR1 is handled between two Python statements: after a step's optimizer update but before
    # its metrics are logged, the checkpoint's step is one ahead of the last logged row.
    assert max(row["trainer/global_step"] for row in first_attempt) >= hpc_step - 2
    final_attempt = [row for row in wandb_history(attempts[-1]) if "train/loss" in row]
    assert min(row["trainer/global_step"] for row in final_attempt) >= hpc_step
    assert wandb_run_record(attempts[-1]).run_group == str(sweep_dir.relative_to(tmp_path))
