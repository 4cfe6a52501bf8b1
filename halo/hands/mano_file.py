"""MANO model files: the arrays of a MANO hand model, read without chumpy and written back.

``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` as downloaded are Python-2 pickles that
hold chumpy ``Ch`` objects and a scipy sparse ``J_regressor``.  They are read by
:func:`load_mano_model` through a restricted unpickler: only an explicit
allow-list of globals (numpy array reconstruction, scipy CSC/CSR matrices,
chumpy classes) can be named by the file, chumpy and scipy classes are replaced
by inert stand-ins that only keep the pickled state, and anything else
(``os.system``, ``builtins.eval``, ...) is refused with :class:`ManoModelError`
before it is looked up.  Loading a model file therefore never runs code from
it, and chumpy need not be installed.  ``.npz`` files (this module's own
format, see :func:`save_mano_model_npz`) are read with ``allow_pickle=False``.
Both writers are atomic (:mod:`halo.utils.atomic`).

MANO's 16 joints use its internal order (0 wrist, 1-3 index, 4-6 middle,
7-9 pinky, 10-12 ring, 13-15 thumb); the differentiable layer is :mod:`halo.hands.mano`.

Size: one cohesive module over 500 lines: the model container, its validation, the
restricted unpickler and the two file formats all describe one thing, a MANO model file.
"""

from __future__ import annotations

import copyreg
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from halo.core.skeleton import halo_to_mano
from halo.utils.atomic import atomic_write, atomic_write_npz
from halo.utils.errors import InputError
from halo.utils.safe_pickle import ArrayUnpickler

__all__ = [
    "MANO_NUM_JOINTS",
    "MANO_PARENTS",
    "MANO_TIP_VERTEX_IDS",
    "ManoModel",
    "ManoModelError",
    "load_mano_model",
    "regress_keypoints",
    "right_hand_model",
    "save_mano_model_npz",
    "save_mano_model_pkl",
]

#: Number of MANO joints (wrist + 15 finger joints).
MANO_NUM_JOINTS = 16
#: Number of pose parameters of the 15 finger joints (axis-angle).
_NUM_POSE = 45
#: Parent of each MANO joint (internal order); -1 for the wrist.
MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)
#: Fingertip vertex ids of the official 778-vertex MANO meshes, in the order
#: thumb, index, middle, ring, pinky (the left mesh differs at the middle tip).
MANO_TIP_VERTEX_IDS: dict[str, tuple[int, ...]] = {
    "right": (745, 317, 444, 556, 673),
    "left": (745, 317, 445, 556, 673),
}
_MANO_NUM_VERTICES = 778

_REQUIRED_KEYS = (
    "v_template",
    "f",
    "weights",
    "posedirs",
    "shapedirs",
    "J_regressor",
    "kintree_table",
    "hands_components",
    "hands_mean",
)


class ManoModelError(InputError):
    """A MANO model file or array set is unusable; the message names the file and key."""


# ----------------------------------------------------------------------------
# Model container
# ----------------------------------------------------------------------------


@dataclass(eq=False)
class ManoModel:
    """The arrays of a MANO hand model (numpy, metres).

    Attributes:
        v_template: (V,3) float64 rest-pose template vertices.
        f: (F,3) int64 triangle vertex indices.
        weights: (V,16) float64 skinning weights, rows sum to 1.
        posedirs: (V,3,135) float64 pose blend shapes, coefficients are the
            flattened ``R_j - I`` of joints 1..15 (joint-major, row-major 3x3).
        shapedirs: (V,3,S) float64 shape blend shapes (S betas).
        J_regressor: (16,V) float64 dense joint regressor (MANO internal order).
        kintree_table: (2,16) int64; row 0 = parent of each joint (root: any
            value outside 0..15, MANO stores 2**32-1), row 1 = joint ids.
        hands_components: (K,45) float64 PCA pose basis, one component per row.
        hands_mean: (45,) float64 mean pose (axis-angle, added when
            ``flat_hand_mean=False``).
        tip_vertex_ids: (5,) int64 fingertip vertex ids (thumb, index, middle,
            ring, pinky).  ``None`` means the official MANO ids, which exist
            only for 778-vertex models.
        side: ``"right"`` or ``"left"``.
    """

    v_template: np.ndarray
    f: np.ndarray
    weights: np.ndarray
    posedirs: np.ndarray
    shapedirs: np.ndarray
    J_regressor: np.ndarray
    kintree_table: np.ndarray
    hands_components: np.ndarray
    hands_mean: np.ndarray
    tip_vertex_ids: np.ndarray | None = None
    side: str = "right"
    #: Where the arrays came from (used in error messages); not saved.
    source: str = field(default="<ManoModel>", repr=False, compare=False)

    def __post_init__(self) -> None:
        checked = _validate_arrays(
            {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("side", "source")},
            side=self.side,
            source=self.source,
        )
        for key, value in checked.items():
            object.__setattr__(self, key, value)

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def parents(self) -> tuple[int, ...]:
        """Parent of each of the 16 joints, -1 for the root."""
        return _parents_from_kintree(self.kintree_table, self.source)

    def rest_joints(self) -> np.ndarray:
        """(16,3) joints regressed from the template (betas = 0), metres."""
        return self.J_regressor @ self.v_template

    def arrays(self) -> dict[str, np.ndarray]:
        """All arrays by their MANO key (plus ``tip_vertex_ids``)."""
        out = {k: getattr(self, k) for k in _REQUIRED_KEYS}
        out["tip_vertex_ids"] = self.tip_vertex_ids
        return out


