"""Files that appear whole or not at all: write to a hidden temporary name in the target's folder,
then ``os.replace`` it into place (atomic on POSIX and Windows within one file system).

A writer that raises, or a process that is killed, leaves at most a hidden ``.<name>.tmp<pid>``
file that no reader globbing ``*.npz`` / ``*.json`` ever sees; the target keeps its old content.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npy",
    "atomic_write_npz",
    "atomic_write_text",
    "temporary_path",
]


def temporary_path(path: str | Path) -> Path:
    """The hidden temporary name used for ``path``: same folder, without the final suffix showing."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it is renamed to ``path``, on error removed.

    For writers that want a file name (``trimesh.export``, ``torch.save``, ``np.save``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | Path, write: Callable[[io.BufferedWriter], Any]) -> Path:
    """Call ``write(binary_file)`` on a temporary file, then rename it to ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        write(handle)
    return Path(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, **kwargs) -> Path:
    """``json.dumps(obj)`` plus a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, **kwargs) + "\n")


def atomic_write_npz(path: str | Path, arrays: Mapping[str, np.ndarray], compressed: bool = False) -> Path:
    """``np.savez`` (or ``savez_compressed``) of ``arrays``, written atomically."""
    save = np.savez_compressed if compressed else np.savez
    return atomic_write(path, lambda f: save(f, **arrays))


def atomic_write_npy(path: str | Path, array: np.ndarray) -> Path:
    """``np.save`` of one array (no pickled objects), written atomically."""
    return atomic_write(path, lambda f: np.save(f, np.asarray(array), allow_pickle=False))
