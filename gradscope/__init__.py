"""gradscope: see why deep networks fail to train.

The public API: train and read logs, diagnose them, and compare them with mean-field
theory. Figures live in :mod:`gradscope.views.plots` and the PDF report in
:mod:`gradscope.views.report` (both import matplotlib, so they are not imported here).
"""

from ._blas import quiet_idle_blas_threads
from ._version import __version__

quiet_idle_blas_threads()  # before numpy loads OpenBLAS (see _blas)

from .analysis.diagnose import diagnose
from .analysis.theory import advise, mean_field
from .engine.data import load_dataset
from .reading.readers import (
    read_config,
    read_dead_units,
    read_epochs,
    read_histograms,
    read_layers,
    read_status,
    read_steps,
    read_weights,
)
from .training.loop import TrainConfig, train

#: names loaded on first use (they import matplotlib): gradscope.Run, gradscope.Runs
_LAZY = {"Run": "gradscope.views.notebook", "Runs": "gradscope.views.notebook"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY])


__all__ = [
    "Run",
    "Runs",
    "TrainConfig",
    "__version__",
    "advise",
    "diagnose",
    "load_dataset",
    "mean_field",
    "read_config",
    "read_dead_units",
    "read_epochs",
    "read_histograms",
    "read_layers",
    "read_status",
    "read_steps",
    "read_weights",
    "train",
]
