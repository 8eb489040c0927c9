"""What every CLI command shares: the options context, loading, output and errors.

Commands stay thin: they parse options, call the library, and print. Domain errors
(:class:`~indexer.errors.PageLensError`) become one clean line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import typer

from indexer.config import collection_path, default_model
from indexer.embedder import Embedder
from indexer.errors import PageLensError
from indexer.store import Collection

#: Exit codes (documented in the README): 0 ok, 1 error, 2 usage, 3 some inputs refused.
EXIT_ERROR = 1
EXIT_REFUSED = 3


@dataclass
class Options:
    """Global options, read once by the root callback."""

    collection: str | None = None
    model: str | None = None
    device: str | None = None
    dtype: str | None = None
    image_tokens: int | None = None
    quantize: str | None = None
    compile: bool = False
    embedder_url: str | None = None
    _store: Collection | None = field(default=None, repr=False)
    _embedder: Embedder | None = field(default=None, repr=False)

    @property
    def collection_dir(self) -> Path:
        return collection_path(self.collection)

    def store(self, *, create: bool = True) -> Collection:
        if self._store is None:
            self._store = Collection(self.collection_dir, create=create)
        return self._store

    def embedder(self) -> Embedder:
        if self._embedder is None:
            from indexer import embedder_options, load_embedder

            options = embedder_options(
                image_tokens=self.image_tokens, quantize=self.quantize, compile=self.compile
            )
            if self.embedder_url:
                from indexer.remote import redact_url

                say(f"connecting to the embedder at {redact_url(self.embedder_url)} ...")
                self._embedder = load_embedder(
                    self.model, embedder_url=self.embedder_url, **options
                )
                return self._embedder
            model = self.model or default_model()
            say(f"loading model {model} ...")
            self._embedder = load_embedder(model, device=self.device, dtype=self.dtype, **options)
        return self._embedder


def options(ctx: typer.Context) -> Options:
    obj = ctx.find_root().obj
    if not isinstance(obj, Options):
        obj = Options()
        ctx.find_root().obj = obj
    return obj


def say(message: str) -> None:
    """A human-facing note on stderr (stdout stays clean for --json)."""
    typer.echo(message, err=True)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run a command body, turning domain errors into a clean one-line failure."""
    try:
        return fn()
    except PageLensError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; what was committed is kept (run the same command to resume)", 130)


def configure_logging(verbose: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        for noisy in ("transformers", "httpx", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)


def is_tty() -> bool:
    return sys.stderr.isatty()
