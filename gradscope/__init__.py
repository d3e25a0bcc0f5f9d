"""gradscope: see why deep networks fail to train.

The public API: train and read logs, diagnose them, and compare them with mean-field
theory. Figures live in :mod:`gradscope.plots` and the PDF report in
:mod:`gradscope.report` (both import matplotlib, so they are not imported here).
"""

__version__ = "0.1.0"

from ._blas import quiet_idle_blas_threads

quiet_idle_blas_threads()  # before numpy loads OpenBLAS (see _blas)

from .data import load_dataset
from .diagnose import diagnose
from .log import (
    read_config,
    read_dead_units,
    read_epochs,
    read_histograms,
    read_layers,
    read_status,
    read_steps,
    read_weights,
)
from .theory import advise, mean_field
from .train import TrainConfig, train

__all__ = [
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
