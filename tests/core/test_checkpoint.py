"""Checkpoints: nothing in a file runs unless the user trusts it; the key contract with the
Lightning modules; resume skips unreadable checkpoints.

The malicious files pickle an object whose ``__reduce__`` calls ``os.system("touch MARKER")``:
full unpickling would create the marker.  Every entry point that reads a checkpoint must refuse
them with one line naming the file, the refused global and the opt-in, and the marker must not
exist afterwards.  One test trusts the file on purpose to show the marker really would appear.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from halo.core import checkpoint as ck
from halo.core.checkpoint import (
    CheckpointError,
    UntrustedCheckpointError,
    convert_original_checkpoint,
    load_model,
    load_original_checkpoint,
    read_checkpoint,
    save_checkpoint,
)
from halo.core.model import HaloModel, NetworkConfig
from halo.grasp.vae import GraspVaeError
from halo.grasp.vae_checkpoint import load_grasp_vae

SMALL_NET = {"hidden_dims": [8, 8, 8, 8]}


class _RunsCode:
    """Pickles as ``os.system("touch <marker>")``: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _lightning_like(extra: object, hparams_key: str = "net") -> dict:
    """A Lightning checkpoint layout whose hyper-parameters carry the malicious object."""
    model = HaloModel(NetworkConfig.from_dict(SMALL_NET))
    return {
        "epoch": 0,
        "global_step": 1,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "hyper_parameters": {hparams_key: NetworkConfig.from_dict(SMALL_NET).to_dict(), "evil": extra},
    }


@pytest.fixture
def evil(tmp_path) -> dict:
    """Malicious files: a .pt (original-release layout) and a .ckpt (Lightning layout); the marker path."""
    marker = tmp_path / "MARKER"
    pt = tmp_path / "evil.pt"
    torch.save({"model": {}, "epoch_it": _RunsCode(marker)}, pt)
    ckpt = tmp_path / "evil.ckpt"
    torch.save(_lightning_like(_RunsCode(marker)), ckpt)
    return {"pt": pt, "ckpt": ckpt, "marker": marker}


def _assert_refused(message: str, path: Path) -> None:
    line = message.strip().splitlines()[-1]
    assert str(path) in line and "system" in line  # the file and the global it asked for (posix.system)
    assert "--trust-checkpoint" in line and "trust_pickle=True" in line and "trust_checkpoint=true" in line


def test_trusting_the_malicious_file_really_runs_its_code(evil):
    """Guards the other tests: the files are malicious, so a missing marker means the refusal worked."""
    read_checkpoint(evil["ckpt"], trust_pickle=True)
    assert evil["marker"].exists()


@pytest.mark.parametrize("kind", ["pt", "ckpt"])
@pytest.mark.parametrize(
    "loader",
    [
        load_model,
        load_original_checkpoint,
        lambda p: convert_original_checkpoint(p, p.with_name("out.pt")),
        read_checkpoint,
    ],
    ids=["load_model", "load_original_checkpoint", "convert_original_checkpoint", "read_checkpoint"],
)
def test_core_loaders_refuse_code_by_default(evil, kind, loader):
    with pytest.raises(UntrustedCheckpointError) as err:
        loader(evil[kind])
    _assert_refused(str(err.value), evil[kind])
    assert len(str(err.value).splitlines()) == 1
    assert not evil["marker"].exists()


@pytest.mark.parametrize("kind", ["pt", "ckpt"])
def test_load_grasp_vae_refuses_code_by_default(evil, kind):
    with pytest.raises(GraspVaeError) as err:
        load_grasp_vae(evil[kind])
    _assert_refused(str(err.value), evil[kind])
    assert not evil["marker"].exists()


def test_plain_pickle_names_the_global_too(tmp_path):
    """Not torch's zip format: torch stops at an opcode; the message still names os.system's global."""
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_RunsCode(tmp_path / "MARKER"), protocol=4))
    with pytest.raises(UntrustedCheckpointError) as err:
        load_model(path)
    _assert_refused(str(err.value), path)
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("kind", ["pt", "ckpt"])
def test_lightning_modules_refuse_code_in_init_from_and_halo_checkpoint(evil, kind):
    from lightning_modules.halo_base import HaloBaseModule
    from lightning_modules.halo_vae import HaloVaeModule, load_frozen_halo

    module = HaloBaseModule(net=SMALL_NET, init_from=str(evil[kind]))
    with pytest.raises(UntrustedCheckpointError) as err:
        module.setup("fit")  # model.init_from is applied when a fit starts
    _assert_refused(str(err.value), evil[kind])
    with pytest.raises(UntrustedCheckpointError):
        HaloVaeModule(vae={"object_encoder": "pointnet"}, halo_checkpoint=str(evil[kind]))
    with pytest.raises(UntrustedCheckpointError):
        load_frozen_halo(evil[kind])
    assert not evil["marker"].exists()


