"""Allow-listed unpickling: numpy arrays and plain containers only, never arbitrary code.

Pickled model and keypoint files are common in this field (MANO's .pkl, the
original demo's keypoint pickle), and ``pickle.load`` on them would run any
callable the file names.  :class:`ArrayUnpickler` resolves only numpy's array
reconstruction functions (asked from numpy itself, so numpy 1.x and 2.x both
work) and the latin-1 ``_codecs.encode`` that Python-3 protocol-2 pickles use
for bytes; subclasses extend the allow-list in ``find_extra``.  Anything else
raises ``error_type`` naming the file and the refused ``module.name``.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    # Python-3 protocol-2 pickles spell bytes as _codecs.encode(str, 'latin1');
    # only that benign use is admitted.
    if encoding.lower().replace("_", "-") not in ("latin1", "latin-1", "iso-8859-1", "l1"):
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return text.encode("latin1", errors)


def _numpy_reconstructors() -> dict[str, Any]:
    arr = np.zeros(1)
    return {
        "_reconstruct": arr.__reduce__()[0],
        "scalar": np.float64(0.0).__reduce__()[0],
        "_frombuffer": arr.__reduce_ex__(5)[0],
    }


NUMPY_FUNCS = _numpy_reconstructors()
NUMPY_MODULES = (
    "numpy.core.multiarray",
    "numpy._core.multiarray",
    "numpy.core.numeric",
    "numpy._core.numeric",
)


class ArrayUnpickler(pickle.Unpickler):
    """Unpickler that admits numpy arrays (and what ``find_extra`` adds) and nothing else."""

    error_type: type[Exception] = pickle.UnpicklingError
    what = "file"

    def __init__(self, file: IO[bytes], source: str) -> None:
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_extra(self, module: str, name: str) -> Any | None:
        """Subclass hook: return the object for an extra allowed global, or None."""
        return None

    def refusal(self, module: str, name: str) -> Exception:
        return self.error_type(
            f"{self._source}: refusing to unpickle {module}.{name}: only numpy arrays and plain containers "
            f"are allowed in a {self.what}; nothing from it was executed"
        )

    def find_class(self, module: str, name: str) -> Any:
        if module in NUMPY_MODULES and name in NUMPY_FUNCS:
            return NUMPY_FUNCS[name]
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module == "_codecs" and name == "encode":
            return _latin1_encode
        extra = self.find_extra(module, name)
        if extra is not None:
            return extra
        raise self.refusal(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise self.error_type(f"{self._source}: persistent ids are not allowed in a {self.what}")


def load_array_file(path: str | Path) -> dict[str, Any]:
    """A dict of arrays from an ``.npz`` file or a pickled dict (``.pkl``; arrays only, never code).

    Used for per-sample parameter files (e.g. MANO fits with keys ``pose``,
    ``shape``, ``rot``).  Errors name the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if suffix in (".pkl", ".pickle"):
            with open(path, "rb") as f:
                obj = ArrayUnpickler(f, str(path)).load()
        else:
            raise ValueError(f"{path}: unsupported parameter file type {suffix!r} (use .npz or .pkl)")
    except (OSError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable or truncated ({exc})") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a pickled dict of arrays, got {type(obj).__name__}")
    return {str(k): v for k, v in obj.items()}


def load_npz_with_objects(path: str | Path) -> dict[str, Any]:
    """Every array of an ``.npz``, unpickling object arrays with :class:`ArrayUnpickler`.

    GRAB stores each key as a 0-d object array holding a dict of arrays;
    ``np.load(allow_pickle=True)`` would run whatever callable such a file names.
    Here object arrays go through the allow-list (numpy arrays and plain
    containers), plain arrays are read without pickle, and 0-d object arrays are
    returned as their item.  Raises ``pickle.UnpicklingError`` (refused content),
    ``zipfile.BadZipFile`` or ``ValueError`` (malformed members).
    """
    path = Path(path)
    out: dict[str, Any] = {}
    with zipfile.ZipFile(path) as zf:
        for member in zf.namelist():
            if not member.endswith(".npy"):
                continue
            key = member[: -len(".npy")]
            with zf.open(member) as fp:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
                else:
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
                if dtype.hasobject:
                    value = ArrayUnpickler(fp, f"{path}[{key}]").load()
                    if isinstance(value, np.ndarray) and value.ndim == 0:
                        value = value.item()
                else:
                    count = int(np.prod(shape)) if shape else 1
                    data = fp.read(count * dtype.itemsize)
                    if len(data) != count * dtype.itemsize:
                        raise ValueError(f"{path}: member {key} is truncated")
                    value = (
                        np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()
                    )
            out[key] = value
    return out
