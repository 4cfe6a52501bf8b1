"""Reading HALO-VAE checkpoints without Lightning, and fingerprinting the frozen HALO base they used."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from halo.grasp.vae import GraspVAE, GraspVaeConfig, GraspVaeError


def load_grasp_vae(path: str | Path, *, trust_pickle: bool = True) -> tuple[GraspVAE, dict]:
    """A trained :class:`GraspVAE` from a ``HaloVaeModule`` Lightning checkpoint, without Lightning.

    The file is first read with ``torch.load(weights_only=True)`` (no code runs; the module's
    hyper-parameters are plain values).  Only when that fails (e.g. a datamodule stored
    ``pathlib`` paths in its hyper-parameters) is it fully unpickled, and only with
    ``trust_pickle`` (default True, as :func:`halo.core.checkpoint.load_model`): full unpickling can
    run code, so pass False for files you do not trust.  Returns the model in eval mode and
    ``meta``: ``hyper_parameters`` (loss switches, ``halo_checkpoint`` path,
    ``refine_at_generation``, ``refine_steps``, ``object_points``...), ``global_step``, ``epoch``
    and ``halo_base`` (path + fingerprint of the HALO base used in training, when recorded).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such VAE checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling problem reads the same to the user
        if not trust_pickle:
            raise GraspVaeError(
                f"{path}: cannot be read with weights_only=True ({type(exc).__name__}); load it with "
                "trust_pickle=True only if you trust the file"
            ) from exc
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise GraspVaeError(
                f"{path}: cannot be read as a Lightning checkpoint ({type(exc2).__name__}: {exc2})"
            ) from exc2
    hparams = payload.get("hyper_parameters") if isinstance(payload, dict) else None
    if not isinstance(hparams, Mapping) or "vae" not in hparams or "state_dict" not in payload:
        keys = sorted(hparams)[:12] if isinstance(hparams, Mapping) else None
        raise GraspVaeError(
            f"{path}: not a HALO-VAE checkpoint (needs hyper_parameters['vae'] and a state_dict; "
            f"hyper_parameters keys: {keys}); HALO base checkpoints go to `halo mesh`"
        )
    model = GraspVAE(GraspVaeConfig.from_dict(hparams["vae"]))
    weights = {k[len("vae.") :]: v for k, v in payload["state_dict"].items() if k.startswith("vae.")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise GraspVaeError(f"{path}: state_dict does not match hyper_parameters['vae']: {exc}") from exc
    meta = {
        "source": str(path),
        "hyper_parameters": dict(hparams),
        "global_step": int(payload.get("global_step", -1)),
        "epoch": int(payload.get("epoch", -1)),
        "halo_base": payload.get("halo_base"),
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
