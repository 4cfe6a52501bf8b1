"""Checkpoints: the original release's format and this project's own.

Original (``model_best.pt`` of korrawe/halo): a torch pickle dict with
``model`` (state dict with ``decoder.lin{part}_{layer}``, ``decoder.global_proj{part}``,
``decoder.bone_encoder.linear{1,2}``), ``optimizer``, ``epoch_it``, ``it``,
``loss_val_best``; saved with CUDA tensors and a numpy scalar, so it needs
``weights_only=False`` and ``map_location``.  Only load files you trust.

Own format (``halo-base``, version 1): a dict with ``format``,
``format_version``, ``network_config`` (plain dict), ``state_dict`` (the
:class:`~halo.core.model.HaloModel` state dict) and ``metadata``; it loads with
``weights_only=True``.

Lightning checkpoints of ``lightning_modules.halo_base.HaloBaseModule`` (``*.ckpt``
from training: ``last.ckpt``, the best by ``val/iou``): a torch pickle dict with
``state_dict`` (the HaloModel's keys prefixed ``model.``), ``hyper_parameters``
(``net``: the :class:`~halo.core.model.NetworkConfig` fields), ``epoch``,
``global_step`` and, when a datamodule recorded them, ``datamodule_hyper_parameters``.
They are read here without importing Lightning; the module's hparams are plain
values, so they load with ``weights_only=True`` too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from halo.core.model import HaloModel, NetworkConfig

FORMAT = "halo-base"
FORMAT_VERSION = 1

_LIN = re.compile(r"^decoder\.lin(\d+)_(\d+)\.(weight|bias)$")
_GLOBAL = re.compile(r"^decoder\.global_proj(\d+)\.(weight|bias)$")
_BONE = {
    "decoder.bone_encoder.linear1.weight": "network.bone_encoder.0.weight",
    "decoder.bone_encoder.linear1.bias": "network.bone_encoder.0.bias",
    "decoder.bone_encoder.linear2.weight": "network.bone_encoder.2.weight",
    "decoder.bone_encoder.linear2.bias": "network.bone_encoder.2.bias",
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read as a HALO base model (names file and problem)."""


def convert_original_state_dict(state: dict[str, torch.Tensor], source: str = "<state dict>") -> dict:
    """Map the original decoder's per-part tensors onto :class:`HaloModel`'s stacked tensors."""
    parts: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    glob: dict[int, dict[str, torch.Tensor]] = {}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        value = value.detach().to("cpu", torch.float32)
        if m := _LIN.match(key):
            parts.setdefault(int(m[1]), {}).setdefault(int(m[2]), {})[m[3]] = value
        elif m := _GLOBAL.match(key):
            glob.setdefault(int(m[1]), {})[m[2]] = value
        elif key in _BONE:
            out[_BONE[key]] = value
        else:
            raise CheckpointError(f"{source}: unexpected key {key!r} for the original HALO base decoder")
    missing = [k for k in _BONE if _BONE[k] not in out]
    if not parts or not glob or missing:
        raise CheckpointError(
            f"{source}: not an original HALO base checkpoint (missing part MLPs, global projections "
            f"or bone encoder {missing})"
        )
    num_parts = len(parts)
    if sorted(parts) != list(range(num_parts)) or sorted(glob) != list(range(num_parts)):
        raise CheckpointError(f"{source}: part indices are not 0..{num_parts - 1}")
    num_layers = len(parts[0])
    for k in range(num_parts):
        if sorted(parts[k]) != list(range(num_layers)):
            raise CheckpointError(f"{source}: part {k} has layers {sorted(parts[k])}, expected {num_layers}")
        for layer in range(num_layers):
            out[f"network.weights.{layer}"] = torch.stack(
                [parts[p][layer]["weight"] for p in range(num_parts)]
            )
            out[f"network.biases.{layer}"] = torch.stack([parts[p][layer]["bias"] for p in range(num_parts)])
    out["network.global_proj_weight"] = torch.stack([glob[p]["weight"] for p in range(num_parts)])
    out["network.global_proj_bias"] = torch.stack([glob[p]["bias"] for p in range(num_parts)])
    return out


def _config_from_original(converted: dict[str, torch.Tensor]) -> NetworkConfig:
    num_parts = converted["network.global_proj_weight"].shape[0]
    n_layers = sum(1 for k in converted if k.startswith("network.weights."))
    hidden = tuple(int(converted[f"network.weights.{i}"].shape[1]) for i in range(n_layers - 1))
    return NetworkConfig(
        num_parts=num_parts,
        hidden_dims=hidden,
        bone_latent_size=int(converted["network.bone_encoder.2.weight"].shape[0]),
        bone_hidden_size=int(converted["network.bone_encoder.0.weight"].shape[0]),
        global_projection_size=int(converted["network.global_proj_weight"].shape[1]),
        residual_layers=tuple(range(1, n_layers - 1)),
    )


def _torch_load(path: Path, trusted: bool):
    """``torch.load`` on CPU; untrusted loads are weights-only and return None when that is not enough."""
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is reported the same way
        if not trusted:
            return None
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint ({type(exc).__name__}: {exc})"
        ) from exc


def _model_from_original(ckpt: object, path: Path) -> tuple[HaloModel, dict]:
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path}: expected the original format (a dict with key 'model')")
    converted = convert_original_state_dict(ckpt["model"], str(path))
    model = HaloModel(_config_from_original(converted))
    model.load_state_dict(converted, strict=True)
    meta = {
        "source": str(path),
        "source_format": "original-halo",
        "epoch": int(ckpt.get("epoch_it", -1)),
        "iteration": int(ckpt.get("it", -1)),
        "best_val_iou": float(ckpt.get("loss_val_best", float("nan"))),
    }
    return model.eval(), meta