def _parents_from_kintree(kintree: np.ndarray, source: str) -> tuple[int, ...]:
    parents = []
    for j in range(MANO_NUM_JOINTS):
        p = int(kintree[0, j])
        parents.append(p if 0 <= p < MANO_NUM_JOINTS else -1)
    if parents[0] != -1 or parents.count(-1) != 1:
        raise ManoModelError(
            f"{source}: key 'kintree_table' must have exactly one root at joint 0, got parents {parents}"
        )
    # Every joint must reach the root without cycles.
    for j in range(MANO_NUM_JOINTS):
        seen, k = set(), j
        while k != -1:
            if k in seen:
                raise ManoModelError(f"{source}: key 'kintree_table' has a cycle through joint {k}")
            seen.add(k)
            k = parents[k]
    return tuple(parents)


def _shape_error(source: str, key: str, actual: tuple, expected: str) -> ManoModelError:
    return ManoModelError(f"{source}: key '{key}' has shape {tuple(actual)}, expected {expected}")


def _float_array(source: str, key: str, value: Any) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        kind = type(value).__name__
        raise ManoModelError(f"{source}: key '{key}' is not a numeric array ({kind})") from exc
    if not np.all(np.isfinite(arr)):
        raise ManoModelError(f"{source}: key '{key}' contains NaN or infinite values")
    return arr


