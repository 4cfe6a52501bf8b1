"""Keyed caches: one hash of the settings, one folder name, one inter-process lock.

A cache entry is the folder ``<cache_dir>/<name>-<key>`` (or any path the caller keys),
where ``key = cache_key(settings)`` hashes everything that determines its content.  It is
built at most once at a time: :func:`build_once` takes the lock ``<entry>.lock``
(:mod:`filelock`, so it works on every platform) and checks again whether another process
finished the entry while this one waited.  Builders write their files atomically, so where
a lock does not reach across machines (some network file systems) a second builder only
repeats work, never corrupts it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock

__all__ = ["KEY_LENGTH", "build_once", "cache_key", "cache_lock", "keyed_dir"]

#: Hex digits of a cache key (48 bits: collisions are negligible for a user's few configurations).
KEY_LENGTH = 12


def cache_key(settings: Any) -> str:
    """Short hash of JSON-able ``settings``: sha256 of ``json.dumps(settings, sort_keys=True)``.

    Key order does not matter; non-JSON values (paths) go through ``str``.
    """
    blob = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:KEY_LENGTH]


def keyed_dir(cache_dir: str | Path, name: str, key: str) -> Path:
    """The entry folder ``<cache_dir>/<name>-<key>``."""
    return Path(cache_dir) / f"{name}-{key}"


def cache_lock(entry: str | Path, timeout: float = -1) -> FileLock:
    """The inter-process lock of a cache entry: the file ``<entry>.lock`` next to it."""
    entry = Path(entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(entry.with_name(entry.name + ".lock")), timeout=timeout)


def build_once(entry: str | Path, is_built: Callable[[], bool], build: Callable[[], Any]) -> bool:
    """Build a cache entry unless it is built; concurrent callers build it once.

    Returns True when this call built it, False when it was (or became) ready without it.
    """
    if is_built():
        return False
    with cache_lock(entry):
        if is_built():  # another process built it while this one waited
            return False
        build()
    return True