def load_original_checkpoint(path: str | Path) -> tuple[HaloModel, dict]:
    """Load the released original checkpoint. Returns the model and its metadata (epoch, it, best val IoU)."""
    path = Path(path)
    return _model_from_original(_torch_load(path, trusted=True), path)


def save_checkpoint(model: HaloModel, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``model`` in this project's format (atomic: a temp file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "network_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def _model_from_payload(payload: dict, path: Path) -> tuple[HaloModel, dict]:
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: format_version {version!r} is not supported (expected {FORMAT_VERSION})"
        )
    for key in ("network_config", "state_dict"):
        if key not in payload:
            raise CheckpointError(f"{path}: missing key {key!r}")
    model = HaloModel(NetworkConfig.from_dict(payload["network_config"]))
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state dict does not match its network_config: {exc}") from exc
    return model.eval(), dict(payload.get("metadata", {}))


def _plain(value: object) -> object:
    """Mappings/sequences (e.g. OmegaConf containers from a fully unpickled file) -> dicts/lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple) or type(value).__name__ == "ListConfig":
        return [_plain(v) for v in value]
    return value


def is_lightning_checkpoint(payload: object) -> bool:
    """True for a Lightning checkpoint dict (``state_dict`` plus Lightning's bookkeeping keys)."""
    return (
        isinstance(payload, dict)
        and "state_dict" in payload
        and (
            "pytorch-lightning_version" in payload
            or "hyper_parameters" in payload
            or "global_step" in payload
        )
    )


def _model_from_lightning(payload: dict, path: Path, prefix: str = "model.") -> tuple[HaloModel, dict]:
    hparams = payload.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or "net" not in hparams:
        have = sorted(hparams)[:12] if isinstance(hparams, Mapping) else None
        raise CheckpointError(
            f"{path}: Lightning checkpoint without hyper_parameters['net'] (hyper_parameters keys: {have}); "
            "not a HaloBaseModule checkpoint?"
        )
    net = _plain(hparams["net"]) or {}
    if not isinstance(net, dict):
        raise CheckpointError(f"{path}: hyper_parameters['net'] must be a mapping, got {type(net).__name__}")
    state = payload["state_dict"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: 'state_dict' is a {type(state).__name__}, expected a mapping")
    weights = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not weights:
        raise CheckpointError(
            f"{path}: Lightning checkpoint has no '{prefix}*' keys in its state_dict "
            f"(first keys: {sorted(state)[:6]}); not a HaloBaseModule checkpoint?"
        )
    try:
        model = HaloModel(NetworkConfig.from_dict(net))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: hyper_parameters['net'] is not a valid network config: {exc}"
        ) from exc
    try:
        model.load_state_dict({k: v.detach().to("cpu") for k, v in weights.items()}, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{path}: state_dict does not match hyper_parameters['net']: {str(exc).splitlines()[0]} "
            f"({' '.join(str(exc).split())[:300]})"
        ) from exc
    dm = payload.get("datamodule_hyper_parameters")
    meta = {
        "source": str(path),
        "source_format": "lightning",
        "epoch": int(payload.get("epoch", -1)),
        "global_step": int(payload.get("global_step", -1)),
        "lightning_version": str(payload.get("pytorch-lightning_version", "")),
        "hyper_parameters": _plain(hparams),
        "datamodule_hyper_parameters": _plain(dm) if isinstance(dm, Mapping) else None,
    }
    return model.eval(), meta


def load_model(path: str | Path, *, trust_pickle: bool = True) -> tuple[HaloModel, dict]:
    """Load any supported HALO base checkpoint: own format, a Lightning ``.ckpt``, or the original release.

    Every file is first read with ``torch.load(weights_only=True)`` (no code runs while
    unpickling).  That covers this project's format and the Lightning checkpoints of
    ``HaloBaseModule`` (plain hparams).  Only when it fails (the original release stores a
    numpy scalar; a Lightning checkpoint may hold e.g. OmegaConf objects or paths saved by
    other code) is the file fully unpickled, and only when ``trust_pickle`` is True (the
    default): full unpickling can run arbitrary code, so pass ``trust_pickle=False`` for
    files you do not trust, which then fail with a :class:`CheckpointError` instead.

    Returns the model (eval mode, CPU, float32) and a metadata dict; for Lightning
    checkpoints it holds ``source_format="lightning"``, ``epoch``, ``global_step``,
    ``hyper_parameters`` and ``datamodule_hyper_parameters`` (None when absent).
    """
    path = Path(path)
    payload = _torch_load(path, trusted=False)
    if payload is None:  # weights_only refused it: the original release stores a numpy scalar
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: not readable with weights_only=True (not a '{FORMAT}' file or a plain "
                "HaloBaseModule .ckpt); pass trust_pickle=True only for files you trust (e.g. the original release)"
            )
        payload = _torch_load(path, trusted=True)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _model_from_payload(payload, path)
    if is_lightning_checkpoint(payload):
        return _model_from_lightning(payload, path)
    if isinstance(payload, dict) and "model" in payload:
        return _model_from_original(payload, path)
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(f"{path}: unrecognised checkpoint layout (top-level keys: {keys})")


def convert_original_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """One-off converter: original ``model_best.pt`` -> this project's format."""
    model, meta = load_original_checkpoint(src)
    return save_checkpoint(model, dst, metadata=meta)
