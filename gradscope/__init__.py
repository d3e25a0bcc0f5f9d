"""gradscope: see why deep networks fail to train.

The public API: train and read logs, diagnose them, and compare them with mean-field
theory. Figures live in :mod:`gradscope.views.plots` and the PDF report in
:mod:`gradscope.views.report` (both import matplotlib, so they are not imported here).
"""

from ._blas import quiet_idle_blas_threads
from ._version import __version__

quiet_idle_blas_threads()  # before numpy loads OpenBLAS (see _blas)

#: the public names, each loaded from its module on first use, so that ``import gradscope``
#: (and the command line's start) loads neither pandas, scipy nor h5py before it needs them
_LAZY = {
    "diagnose": "gradscope.analysis.diagnose",
    "advise": "gradscope.analysis.theory",
    "mean_field": "gradscope.analysis.theory",
    "load_dataset": "gradscope.engine.data",
    **{name: "gradscope.reading.readers" for name in (
        "read_config", "read_dead_units", "read_epochs", "read_histograms", "read_layers",
        "read_status", "read_steps", "read_weights")},
    "TrainConfig": "gradscope.training.loop",
    "train": "gradscope.training.loop",
    "Run": "gradscope.views.notebook",  # these import matplotlib
    "Runs": "gradscope.views.notebook",
}


#: the subpackages an ``import gradscope`` used to load, loaded as attributes on first use
_SUBPACKAGES = ("analysis", "engine", "reading", "record", "training")


def __getattr__(name):
    import importlib

    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBPACKAGES:  # with the modules that used to come with them
        for module in set(_LAZY.values()) - {"gradscope.views.notebook"}:
            importlib.import_module(module)
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'gradscope' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_LAZY, *_SUBPACKAGES])


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
