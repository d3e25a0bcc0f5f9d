"""gradscope.record."""