def test_init_from_trust_is_opt_in_and_not_saved(evil):
    from lightning_modules.halo_base import HaloBaseModule

    module = HaloBaseModule(net=SMALL_NET, init_from=str(evil["ckpt"]), trust_checkpoint=True)
    assert "trust_checkpoint" not in module.hparams  # a shared checkpoint cannot switch trust on
    module.setup("fit")
    assert evil["marker"].exists()


# ---------------------------------------------------------------------------- the CLI
def _box_file(path: Path) -> Path:
    trimesh.creation.box(extents=(0.05, 0.05, 0.05)).export(path)
    return path


def _cli_cases(tmp: Path, ckpt: Path) -> dict[str, list[str]]:
    from halo.hands.sequences import synthetic_hand_sequence

    keypoints = tmp / "hands.npy"
    np.save(keypoints, synthetic_hand_sequence(6)[:1])
    grasps = tmp / "grasps"
    grasps.mkdir(exist_ok=True)
    _box_file(grasps / "mug_obj.ply")
    np.save(grasps / "mug_0.npy", synthetic_hand_sequence(6)[0])  # keypoints only: meshed with HALO
    out = str(tmp / "out")
    obj = str(_box_file(tmp / "cup.ply"))
    return {
        "mesh": ["mesh", "--checkpoint", str(ckpt), "--keypoints", str(keypoints), "--out", out],
        "demo": ["demo", "--checkpoint", str(ckpt), "--out", out, "--frames", "2"],
        "convert-checkpoint": ["convert-checkpoint", str(ckpt), str(tmp / "converted.pt")],
        "eval meshes": ["eval", "meshes", "--checkpoint", str(ckpt), "--data", str(tmp), "--out", out],
        "generate meshes": [
            "generate",
            "meshes",
            "--checkpoint",
            str(ckpt),
            "--data",
            str(tmp),
            "--out",
            out,
        ],
        "generate grasps": ["generate", "grasps", "--checkpoint", str(ckpt), "--objects", obj, "--out", out],
        "eval grasps": ["eval", "grasps", "--grasps", str(grasps), "--checkpoint", str(ckpt), "--out", out],
    }


@pytest.mark.parametrize("kind", ["pt", "ckpt"])
@pytest.mark.parametrize(
    "command",
    [
        "mesh",
        "demo",
        "convert-checkpoint",
        "eval meshes",
        "generate meshes",
        "generate grasps",
        "eval grasps",
    ],
)
def test_every_cli_command_refuses_code_by_default(evil, kind, command, tmp_path, capsys):
    from halo.cli.app import main

    argv = _cli_cases(tmp_path, evil[kind])[command]
    code = main(argv)
    err = capsys.readouterr().err
    assert not evil["marker"].exists()
    # eval grasps skips the grasp it cannot mesh (and says why) but still scores nothing else: exit 2
    assert code == 2, err
    refusal = next(line for line in err.splitlines() if "refused to unpickle" in line)
    _assert_refused(refusal, evil[kind])


def test_cli_trust_flag_opts_in(evil, tmp_path, capsys):
    from halo.cli.app import main

    argv = _cli_cases(tmp_path, evil["pt"])["convert-checkpoint"]
    main([*argv, "--trust-checkpoint"])  # fails afterwards (no real weights), but the code ran
    assert evil["marker"].exists()


# ---------------------------------------------------------------------------- what must still load
def test_original_release_loads_without_trust(halo_reference):
    model, meta = load_model(halo_reference / "model_best.pt")
    assert meta["source_format"] == "original-halo" and meta["epoch"] == 1398
    assert meta["best_val_iou"] == pytest.approx(0.9357879, abs=1e-6)  # the numpy scalar it stores
    assert isinstance(model, HaloModel)


def test_numpy_globals_are_allowed_only_during_the_load(halo_reference):
    load_model(halo_reference / "model_best.pt")
    allowed = torch.serialization.get_safe_globals()
    assert np.dtype not in allowed and not any(isinstance(g, tuple) for g in allowed)


def test_own_format_round_trip_without_trust(tmp_path):
    model = HaloModel(NetworkConfig.from_dict(SMALL_NET))
    path = save_checkpoint(model, tmp_path / "m.pt", metadata={"note": "x"})
    loaded, meta = load_model(path)
    assert meta == {"note": "x"}
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


# ---------------------------------------------------------------------------- the key contract
def _saved_by_lightning(module, path: Path) -> Path:
    """A real Lightning checkpoint of ``module`` (Trainer.save_checkpoint, no fit)."""
    import lightning as L

    trainer = L.Trainer(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu"
    )
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


