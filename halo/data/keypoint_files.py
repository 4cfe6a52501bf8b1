"""Reading keypoint files: .npy, .npz, .json, .pkl -> (T,21,3) float32 metres.

Accepted layouts: one hand (21,3) or a sequence (T,21,3); in .npz/.json/.pkl
either the bare array / list or a mapping with key ``keypoints`` (optionally
``is_left``).  The original demo's ``kps_seq.pkl`` (a list of (21,3) arrays)
loads as is.  Pickles are read with a restricted unpickler that only admits
numpy array reconstruction, so a keypoint file can never execute code.
"""

from __future__ import annotations

import json
import pickle
import tokenize
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from halo.utils.errors import InputError
from halo.utils.safe_pickle import ArrayUnpickler

_UNIT_SCALE = {"m": 1.0, "cm": 0.01, "mm": 0.001}


class KeypointFileError(InputError):
    """A keypoint file that cannot be used; the message names the file and the problem."""


@dataclass
class KeypointSequence:
    keypoints: np.ndarray  # (T,21,3) float32 metres
    is_left: np.ndarray  # (T,) bool
    source: Path


class _KeypointUnpickler(ArrayUnpickler):
    error_type = KeypointFileError
    what = "keypoint pickle"


def _pick(obj, path: Path):
    if isinstance(obj, dict):
        if "keypoints" not in obj:
            raise KeypointFileError(f"{path}: no 'keypoints' key (found keys: {sorted(map(str, obj))[:10]})")
        return obj["keypoints"], obj.get("is_left")
    return obj, None


def _read(path: Path):
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if "keypoints" in keys:
                return data["keypoints"], data["is_left"] if "is_left" in keys else None
            if len(keys) == 1:
                return data[keys[0]], None
            raise KeypointFileError(f"{path}: no 'keypoints' array (found keys: {keys})")
    if suffix == ".json":
        with open(path, encoding="utf-8") as f:
            return _pick(json.load(f), path)
    if suffix in (".pkl", ".pickle"):
        with open(path, "rb") as f:
            try:
                obj = _KeypointUnpickler(f, str(path)).load()
            except KeypointFileError:
                raise
            except Exception as e:  # noqa: BLE001 - a damaged pickle stream fails in many ways (TypeError, ...)
                raise KeypointFileError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from e
            return _pick(obj, path)
    raise KeypointFileError(
        f"{path}: unsupported keypoint file type {suffix!r} (use .npy, .npz, .json or .pkl)"
    )


def load_keypoints(path: str | Path, units: str = "m") -> KeypointSequence:
    """Load and check a keypoint file (see module doc).  ``units``: m, cm or mm."""
    path = Path(path)
    if units not in _UNIT_SCALE:
        raise KeypointFileError(f"units must be one of {sorted(_UNIT_SCALE)}, got {units!r}")
    if not path.is_file():
        raise KeypointFileError(f"{path}: no such file")
    try:
        raw, is_left = _read(path)
    except KeypointFileError:
        raise
    except (
        ValueError,
        OSError,
        EOFError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        json.JSONDecodeError,
        SyntaxError,  # numpy parses a damaged .npy header as Python literals
        tokenize.TokenError,
    ) as e:
        raise KeypointFileError(f"{path}: cannot be read ({type(e).__name__}: {e})") from e
    try:
        kp = np.asarray(raw if not isinstance(raw, list | tuple) else np.stack(raw))
        if kp.dtype.kind not in "biuf":  # complex, strings, objects: no silent cast to coordinates
            raise TypeError(f"dtype {kp.dtype} is not real-valued")
        kp = kp.astype(np.float64)
    except (ValueError, TypeError) as e:
        raise KeypointFileError(f"{path}: keypoints are not a numeric array ({e})") from e
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1:] != (21, 3):
        raise KeypointFileError(f"{path}: keypoints must have shape (21, 3) or (T, 21, 3), got {kp.shape}")
    if kp.shape[0] == 0:
        raise KeypointFileError(f"{path}: the file holds no hands (shape {kp.shape})")
    with np.errstate(over="ignore"):  # values beyond float32 (the returned dtype) count as infinite
        bad = ~np.isfinite(kp.astype(np.float32)).all(axis=(1, 2))
    if bad.any():
        raise KeypointFileError(f"{path}: hand {int(np.argmax(bad))} contains NaN or infinite values")
    kp = kp * _UNIT_SCALE[units]
    palm = np.linalg.norm(kp[:, 9] - kp[:, 0], axis=-1)  # wrist -> middle MCP, ~9 cm for adults
    med = float(np.median(palm))
    if med > 0.5:
        guess = "millimetres" if med > 20 else "centimetres"
        raise KeypointFileError(
            f"{path}: keypoints look like {guess} (median wrist-middle MCP distance {med:.3g}); "
            "HALO works in metres: pass --units cm / --units mm or convert the file"
        )
    if med < 0.01:
        raise KeypointFileError(
            f"{path}: hands are implausibly small (median wrist-middle MCP distance {med * 1000:.3g} mm); "
            "expected metres"
        )
    if is_left is None:
        left = np.zeros(len(kp), dtype=bool)
    else:
        left = np.broadcast_to(np.asarray(is_left, dtype=bool).reshape(-1), (len(kp),)).copy()
    return KeypointSequence(kp.astype(np.float32), left, path)
