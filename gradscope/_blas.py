"""Keep OpenBLAS's idle threads from spinning over the optimizer's work.

After each matrix product OpenBLAS's worker threads busy-wait for the next one (by default
for 2**28 clock ticks, about 0.1 s) before they sleep. A training step ends with the
optimizer's elementwise loops in gradscope's own worker threads (``training.parallel.GroupedStep``),
and a spinning BLAS thread takes one of the two cores from them: on the 8 x 512 benchmark the
Adam step took 10 ms right after a matrix product against 4.8 ms without one. Sleeping at
once (2**4 ticks) frees the core but makes every product wake its threads again: the 26
products of a step took 21-26 ms against 19 ms with spinning threads. 2**20 ticks (0.5 ms at
2.1 GHz) is longer than the elementwise work between two products of a forward or backward
pass and much shorter than the optimizer's 5-10 ms; whole runs were 6% faster than with
2**4 and 2**23 (interleaved runs, docs/performance.md). OpenBLAS reads
``OPENBLAS_THREAD_TIMEOUT`` (the exponent, 4 to 30) once, when numpy loads it, so this must
run before numpy is imported: it is the first thing ``import gradscope`` does. A value set by
the user is kept; in a process that imported numpy first it has no effect.
"""

from __future__ import annotations

import os
import sys

THREAD_TIMEOUT = "20"


def quiet_idle_blas_threads() -> bool:
    """Set ``OPENBLAS_THREAD_TIMEOUT`` unless the user set it or numpy is already loaded.
    True if this call set it."""
    if "numpy" in sys.modules or "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return False
    os.environ["OPENBLAS_THREAD_TIMEOUT"] = THREAD_TIMEOUT
    return True


#: below this many multiply-adds a step (batch x parameters), BLAS's threads cost more than
#: they bring: the products are microseconds long, and on a busy machine a product waits
#: for a descheduled thread (an 8 x 64 net, batch 32: 62 ms a step on two BLAS threads
#: against 0.96 ms on one with other work running; docs/performance.md)
MIN_THREADED_WORK = 1 << 26


class blas_threads:
    """Context manager: OpenBLAS (numpy's, and scipy's when loaded) uses ``n`` threads
    inside, the number it had after. Does nothing where the library's thread count cannot
    be set (another BLAS, or no /proc to find it in)."""

    def __init__(self, n: int):
        self.n = int(n)
        self.old: list[int] = []

    def __enter__(self):
        self.old = []
        for get, put in _openblas():
            self.old.append(int(get()))
            put(self.n)
        return self

    def __exit__(self, *exc) -> None:
        for (_, put), old in zip(_openblas(), self.old):
            put(old)


_LIBS: list = []


def _openblas() -> list:
    """(get_num_threads, set_num_threads) of each OpenBLAS loaded in this process."""
    if _LIBS:
        return _LIBS[0]
    found = []
    try:
        import ctypes

        import numpy  # noqa: F401 -- loads its BLAS

        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f
                            if "openblas" in line.lower() and ".so" in line})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                                   ("openblas", "64_"), ("openblas", "")):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    put.argtypes = [ctypes.c_int]
                    found.append((get, put))
                    break
    except (OSError, AttributeError):
        found = []
    _LIBS.append(found)
    return found