def _int_array(source: str, key: str, value: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ManoModelError(f"{source}: key '{key}' must hold integers")
    elif arr.dtype.kind not in "iu":
        raise ManoModelError(f"{source}: key '{key}' must hold integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def _validate_arrays(arrays: Mapping[str, Any], side: str, source: str) -> dict[str, np.ndarray]:
    """Check keys, shapes and values; return normalized numpy arrays.

    Raises:
        ManoModelError: naming ``source``, the key and expected vs actual shape.
    """
    if side not in ("right", "left"):
        raise ManoModelError(f"{source}: side must be 'right' or 'left', got {side!r}")
    missing = [k for k in _REQUIRED_KEYS if k not in arrays or arrays[k] is None]
    if missing:
        raise ManoModelError(
            f"{source}: missing key(s) {', '.join(repr(k) for k in missing)} "
            f"(a MANO model needs {', '.join(_REQUIRED_KEYS)})"
        )
    out: dict[str, np.ndarray] = {}
    nj = MANO_NUM_JOINTS

    v = _float_array(source, "v_template", arrays["v_template"])
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 1:
        raise _shape_error(source, "v_template", v.shape, "(V, 3)")
    nv = v.shape[0]
    out["v_template"] = v

    f = _int_array(source, "f", arrays["f"])
    if f.ndim != 2 or f.shape[1] != 3:
        raise _shape_error(source, "f", f.shape, "(F, 3)")
    if f.size and (f.min() < 0 or f.max() >= nv):
        raise ManoModelError(f"{source}: key 'f' indexes vertices outside 0..{nv - 1}")
    out["f"] = f

    expected = {
        "weights": ((nv, nj), f"({nv}, {nj})"),
        "posedirs": ((nv, 3, (nj - 1) * 9), f"({nv}, 3, {(nj - 1) * 9})"),
        "J_regressor": ((nj, nv), f"({nj}, {nv})"),
        "hands_mean": ((_NUM_POSE,), f"({_NUM_POSE},)"),
    }
    for key, (shape, text) in expected.items():
        arr = _float_array(source, key, arrays[key])
        if arr.shape != shape:
            raise _shape_error(source, key, arr.shape, text)
        out[key] = arr

    sd = _float_array(source, "shapedirs", arrays["shapedirs"])
    if sd.ndim != 3 or sd.shape[:2] != (nv, 3) or sd.shape[2] < 1:
        raise _shape_error(source, "shapedirs", sd.shape, f"({nv}, 3, S) with S >= 1")
    out["shapedirs"] = sd

    hc = _float_array(source, "hands_components", arrays["hands_components"])
    if hc.ndim != 2 or hc.shape[1] != _NUM_POSE or not 1 <= hc.shape[0] <= _NUM_POSE:
        raise _shape_error(source, "hands_components", hc.shape, f"(K, {_NUM_POSE}) with 1 <= K <= 45")
    out["hands_components"] = hc

    kt = _int_array(source, "kintree_table", arrays["kintree_table"])
    if kt.shape != (2, nj):
        raise _shape_error(source, "kintree_table", kt.shape, f"(2, {nj})")
    _parents_from_kintree(kt, source)
    out["kintree_table"] = kt

    tips = arrays.get("tip_vertex_ids")
    if tips is None:
        if nv != _MANO_NUM_VERTICES:
            raise ManoModelError(
                f"{source}: key 'tip_vertex_ids' is required for a model with {nv} vertices "
                f"(the default fingertip ids belong to the {_MANO_NUM_VERTICES}-vertex MANO mesh)"
            )
        tips = MANO_TIP_VERTEX_IDS[side]
    tips = _int_array(source, "tip_vertex_ids", tips)
    if tips.shape != (5,):
        raise _shape_error(source, "tip_vertex_ids", tips.shape, "(5,)")
    if tips.min() < 0 or tips.max() >= nv:
        raise ManoModelError(f"{source}: key 'tip_vertex_ids' {tips.tolist()} outside 0..{nv - 1}")
    out["tip_vertex_ids"] = tips
    return out


# ----------------------------------------------------------------------------
# Restricted unpickling of official MANO pickles
# ----------------------------------------------------------------------------


class _InertStub:
    """Stand-in for a pickled class: stores constructor args and state, runs nothing."""

    _stub_module = ""
    _stub_name = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _InertStub:
        obj = object.__new__(cls)
        obj.__dict__["_stub_args"] = args
        obj.__dict__["_stub_state"] = None
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.__dict__["_stub_state"] = state

    def state_dict(self) -> dict:
        state = self._stub_state
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            merged: dict = {}
            for part in state:
                if isinstance(part, dict):
                    merged.update(part)
            return merged
        return state if isinstance(state, dict) else {}


class _ChumpyStub(_InertStub):
    """Replaces any ``chumpy.*`` class; the value is recovered by :func:`_chumpy_value`."""


class _SparseStub(_InertStub):
    """Replaces scipy CSC/CSR matrix classes; densified by :func:`_sparse_to_dense`."""


_STUB_CACHE: dict[tuple[str, str], type] = {}


def _stub_class(base: type, module: str, name: str) -> type:
    key = (module, name)
    if key not in _STUB_CACHE:
        _STUB_CACHE[key] = type(f"_Stub_{name}", (base,), {"_stub_module": module, "_stub_name": name})
    return _STUB_CACHE[key]


_SPARSE_MODULES = (
    "scipy.sparse.csc",
    "scipy.sparse._csc",
    "scipy.sparse.csr",
    "scipy.sparse._csr",
    "scipy.sparse.compressed",
    "scipy.sparse._compressed",
)
_SPARSE_NAMES = ("csc_matrix", "csr_matrix", "csc_array", "csr_array")
_SAFE_BUILTINS = {"set": set, "frozenset": frozenset, "object": object, "slice": slice, "complex": complex}


class _RestrictedUnpickler(ArrayUnpickler):
    """Unpickler that resolves only allow-listed globals (see module docstring)."""

    error_type = None  # set below (ManoModelError is defined above)
    what = "MANO model file"

    def find_extra(self, module: str, name: str) -> Any:
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return _stub_class(_SparseStub, module, name)
        if module == "chumpy" or module.startswith("chumpy."):
            return _stub_class(_ChumpyStub, module, name)
        if module in ("__builtin__", "builtins") and name in _SAFE_BUILTINS:
            return _SAFE_BUILTINS[name]
        if module in ("copy_reg", "copyreg") and name == "_reconstructor":
            # Builds objects of classes that themselves passed this allow-list.
            return copyreg._reconstructor
        return None

    def refusal(self, module: str, name: str) -> Exception:
        return ManoModelError(
            f"{self._source}: refusing to load global '{module}.{name}': it is not on the MANO loader's "
            "allow-list (numpy arrays, scipy CSC/CSR matrices, chumpy arrays); the file may be corrupt "
            "or malicious, nothing from it was executed"
        )


_RestrictedUnpickler.error_type = ManoModelError


def _find_arrays(obj: Any, seen: set[int], depth: int = 0) -> np.ndarray | None:
    """First ndarray reachable from ``obj`` (depth-first over containers and stubs)."""
    if depth > 50 or id(obj) in seen:
        return None
    seen.add(id(obj))
    if isinstance(obj, np.ndarray) and obj.dtype != object:
        return obj
    if isinstance(obj, _ChumpyStub):
        try:
            return _chumpy_value(obj, seen, depth + 1)
        except ManoModelError:
            return None
    if isinstance(obj, _InertStub):
        children = [obj.state_dict(), obj._stub_args]
    elif isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple)):
        children = list(obj)
    else:
        return None
    for child in children:
        found = _find_arrays(child, seen, depth + 1)
        if found is not None:
            return found
    return None


