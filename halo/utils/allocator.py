"""Process-level performance settings for CPU inference.

``tune_allocator()``: glibc serves allocations above 128 KiB with mmap and
returns them to the OS on free, so every chunk of a large network evaluation
pays fresh page faults.  On virtual machines that is dramatic: evaluating the
16-part network measured 12-54k points/s by default and 280k points/s with the
thresholds raised (bench/bench_mesh.py).  This raises glibc's mmap threshold to
its 32 MiB maximum and disables trimming, so freed blocks are reused.  It is
process-wide (the process keeps its peak heap) and a no-op off glibc; set
``HALO_NO_ALLOCATOR_TUNING=1`` to skip it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_done = False


def tune_allocator() -> bool:
    """Raise glibc's mmap/trim thresholds once per process. Returns True if applied."""
    global _done
    if _done or os.environ.get("HALO_NO_ALLOCATOR_TUNING"):
        return _done
    _done = True
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
        return bool(ok)
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to do
        return False
