"""Checkpoints: the original release's format and this project's own.

Original (``model_best.pt`` of korrawe/halo): a torch pickle dict with
``model`` (state dict with ``decoder.lin{part}_{layer}``, ``decoder.global_proj{part}``,
``decoder.bone_encoder.linear{1,2}``), ``optimizer``, ``epoch_it``, ``it``,
``loss_val_best``; saved with CUDA tensors and a numpy scalar.  It loads with
``weights_only=True`` plus exactly the numpy globals a pickled numpy scalar needs
(:data:`NUMPY_SCALAR_GLOBALS`, allowed only for the duration of the load).

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

Safety: every reader here goes through :func:`read_checkpoint`, which never unpickles code
unless the caller passes ``trust_pickle=True`` (CLI ``--trust-checkpoint``, train.py
``trust_checkpoint=true``).  A file that needs more than tensors, plain containers and numpy
scalars is refused with :class:`UntrustedCheckpointError` naming the global it asked for.

The key contract between these readers and the Lightning modules that write the files
(``LIGHTNING_*`` constants below) is defined here once; ``lightning_modules/`` imports it and
tests check both sides against it.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from halo.core.model import HaloModel, NetworkConfig
from halo.utils.errors import InputError

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


#: The checkpoint key contract with ``lightning_modules/`` (they import these names).
#: HaloBaseModule keeps its HaloModel as attribute ``model`` and its NetworkConfig fields in hparams ``net``.
LIGHTNING_NETWORK_PREFIX = "model."
LIGHTNING_NETWORK_HPARAM = "net"
#: HaloVaeModule keeps its GraspVAE as attribute ``vae``, the GraspVaeConfig fields in hparams ``vae``,
#: the frozen HALO base's path in hparams ``halo_checkpoint`` and its fingerprint under ``halo_base``.
LIGHTNING_VAE_PREFIX = "vae."
LIGHTNING_VAE_HPARAM = "vae"
LIGHTNING_VAE_HALO_HPARAM = "halo_checkpoint"
LIGHTNING_HALO_BASE_RECORD = "halo_base"
#: Lightning's own key for the datamodule's hparams, and the ones ``halo eval`` reads from it.
LIGHTNING_DATAMODULE_HPARAMS = "datamodule_hyper_parameters"
DM_ROOT, DM_VAL_SPLIT, DM_TEST_SPLIT = "root", "val_split", "test_split"
DM_MAX_VAL_SAMPLES, DM_IOU_POINTS = "max_val_samples", "iou_points_per_sample"
DATAMODULE_HPARAM_KEYS = (DM_ROOT, DM_VAL_SPLIT, DM_TEST_SPLIT, DM_MAX_VAL_SAMPLES, DM_IOU_POINTS)

#: How a user opts in to full unpickling, named in every refusal.
TRUST_OPT_IN = (
    "trust_pickle=True in Python, --trust-checkpoint on the halo CLI, trust_checkpoint=true for train.py"
)


class CheckpointError(InputError):
    """A checkpoint file that cannot be read as a HALO base model (names file and problem)."""


class UntrustedCheckpointError(CheckpointError):
    """A checkpoint that would need full unpickling (which can run code) and was not trusted."""


def _numpy_scalar_globals() -> list:
    """What ``pickle`` of a numpy scalar asks for: the scalar reconstructor, ``numpy.dtype`` and its
    numeric dtype classes (numpy 1.x writes ``numpy.core``, 2.x ``numpy._core``)."""
    import numpy as np

    scalar = np.float64(0.0).__reduce__()[0]
    allowed: list = [(scalar, f"{mod}.multiarray.scalar") for mod in ("numpy.core", "numpy._core")]
    allowed.append(np.dtype)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    ):
        allowed.append(type(np.dtype(name)))
    return allowed


NUMPY_SCALAR_GLOBALS = _numpy_scalar_globals()

_REFUSED = (
    re.compile(r"unsupported GLOBAL (\S+) whose"),
    re.compile(r"GLOBAL (\S+) was not an allowed global"),
    re.compile(r"but got <class '([^']+)'>"),
)


def _refused_global(message: str, path: Path) -> str | None:
    """The global the refused file asked for; None when it names none (then it is damaged, not hostile)."""
    for pattern in _REFUSED:
        if m := pattern.search(message):
            return m[1]
    # torch names only the opcode it stopped at (e.g. a plain pickle's FRAME): list the file's globals.
    return _first_unusual_global(path)


def _first_unusual_global(path: Path) -> str | None:
    """The first global a pickle (plain, or ``data.pkl`` of torch's zip format) names outside torch/numpy."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(member)
        else:
            data = path.read_bytes()
        strings: list[str] = []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                name = f"{strings[-2]}.{strings[-1]}"
            else:
                if isinstance(arg, str):
                    strings.append(arg)
                continue
            if not name.startswith(("torch.", "collections.OrderedDict", "numpy.")):
                return name
    except Exception:  # noqa: BLE001 - only improves the message; the refusal stands either way
        return None
    return None


def read_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> object:
    """``torch.load`` of ``path`` on CPU that runs no code from the file unless ``trust_pickle``.

    Untrusted (the default): ``weights_only=True`` with :data:`NUMPY_SCALAR_GLOBALS` allowed for
    this load only.  Raises :class:`UntrustedCheckpointError` (one line: file, refused global,
    opt-in) when the file asks for anything else, :class:`CheckpointError` when the file is
    missing, truncated or not a torch checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        if trust_pickle:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(NUMPY_SCALAR_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = None if trust_pickle else _refused_global(str(exc), path)
        if refused:
            raise UntrustedCheckpointError(
                f"{path}: refused to unpickle {refused} (full unpickling can run code); "
                f"only if you trust this file: {TRUST_OPT_IN}"
            ) from None
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint (truncated or corrupt? {_first_line(exc)})"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated zip, random bytes, ... read the same to the user
        raise CheckpointError(
            f"{path}: cannot be read as a torch checkpoint (truncated or corrupt? {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    if "WeightsUnpickler error:" in text:  # skip torch's boilerplate about weights_only defaults
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:200]}" if lines else type(exc).__name__


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


def load_original_checkpoint(path: str | Path, *, trust_pickle: bool = False) -> tuple[HaloModel, dict]:
    """Load the released original checkpoint. Returns the model and its metadata (epoch, it, best val IoU)."""
    path = Path(path)
    return _model_from_original(read_checkpoint(path, trust_pickle=trust_pickle), path)


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
    try:
        model = HaloModel(NetworkConfig.from_dict(payload["network_config"]))
    except (TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: network_config is not a valid network config: {exc}") from exc
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise CheckpointError(
            f"{path}: state dict does not match its network_config: {' '.join(str(exc).split())[:400]}"
        ) from exc
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


def _model_from_lightning(
    payload: dict, path: Path, prefix: str = LIGHTNING_NETWORK_PREFIX
) -> tuple[HaloModel, dict]:
    hparams = payload.get("hyper_parameters")
    if not isinstance(hparams, Mapping) or LIGHTNING_NETWORK_HPARAM not in hparams:
        have = sorted(hparams)[:12] if isinstance(hparams, Mapping) else None
        raise CheckpointError(
            f"{path}: Lightning checkpoint without hyper_parameters['net'] (hyper_parameters keys: {have}); "
            "not a HaloBaseModule checkpoint?"
        )
    net = _plain(hparams[LIGHTNING_NETWORK_HPARAM]) or {}
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
    dm = payload.get(LIGHTNING_DATAMODULE_HPARAMS)
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


def _finite(loaded: tuple[HaloModel, dict], path: Path) -> tuple[HaloModel, dict]:
    """Refuse NaN/inf weights (a damaged file: torch does not check the zip's CRCs); they would only
    show up much later as NaN occupancy."""
    for name, tensor in loaded[0].state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{path}: weight {name!r} contains NaN or inf (damaged file?)")
    return loaded


def load_model(path: str | Path, *, trust_pickle: bool = False) -> tuple[HaloModel, dict]:
    """Load any supported HALO base checkpoint: own format, a Lightning ``.ckpt``, or the original release.

    Read by :func:`read_checkpoint`: no code from the file runs unless ``trust_pickle`` is True
    (only for files you trust).  This project's format, HaloBaseModule ``.ckpt`` files (plain
    hparams) and the original release (numpy scalar) all load without it; anything else raises
    :class:`UntrustedCheckpointError` naming the file, the global it asked for and the opt-in.

    Returns the model (eval mode, CPU, float32) and a metadata dict; for Lightning
    checkpoints it holds ``source_format="lightning"``, ``epoch``, ``global_step``,
    ``hyper_parameters`` and ``datamodule_hyper_parameters`` (None when absent).
    """
    path = Path(path)
    payload = read_checkpoint(path, trust_pickle=trust_pickle)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        return _finite(_model_from_payload(payload, path), path)
    if is_lightning_checkpoint(payload):
        return _finite(_model_from_lightning(payload, path), path)
    if isinstance(payload, dict) and "model" in payload:
        return _finite(_model_from_original(payload, path), path)
    keys = sorted(map(str, payload))[:8] if isinstance(payload, dict) else type(payload).__name__
    raise CheckpointError(f"{path}: unrecognised checkpoint layout (top-level keys: {keys})")


def convert_original_checkpoint(src: str | Path, dst: str | Path, *, trust_pickle: bool = False) -> Path:
    """One-off converter: original ``model_best.pt`` -> this project's format."""
    model, meta = load_original_checkpoint(src, trust_pickle=trust_pickle)
    return save_checkpoint(model, dst, metadata=meta)
