"""One shared thread pool for array work that numpy runs outside the GIL.

numpy releases the GIL inside elementwise loops and reductions on large arrays, so
independent per-layer work (optimizer updates, recording statistics) run in threads uses
every core, where a Python loop uses one. BLAS products spread over cores by themselves.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

_pool: ThreadPoolExecutor | None = None


def n_threads() -> int:
    """Cores available to this process (at most 4: beyond that memory bandwidth binds)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


def pool() -> ThreadPoolExecutor | None:
    """The shared pool, or None on a single core (run inline then)."""
    global _pool
    if n_threads() < 2:
        return None
    if _pool is None:
        _pool = ThreadPoolExecutor(n_threads(), thread_name_prefix="gradscope")
    return _pool
