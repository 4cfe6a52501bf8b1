"""Reading HALO-VAE checkpoints without Lightning, and fingerprinting the frozen HALO base they used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from halo.core.checkpoint import (
    LIGHTNING_HALO_BASE_RECORD,
    LIGHTNING_VAE_HPARAM,
    LIGHTNING_VAE_PREFIX,
    CheckpointError,
    read_checkpoint,
)
from halo.grasp.vae import GraspVAE, GraspVaeConfig, GraspVaeError


def load_grasp_vae(path: str | Path, *, trust_pickle: bool = False) -> tuple[GraspVAE, dict]:
    """A trained :class:`GraspVAE` from a ``HaloVaeModule`` Lightning checkpoint, without Lightning.

    Read by :func:`halo.core.checkpoint.read_checkpoint`: no code from the file runs unless
    ``trust_pickle`` is True (the module's hyper-parameters are plain values, so this project's
    files never need it); a file that asks for more raises
    :class:`~halo.core.checkpoint.UntrustedCheckpointError` naming the global and the opt-in.
    Returns the model in eval mode and ``meta``: ``hyper_parameters`` (loss switches,
    ``halo_checkpoint`` path, ``refine_at_generation``, ``refine_steps``, ``object_points``...),
    ``global_step``, ``epoch`` and ``halo_base`` (path + fingerprint of the HALO base used in
    training, when recorded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VAE checkpoint file")
    try:
        payload = read_checkpoint(path, trust_pickle=trust_pickle)
    except CheckpointError as exc:
        raise GraspVaeError(str(exc)) from exc
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    if (
        not isinstance(hparams, Mapping)
        or LIGHTNING_VAE_HPARAM not in hparams
        or not isinstance(payload.get("state_dict"), Mapping)
    ):
        keys = sorted(hparams)[:12] if isinstance(hparams, Mapping) else None
        raise GraspVaeError(
            f"{path}: not a HALO-VAE checkpoint (needs hyper_parameters['vae'] and a state_dict; "
            f"hyper_parameters keys: {keys}); HALO base checkpoints go to `halo mesh`"
        )
    prefix = LIGHTNING_VAE_PREFIX
    try:
        model = GraspVAE(GraspVaeConfig.from_dict(hparams[LIGHTNING_VAE_HPARAM]))
    except (TypeError, ValueError, AttributeError) as exc:
        raise GraspVaeError(f"{path}: hyper_parameters['vae'] is not a valid VAE config: {exc}") from exc
    weights = {k[len(prefix) :]: v for k, v in payload["state_dict"].items() if str(k).startswith(prefix)}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise GraspVaeError(f"{path}: state_dict does not match hyper_parameters['vae']: {exc}") from exc
    meta = {
        "source": str(path),
        "hyper_parameters": dict(hparams),
        "global_step": int(payload.get("global_step", -1)),
        "epoch": int(payload.get("epoch", -1)),
        "halo_base": payload.get(LIGHTNING_HALO_BASE_RECORD),
    }
    return model.eval(), meta


def halo_fingerprint(model: nn.Module) -> str:
    """Short content hash of a model's weights (to check that the same HALO base is used again)."""
    import hashlib

    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
