"""The command line, thin click commands over the library.

``main`` holds ``train``, ``report`` and ``advise``; ``sweep`` and ``plot`` are their own
modules. Options come from the library (``TrainConfig``'s fields, the registries of
activations, inits and optimizers); every user error is one line and a non-zero exit.
"""

from .main import main

__all__ = ["main"]
