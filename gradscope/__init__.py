"""gradscope: see why deep networks fail to train."""

__version__ = "0.1.0"

from .data import load_dataset  # noqa: E402
from .log import (  # noqa: E402
    read_config,
    read_dead_units,
    read_epochs,
    read_histograms,
    read_layers,
    read_status,
    read_steps,
    read_weights,
)
from .train import TrainConfig, train  # noqa: E402

__all__ = [
    "__version__", "load_dataset", "read_config", "read_dead_units", "read_epochs",
    "read_histograms", "read_layers", "read_status", "read_steps", "read_weights",
    "TrainConfig", "train",
]