def test_halo_base_module_checkpoint_follows_the_contract(tmp_path):
    from lightning_modules.halo_base import HaloBaseModule

    module = HaloBaseModule(net=SMALL_NET, init_from=str(tmp_path / "x.pt"))
    path = _saved_by_lightning(module, tmp_path / "base.ckpt")
    raw = torch.load(path, weights_only=True)  # plain hparams: no allow-list needed
    assert ck.LIGHTNING_NETWORK_HPARAM in raw["hyper_parameters"]
    assert all(k.startswith(ck.LIGHTNING_NETWORK_PREFIX) for k in raw["state_dict"])
    loaded, meta = load_model(path)
    assert meta["source_format"] == "lightning"
    for key, value in module.model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_halo_vae_module_checkpoint_follows_the_contract(tmp_path):
    from lightning_modules.halo_vae import HaloVaeModule

    base = save_checkpoint(HaloModel(NetworkConfig.from_dict(SMALL_NET)), tmp_path / "base.pt")
    module = HaloVaeModule(vae={"z_dim": 4, "object_dim": 16, "encoder_dim": 16, "decoder_dim": 16,
                                "refine_dim": 8, "object_hidden_dim": 16}, halo_checkpoint=str(base))  # fmt: skip
    path = _saved_by_lightning(module, tmp_path / "vae.ckpt")
    raw = torch.load(path, weights_only=True)
    hp = raw["hyper_parameters"]
    assert hp[ck.LIGHTNING_VAE_HPARAM] == module.vae.config.to_dict()
    assert hp[ck.LIGHTNING_VAE_HALO_HPARAM] == str(base)
    assert raw[ck.LIGHTNING_HALO_BASE_RECORD]["path"] == str(base)
    vae_keys = [k for k in raw["state_dict"] if k.startswith(ck.LIGHTNING_VAE_PREFIX)]
    assert len(vae_keys) == len(module.vae.state_dict())
    vae, meta = load_grasp_vae(path)
    assert meta["halo_base"]["fingerprint"] == raw[ck.LIGHTNING_HALO_BASE_RECORD]["fingerprint"]
    for key, value in module.vae.state_dict().items():
        assert torch.equal(vae.state_dict()[key], value)


def test_hand_datamodule_records_the_keys_halo_eval_reads(tmp_path):
    from datamodules.hand_occupancy import SyntheticHandsDataModule

    dm = SyntheticHandsDataModule(tmp_path / "cache")
    missing = [k for k in ck.DATAMODULE_HPARAM_KEYS if k not in dm.hparams]
    assert not missing, f"datamodule hparams lack {missing}: `halo eval` reads them from checkpoints"


# ---------------------------------------------------------------------------- damaged files, resume
def _damaged(path: Path, how: str, good: bytes) -> None:
    if how == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif how == "zero-byte":
        path.write_bytes(b"")
    else:
        path.write_bytes(np.random.default_rng(0).bytes(4096))


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "random-bytes"])
def test_damaged_checkpoint_is_one_clear_error(tmp_path, how):
    good = tmp_path / "good.ckpt"
    torch.save(_lightning_like(None), good)
    bad = tmp_path / "bad.ckpt"
    _damaged(bad, how, good.read_bytes())
    with pytest.raises(CheckpointError) as err:
        load_model(bad)
    assert not isinstance(err.value, UntrustedCheckpointError)
    assert str(bad) in str(err.value) and len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("how", ["truncated", "zero-byte", "random-bytes"])
def test_resume_skips_unreadable_checkpoints(tmp_path, how, caplog):
    from lightning_modules import run_utils

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    hpc = run / "hpc_ckpt_1.ckpt"
    torch.save(_lightning_like(None), hpc)
    best = run / "checkpoints" / "epoch009-step0001200.ckpt"
    best.write_bytes(hpc.read_bytes())
    last = run / "checkpoints" / "last.ckpt"
    _damaged(last, how, hpc.read_bytes())
    for age, path in enumerate((last, best, hpc)):  # last.ckpt newest, then the best one, then hpc
        os.utime(path, (10_000 - age, 10_000 - age))
    with caplog.at_level("WARNING"):
        assert run_utils.resume_checkpoint(run) == best
    assert any(str(last) in r.getMessage() for r in caplog.records)


def test_resume_skips_untrusted_and_fails_in_one_line_when_nothing_is_readable(tmp_path, evil):
    from lightning_modules import run_utils

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(evil["ckpt"].read_bytes())
    (run / "hpc_ckpt_2.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError) as err:
        run_utils.resume_checkpoint(run)
    message = str(err.value)
    assert len(message.splitlines()) == 1 and "none of the 2 checkpoints" in message and str(run) in message
    assert "auto_resume=false" in message
    assert not evil["marker"].exists()
    assert run_utils.resume_checkpoint(tmp_path / "fresh") is None
