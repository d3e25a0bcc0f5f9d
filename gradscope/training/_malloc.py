"""Keep glibc from returning freed memory to the system after every training step.

A training step allocates and frees arrays of 0.5-2 MB (activations, gradients, optimizer
state). glibc serves blocks above 128 kB with fresh ``mmap`` calls and trims freed memory,
so every step page-faults its working set in again: on an 8 x 512 MLP that doubled the
step time (see docs/performance.md). Raising the mmap and trim thresholds once makes
freed blocks reusable. A no-op where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory(threshold: int = 32 * 1024 * 1024) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and never trim it. True if set."""
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, threshold)) and bool(mallopt(M_TRIM_THRESHOLD, 2**30))
    _done = ok
    return ok
