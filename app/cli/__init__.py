"""The ``pagelens`` command line: :func:`main` (the console script, ``app.cli:main``) and
:data:`cli`, the Typer app every command registers on.

Modules: ``root`` (the Typer app and the global options), ``common`` (options, output,
errors, logging), ``progress`` (the terminal progress line), and one module per command
group: ``index``, ``sync``, ``core`` (search, docs, remove, export, collections, app, dev), ``ask``,
``bench``, ``check``, ``eval``, ``mcp``, ``migrate``, ``serve``. A command module imports
``root`` and ``common``, never this package's ``__init__`` or another command module, so the
import graph is a tree. This package may import app.web (only ``pagelens app``'s launcher),
app.server, app.mcp_server, retriever and indexer.

A new command: a module here doing ``from app.cli.root import cli``, added to the import list
below (the order of that list is the order of ``pagelens --help``).
"""

from __future__ import annotations

# Each command module registers its commands on app.cli.root.cli when imported: this list is
# every command there is, in the order --help shows them (hence not sorted).
# isort: off
from app.cli import (  # noqa: F401
    index,
    sync,
    core,
    ask,
    bench,
    check,
    eval,
    serve,
    mcp,
    migrate,
)

# isort: on
from app.cli.root import cli

__all__ = ["cli", "main"]


def main() -> None:
    """Console-script entry point."""
    cli()
