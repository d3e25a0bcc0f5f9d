"""Views: pictures and pages made from a log alone.

``plots`` draws figures (tidy DataFrame in, Axes out); ``report`` reads runs through
:func:`~gradscope.reading.run.read_run` (one open a log), diagnoses them and writes the
PDF report; ``watch`` follows a live run in the terminal, reading only the rows added
since its last read (``reading.readers.read_rows``). Views never import the engine or the
training loop: what they need of a run (activation family, depth, options) is in its
logged config.
"""
