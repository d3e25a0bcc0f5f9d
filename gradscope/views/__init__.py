"""gradscope.views."""