def _chumpy_value(stub: _ChumpyStub, seen: set[int] | None = None, depth: int = 0) -> np.ndarray:
    """The array a pickled chumpy object stands for.

    Plain ``Ch`` keeps its value in ``x``; the reordering wrappers MANO files
    may contain (``Reshape``, ``transpose``, ``Select``) are applied to their
    operand ``a``; anything else falls back to the first array in its state.
    """
    seen = set() if seen is None else seen
    seen.add(id(stub))
    state = stub.state_dict()
    name = stub._stub_name

    def value_of(obj: Any) -> np.ndarray | None:
        if isinstance(obj, _ChumpyStub):
            return _chumpy_value(obj, seen, depth + 1)
        if isinstance(obj, np.ndarray):
            return obj
        return None

    if depth > 50:
        raise ManoModelError("chumpy object nested too deeply")
    x = value_of(state.get("x"))
    if x is not None:
        return np.asarray(x)
    a = value_of(state.get("a"))
    if a is not None:
        if name == "Reshape" and "newshape" in state:
            return np.reshape(a, state["newshape"])
        if name == "transpose":
            return np.transpose(a, state.get("axes"))
        if name == "Select" and "idxs" in state:
            out = np.ravel(a)[np.asarray(state["idxs"]).ravel()]
            shape = state.get("preferred_shape")
            return out.reshape(shape) if shape is not None else out
    for arg in stub._stub_args:  # Ch(array) pickled as a constructor call
        found = value_of(arg)
        if found is not None:
            return np.asarray(found)
    found = _find_arrays(state, seen, depth + 1)
    if found is None:
        raise ManoModelError(f"chumpy object {stub._stub_module}.{name} holds no array")
    return np.asarray(found)


