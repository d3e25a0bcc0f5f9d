"""gradscope.training."""
