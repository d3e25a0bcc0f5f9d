"""gradscope.engine."""
