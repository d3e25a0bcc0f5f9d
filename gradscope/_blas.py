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
