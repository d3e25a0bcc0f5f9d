"""``python -m gradscope``: the same as the ``gradscope`` command."""

from .cli.main import main

main(prog_name="gradscope")
