"""Reading: the one way from a log file to tables. Everything downstream of a log
(analysis, views, the sweep summary, the command line) reads through here.

``readers`` opens a log (live, finished or killed; a truncated file is refused at once by
its one truncation check) and reads its tables as pandas DataFrames, also a selection
(``read_layers(path, columns=, steps=, every=)``) without reading the rest; ``binned``
reads the layer table of a long log as time bins of medians; ``run``
(:func:`~gradscope.reading.run.read_run`) opens a log once and hands every consumer what
it needs: config, status, steps, epochs, layers whole or binned, probes, histograms and
dead-unit flags. It stands on ``record.schema`` only.
"""