def _sparse_to_dense(stub: _SparseStub, source: str, key: str) -> np.ndarray:
    import scipy.sparse as sp

    state = stub.state_dict()
    try:
        shape = tuple(int(s) for s in state.get("_shape", state.get("shape")))
        data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
        cls = sp.csr_matrix if stub._stub_name.startswith("csr") else sp.csc_matrix
        return np.asarray(cls((data, indices, indptr), shape=shape).toarray(), dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise ManoModelError(f"{source}: key '{key}' is an unreadable sparse matrix ({exc})") from exc


def _to_array(value: Any, source: str, key: str) -> Any:
    if isinstance(value, _ChumpyStub):
        try:
            return _chumpy_value(value)
        except ManoModelError as exc:
            raise ManoModelError(f"{source}: key '{key}': {exc}") from exc
    if isinstance(value, _SparseStub):
        return _sparse_to_dense(value, source, key)
    return value


def _load_pickle(path: Path) -> dict:
    source = str(path)
    try:
        with path.open("rb") as fh:
            obj = _RestrictedUnpickler(fh, source).load()
    except ManoModelError:
        raise
    except Exception as exc:  # any other unpickling failure means "not a MANO pickle"
        raise ManoModelError(
            f"{source}: not a readable MANO model file (expected a MANO .pkl or .npz): "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise ManoModelError(f"{source}: a MANO pickle must hold a dict, found {type(obj).__name__}")
    return obj


def _load_npz(path: Path) -> dict:
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        raise ManoModelError(
            f"{source}: npz holds pickled objects (e.g. a sparse J_regressor); store dense arrays ({exc})"
        ) from exc
    except (OSError, zipfile.BadZipFile) as exc:
        raise ManoModelError(f"{source}: not a readable .npz file: {exc}") from exc


def load_mano_model(path: str | Path, side: str | None = None) -> ManoModel:
    """Read a MANO model from an official ``.pkl`` or a ``.npz`` file.

    Args:
        path: ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` (Python-2 pickle with
            chumpy objects, read without chumpy and without executing code) or
            an ``.npz`` written by :func:`save_mano_model_npz`.
        side: ``"right"`` / ``"left"``; default: the npz's ``side`` entry, else
            ``"left"`` when the file name contains "left", else ``"right"``.

    Returns:
        The validated :class:`ManoModel` (dense ``J_regressor``).

    Raises:
        ManoModelError: missing file, not a pickle/npz, refused pickle global,
            missing key or wrong shape (the message names file and key).
    """
    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise ManoModelError(f"{source}: MANO model file not found")
    with path.open("rb") as fh:
        head = fh.read(4)
    raw = _load_npz(path) if head.startswith(b"PK") and zipfile.is_zipfile(path) else _load_pickle(path)

    arrays = {k: _to_array(v, source, k) for k, v in raw.items() if k in (*_REQUIRED_KEYS, "tip_vertex_ids")}
    if side is None:
        stored = raw.get("side")
        if stored is not None and np.asarray(stored).shape == ():
            side = str(np.asarray(stored))
        else:
            side = "left" if "left" in path.name.lower() else "right"
    checked = _validate_arrays(arrays, side=side, source=source)
    return ManoModel(**checked, side=side, source=source)


def right_hand_model(mano_model: ManoModel | str | Path) -> ManoModel:
    """The right-hand model given as a :class:`ManoModel` or a ``.pkl`` / ``.npz`` path.

    Readers of hand data (GRAB, YouTube3D) mirror left hands into right hands, so they
    need the right-hand model.  Raises :class:`ManoModelError` naming the file for a
    missing or unreadable file, a value of another type, or a left-hand model.
    """
    if isinstance(mano_model, (str, Path)):
        mano_model = load_mano_model(mano_model)  # side from the file (npz entry or name)
    if not isinstance(mano_model, ManoModel):
        raise ManoModelError(f"mano_model must be a ManoModel, str or Path, got {type(mano_model).__name__}")
    if mano_model.side != "right":
        raise ManoModelError(
            f"{mano_model.source}: a {mano_model.side}-hand MANO model was given; pass the right-hand "
            "model (MANO_RIGHT.pkl): left hands are mirrored into right hands"
        )
    return mano_model


def regress_keypoints(model: ManoModel, vertices: np.ndarray) -> np.ndarray:
    """21 keypoints (public order) of posed MANO-topology vertices (..., V, 3), same unit.

    The 16 joints come from ``model.J_regressor`` applied to the posed vertices
    (what users of vertex-only data such as YouTube3D do; for a posed mesh it
    differs slightly from :class:`ManoLayer`'s kinematic joints), the 5 tips
    are the model's fingertip vertices.
    """
    v = np.asarray(vertices, dtype=np.float64)
    if v.ndim < 2 or v.shape[-2:] != (model.num_vertices, 3):
        raise ValueError(
            f"regress_keypoints: vertices have shape {v.shape}, expected (..., {model.num_vertices}, 3) "
            f"for the MANO model {model.source}"
        )
    joints = np.einsum("jv,...vc->...jc", model.J_regressor, v)
    tips = v[..., model.tip_vertex_ids, :]
    return halo_to_mano(np.concatenate([joints, tips], axis=-2), joint_axis=-2)


def save_mano_model_npz(model: ManoModel, path: str | Path) -> Path:
    """Write ``model`` as an uncompressed ``.npz`` (dense arrays + ``side``), readable without pickle."""
    arrays = {k: np.asarray(v) for k, v in model.arrays().items()}
    arrays["side"] = np.asarray(model.side)
    return atomic_write_npz(path, arrays)


def save_mano_model_pkl(model: ManoModel, path: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``model`` in the layout of the official MANO pickle.

    Same keys as ``MANO_RIGHT.pkl`` (``J_regressor`` as scipy CSC, ``J``,
    ``bs_style``, ``bs_type``; plain arrays instead of chumpy objects) plus
    ``tip_vertex_ids``; protocol 2, so :func:`load_mano_model` and
    MANO-pkl readers of other packages read it.
    """
    import scipy.sparse as sp

    d: dict[str, Any] = {k: np.asarray(v) for k, v in model.arrays().items()}
    d["J_regressor"] = sp.csc_matrix(model.J_regressor)
    d["f"] = model.f.astype(np.uint32)
    d["kintree_table"] = model.kintree_table.astype(np.int64)
    d["J"] = model.rest_joints()
    d["bs_style"] = "lbs"
    d["bs_type"] = "lrotmin"
    if extra:
        d.update(extra)
    return atomic_write(path, lambda fh: pickle.dump(d, fh, protocol=2))
