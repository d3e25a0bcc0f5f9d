"""gradscope.analysis."""
