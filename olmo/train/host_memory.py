"""Host-memory allocation for CPU training: keep freed blocks in the heap instead of unmapping them.

A training step allocates and frees the same large tensors every step (the logits above all: batch x seq x
vocab floats, 64 MiB at batch 16, seq 256, vocab 4096). glibc's malloc serves blocks above its mmap threshold
(adaptive, at most 32 MiB) with a fresh ``mmap`` and unmaps them on ``free``, so every step page-faults those
megabytes in again and zero-fills them: on a 2-core VM that was 20-25 % of a tiny model's CPU step (see
docs/benchmarks.md). Raising the mmap and trim thresholds makes those blocks come from, and stay in, the heap,
which a long-running training process wants anyway. Nothing changes numerically.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap; the heap never shrinks below 1 GiB of free top


@functools.cache
def keep_freed_host_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
