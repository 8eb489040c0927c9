"""``python -m app.cli``: the ``pagelens`` command (the package imports every command)."""

from app.cli import main

main()
