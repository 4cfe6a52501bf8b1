"""Process-level performance settings for CPU inference.

``tune_allocator()``: glibc serves allocations above 128 KiB with mmap and
returns them to the OS on free, so every chunk of a large network evaluation
pays fresh page faults.  On virtual machines that is dramatic: evaluating the
16-part network measured 12-54k points/s by default and 280k points/s with the
thresholds raised (bench/bench_mesh.py).  This raises glibc's mmap threshold to
its 32 MiB maximum and disables trimming, so freed blocks are reused.  It is
process-wide (the process keeps its peak heap) and a no-op off glibc; set
``HALO_NO_ALLOCATOR_TUNING=1`` to skip it.

``flush_denormals()``: a context in which the CPU flushes denormal floats (|x| < 1.2e-38 in
float32) to zero.  Backward passes through HALO produce them in bulk: the softplus/sigmoid
derivatives of points far outside the hand underflow to ~1e-40, and every matrix product of the
network's backward then runs on x86's slow denormal path.  Measured on test-time grasp refinement
(20 grasps, recipe base, 2 threads): the backward matrix products took 366 us per call with
denormals and 25 us without, the whole refinement 3.8 -> 2.6 s for 20 steps.  Values change only
by the flushed amounts (below 1.2e-38).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
from collections.abc import Iterator

import torch

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_done = False
_flush_depth = 0  # nesting depth of flush_denormals(); torch offers no getter for the flag


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


@contextlib.contextmanager
def flush_denormals() -> Iterator[bool]:
    """Flush denormal floats to zero inside the block (module docstring); yields whether the CPU
    supports it (x86 with SSE3, ARM).  Nested blocks keep it on until the outermost one exits, which
    turns it off again (torch's default).  CUDA kernels are not affected."""
    global _flush_depth
    supported = torch.set_flush_denormal(True)
    _flush_depth += 1
    try:
        yield supported
    finally:
        _flush_depth -= 1
        if _flush_depth == 0 and supported:
            torch.set_flush_denormal(False)
