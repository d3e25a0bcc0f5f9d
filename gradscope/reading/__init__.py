"""gradscope.reading."""
