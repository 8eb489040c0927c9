"""The ``pagelens`` Typer app and its global options, in a module of their own.

Every command module (``app.cli.index``, ``app.cli.core``, ``app.cli.check``, ...)
registers on :data:`cli` from here, and the package :mod:`app.cli` imports them all: the
import graph is a tree (app.cli -> command modules -> root -> common), so no module depends
on another having been imported first.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any

import typer

from app.cli.common import Options, configure_logging, fail
from indexer.config import COLLECTION_ENV, HOME_RULE
from indexer.errors import UsageError
from indexer.model.runtime.cpu_heap import keep_freed_memory
from indexer.settings import ModelSettings


def _plain_flags() -> None:
    """Typer's rich help labels on/off flags ``<bool>`` as if they took a value (``--json
    <bool>``); a flag takes none, so show no type for it (options with values keep theirs)."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_pagelens", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._pagelens = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()

cli = typer.Typer(
    name="pagelens",
    help="Ask questions of your PDFs and get back the pages that answer. Built with GME.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def root(ctx: typer.Context, **values: Any) -> None:
    """Read the global options once (the model settings' flags come from ModelSettings)."""
    configure_logging(values.pop("verbose"))
    keep_freed_memory()  # the CLI owns its process: page batches reuse freed buffers
    collection = values.pop("collection")
    try:
        settings = ModelSettings(**values)
    except UsageError as exc:
        fail(str(exc), 2)
    ctx.obj = Options(collection=collection, settings=settings)


def _root_signature() -> None:
    """Give :func:`root` one Typer option per :class:`ModelSettings` field, so that a new
    setting is one edit (in indexer/settings.py) and reaches the CLI, app and server."""
    hints = typing.get_type_hints(ModelSettings)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "collection",
            kw,
            annotation=str | None,
            default=typer.Option(
                None,
                "--collection",
                "-c",
                envvar=COLLECTION_ENV,
                help="Collection name, folder path or milvus://HOST:PORT/NAME (default "
                f"'default'). {HOME_RULE}.",
            ),
        ),
    ]
    for f in dataclasses.fields(ModelSettings):
        meta = f.metadata
        params.append(
            inspect.Parameter(
                f.name,
                kw,
                annotation=hints[f.name],
                default=typer.Option(
                    f.default, *meta["flags"], envvar=meta["env"], help=meta["help"]
                ),
            )
        )
    params.append(
        inspect.Parameter(
            "verbose",
            kw,
            annotation=bool,
            default=typer.Option(False, "--verbose", "-v", help="Log details."),
        )
    )
    root.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    root.__annotations__ = {p.name: p.annotation for p in params}


_root_signature()
cli.callback()(root)
