"""Checkpoints: the original release's format and this project's own.

Original (``model_best.pt`` of korrawe/halo): a torch pickle dict with
``model`` (state dict with ``decoder.lin{part}_{layer}``, ``decoder.global_proj{part}``,
``decoder.bone_encoder.linear{1,2}``), ``optimizer``, ``epoch_it``, ``it``,
``loss_val_best``; saved with CUDA tensors and a numpy scalar, so it needs
``weights_only=False`` and ``map_location``.  Only load files you trust.

Own format (``halo-base``, version 1): a dict with ``format``,
``format_version``, ``network_config`` (plain dict), ``state_dict`` (the
:class:`~halo.occupancy.HaloModel` state dict) and ``metadata``; it loads with
``weights_only=True``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from halo.occupancy import HaloModel, NetworkConfig

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


def load_model(path: str | Path, *, trust_pickle: bool = True) -> tuple[HaloModel, dict]:
    """Load any supported HALO base checkpoint: this project's format or the original release.

    Own-format files load with ``weights_only=True``.  The original release needs
    full unpickling (it stores a numpy scalar); ``trust_pickle=False`` refuses that.
    """
    path = Path(path)
    payload = _torch_load(path, trusted=False)
    if payload is None:  # weights_only refused it: the original release stores a numpy scalar
        if not trust_pickle:
            raise CheckpointError(
                f"{path}: not a '{FORMAT}' checkpoint readable with weights_only=True; "
                "pass trust_pickle=True only for files you trust (e.g. the original release)"
            )
        payload = _torch_load(path, trusted=True)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _model_from_payload(payload, path)
    if isinstance(payload, dict) and "model" in payload:
        return _model_from_original(payload, path)
    keys = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(f"{path}: unrecognised checkpoint layout (top-level keys: {keys})")


def convert_original_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """One-off converter: original ``model_best.pt`` -> this project's format."""
    model, meta = load_original_checkpoint(src)
    return save_checkpoint(model, dst, metadata=meta)
