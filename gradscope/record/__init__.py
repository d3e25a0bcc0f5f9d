"""Recording: what a training step leaves in the log.

``schema`` is the log's layout (tables, column names, the optimizer option names of a
logged config, :class:`~gradscope.record.schema.LogError`), shared by every writer and
reader; ``probes`` turns one step's arrays into a few numbers per layer (and the probe set
into dead-unit flags and histograms); ``writer`` (:class:`~gradscope.record.writer.LogWriter`)
stores rows in blocks in a crash-safe HDF5 file. It stands on the engine only; the
training loop (or any other source, such as the PyTorch adapter) drives it.
"""
