"""The numpy engine: everything that trains a network, nothing that records or reads it.

``activations`` (phi, phi' and their family: ReLU-like units can die, sigmoid and tanh
saturate), ``initializers`` (the weight variance of each init), ``losses``, ``mlp`` (the
forward and backward passes, which also measure each layer as they go, through
``stats``), ``optimizers`` (the update rules only, as torch.optim defines them) and
``data`` (built-in datasets and files). It imports nothing else of gradscope; every other
layer stands on it. Map of the whole package: docs/architecture.md.
"""
