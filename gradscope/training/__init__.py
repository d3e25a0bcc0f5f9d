"""Training: the loop that runs the engine and records every step, and sweeps of runs.

``loop`` (:class:`~gradscope.training.loop.TrainConfig`, :func:`~gradscope.training.loop.train`)
resolves a configuration, trains and writes the log through ``record``; ``parallel`` is
the thread-pool step machinery (optimizer updates and norms in parallel); ``sweep`` trains
grids of configurations (local processes or Dask) and writes ``summary.csv``, for which it
reads its logs back and diagnoses them (``reading``, ``analysis``). Private helpers:
``_signals`` (stop cleanly on SIGINT/SIGTERM), ``_threads``, ``_malloc``.
"""
