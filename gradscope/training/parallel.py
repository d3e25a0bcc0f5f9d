"""Optimizer steps spread over threads: the training loop's step machinery.

The update rules themselves live in :mod:`gradscope.engine.optimizers`; this module only
decides how a step over many parameter arrays is run (in groups, in worker threads, in
place) without changing a single number.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..engine.optimizers import Optimizer, Params, apply_updates
from ._threads import n_threads, pool


#: below this many elements in all, handing the arrays to threads costs more than it
#: saves: an Adam step with the norms measured inline against on two threads took 0.69
#: against 0.93 ms for 34k elements (8 x 64), 2.6 against 3.1 ms for 0.53M (8 x 256),
#: 6.6 against 2.8 ms for 1.2M (8 x 384); docs/performance.md
MIN_PARALLEL = 1 << 20


class GroupedStep:
    """``update`` then :func:`apply_updates`, run on groups of parameter arrays in threads.

    numpy releases the GIL inside its elementwise loops, so updating different arrays
    in different threads uses every core, where a plain ``update`` uses one (BLAS
    already spreads the matrix products). The result is the same array for array as
    ``update`` on the whole list: each array's arithmetic is unchanged, and the state's
    per-array lists are split by group and put back in order; its scalar fields (the
    step count, NAdam's ``mu_product``) are the same in every group.

    ``step(..., inplace=True)`` runs the optimizer's ``update_inplace`` instead: the new
    state is written into the state's arrays, the new parameters into ``params`` and the
    updates into buffers this object keeps (valid until its next in-place step), so a
    training loop allocates nothing and works on arrays that are still in cache. The
    numbers are the same as the pure step's, bit for bit.

    Parameters
    ----------
    opt : the optimizer.
    sizes : the number of elements of each parameter array, to balance the groups.
    threads : how many groups (default: the number of cores, at most 4, for at least
        :data:`MIN_PARALLEL` elements in all; fewer run inline); 1 runs inline.
    measure : the norm :meth:`step` reports (default: the Frobenius norm).
    """

    def __init__(self, opt: Optimizer, sizes: list[int], threads: int | None = None,
                 measure: Callable[[np.ndarray], float] | None = None):
        self.opt = opt
        self.measure = measure or (lambda x: float(np.linalg.norm(x)))
        self.n = len(sizes)
        if threads is None:
            threads = n_threads() if sum(sizes) >= MIN_PARALLEL else 1
        threads = min(threads, self.n)
        bins: list[list[int]] = [[] for _ in range(max(threads, 1))]
        load = [0] * len(bins)
        for i in sorted(range(self.n), key=lambda i: -sizes[i]):  # largest first
            k = load.index(min(load))
            bins[k].append(i)
            load[k] += sizes[i]
        self.groups = [sorted(b) for b in bins if b]
        self._out: Params | None = None  # the update buffers of the in-place step
        self.pool = None
        if len(self.groups) > 1:
            self.pool = pool()
            if self.pool is None or self.pool._max_workers < len(self.groups):
                from concurrent.futures import ThreadPoolExecutor

                self.pool = self._own = ThreadPoolExecutor(len(self.groups))

    def _split(self, state, idx):
        return type(state)(*[[f[i] for i in idx] if isinstance(f, list) and len(f) == self.n
                             else f for f in state])

    def _one(self, grads, state, params, want, out=None):
        # numpy's error state is per thread; take the caller's into the worker
        with np.errstate(**self._err):
            gn = [self.measure(g) for g in grads] if want[0] else None
            un = pn = None
            if out is None:
                updates, new = self.opt.update(grads, state, params)
                new_params = apply_updates(params, updates)
                if want[1]:
                    un = [self.measure(u) for u in updates]
                    pn = [self.measure(q) for q in new_params]
            else:
                updates, new = out, self.opt.update_inplace(grads, state, params, out)
                new_params = params
                if want[1]:
                    un, pn = [], []
                for p, u in zip(params, updates):
                    p += u
                    if want[1]:  # right after the update is applied, while both are in cache
                        un.append(self.measure(u))
                        pn.append(self.measure(p))
        return new_params, updates, new, (gn, un, pn)

    def __call__(self, grads: Params, state, params: Params):
        """Returns ``(new_params, updates, new_state)``."""
        return self.step(grads, state, params)[:3]

    def step(self, grads: Params, state, params: Params, grad_norms: bool = False,
             out_norms: bool = False, inplace: bool = False, out: Params | None = None):
        """Returns ``(new_params, updates, new_state, (grad_norms, update_norms, param_norms))``.

        The norms (by ``measure``) are lists in parameter order, or None where not asked for:
        ``grad_norms`` of the gradients, ``out_norms`` of the updates and new parameters.
        ``inplace``: write into ``state`` and ``params`` (see the class); an optimizer
        without ``update_inplace`` takes the pure step. ``out``: with ``inplace``, the
        arrays to write the updates into (else buffers of this object's own).
        """
        self._err = np.geterr()
        want = (grad_norms, out_norms)
        if not (inplace and self.opt.update_inplace is not None):
            out = None
        elif out is None:
            if self._out is None or len(self._out) != len(grads) or any(
                    u.shape != g.shape or u.dtype != g.dtype for u, g in zip(self._out, grads)):
                self._out = [np.empty_like(g) for g in grads]
            out = self._out
        if self.pool is None:
            return self._one(grads, state, params, want, out)
        futures = [self.pool.submit(self._one, [grads[i] for i in idx],
                                    self._split(state, idx), [params[i] for i in idx], want,
                                    None if out is None else [out[i] for i in idx])
                   for idx in self.groups]
        results = [f.result() for f in futures]

        def merge(get):
            merged = [None] * self.n
            for idx, res in zip(self.groups, results):
                part = get(res)
                for k, i in enumerate(idx):
                    merged[i] = part[k]
            return merged

        fields = []
        for j, field in enumerate(state):
            if isinstance(field, list) and len(field) == self.n:
                fields.append(merge(lambda r, j=j: r[2][j]))
            else:
                fields.append(results[0][2][j])
        norms = tuple(merge(lambda r, m=m: r[3][m]) if results[0][3][m] is not None else None
                      for m in range(3))
        return merge(lambda r: r[0]), merge(lambda r: r[1]), type(state)(*fields), norms

    def close(self) -> None:
        """Shut down a pool of its own (the shared pool stays for the next run)."""
        own = getattr(self, "_own", None)
        if own is not None:
            own.shutdown(wait=True)
            self._own = None
        self.pool = None
