"""What every CLI command shares: the options context, loading, output and errors.

Commands stay thin: they parse options, call the library, and print. Domain errors
(:class:`~indexer.errors.PageLensError`) become one clean line on stderr and exit code 1.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from indexer.config import collection_path, is_collection_name
from indexer.errors import CollectionError, ModelNotAvailableError, PageLensError, UsageError
from indexer.model import Embedder
from indexer.model.rerank import Reranker
from indexer.settings import ModelSettings
from indexer.stores import Store, is_milvus_spec, open_collection

if TYPE_CHECKING:
    from indexer.pages import RenderSettings
    from retriever.search import Retriever

#: Exit codes (documented in the README): 0 ok, 1 error, 2 usage, 3 some inputs refused.
EXIT_ERROR = 1
EXIT_REFUSED = 3


@dataclass
class Options:
    """Global options, read once by the root callback.

    ``settings`` holds everything that shapes a collection (model, device, dtype, visual-token
    budget, ...); ``opts.model``, ``opts.image_tokens`` etc. read through to it.
    """

    collection: str | None = None
    settings: ModelSettings = field(default_factory=ModelSettings)
    _store: Store | None = field(default=None, repr=False)
    _embedder: Embedder | None = field(default=None, repr=False)
    #: The configured reranker once asked for: None (not asked yet), or ``(reranker,)``
    #: with None inside when none is configured or it could not load.
    _reranker: tuple[Reranker | None] | None = field(default=None, repr=False)
    #: Set by the query commands (search, ask): a remote embedder that refuses connections
    #: is an error at once, not after the minutes of retries an index run rides out.
    fail_fast: bool = False
    #: A reranker is configured but could not load (said once): search goes on without.
    reranker_unavailable: bool = False

    def __getattr__(self, name: str) -> Any:
        # Only called when normal lookup fails: the settings' fields, read-only.
        if name in ModelSettings.__dataclass_fields__ and "settings" in self.__dict__:
            return getattr(self.__dict__["settings"], name)
        raise AttributeError(name)

    @property
    def collection_dir(self) -> Path:
        return collection_path(self.collection)

    def read_store(self) -> Store | None:
        """The collection for a read-only command (docs, search, check), creating nothing:
        None while a *named* collection does not exist yet; a CollectionError for a path
        that is not a collection."""
        if (
            not self.is_milvus
            and is_collection_name(self.collection)
            and not self.collection_dir.exists()
        ):
            return None
        return self.store(create=False)

    @property
    def is_milvus(self) -> bool:
        return is_milvus_spec(self.collection)

    @property
    def collection_spec(self) -> str | Path:
        """What ``--collection`` names: a Milvus address as given, else the folder."""
        return str(self.collection) if self.is_milvus else self.collection_dir

    def store(self, *, create: bool = True) -> Store:
        if self._store is None:
            self._store = open_collection(self.collection_spec, create=create)
        return self._store

    def render_settings(self, embedder: Embedder | None = None) -> RenderSettings:
        """How new pages are rendered: the collection's recorded settings, else the
        ``--image-tokens`` budget (so ``index --text-only`` renders for it too), else the
        budget of the model in use (a remote endpoint's own), else GME's 1280."""
        from indexer.pages import RenderSettings

        stored = self.store().render_settings()
        if stored:
            fields = RenderSettings.__dataclass_fields__
            return RenderSettings(**{k: v for k, v in stored.items() if k in fields})
        budget = embedder.max_image_tokens if embedder is not None else None
        if self.settings.image_tokens is None and budget:
            return RenderSettings.for_tokens(int(budget))
        return self.settings.render_settings()

    def embedder(self) -> Embedder:
        """The model, loaded once (with :attr:`fail_fast` for a query)."""
        if self._embedder is None:
            verb = (
                "connecting to the embedder at" if self.settings.embedder_url else "loading model"
            )
            say(f"{verb} {self.settings.display} ...")
            self._embedder = self.settings.load(fail_fast=self.fail_fast)
        return self._embedder

    def reranker(self) -> Reranker | None:
        """The configured reranker (``PAGELENS_RERANK_MODEL`` / ``_URL``), loaded once; None
        when none is configured, or when it cannot load (said in one paragraph: search goes
        on with the first stage, as the issue asks of a missing reranker)."""
        if self._reranker is None:
            from indexer.model.rerank import loading

            try:
                self._reranker = (loading.configured_reranker(),)
            except PageLensError as exc:  # weights missing, or an endpoint unreachable
                say(f"note: {exc}")
                say("note: searching without reranking")
                self._reranker = (None,)
                self.reranker_unavailable = True
        return self._reranker[0]


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
    except UsageError as exc:
        fail(str(exc), 2)
    except PageLensError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        fail("interrupted; what was committed is kept (run the same command to resume)", 130)


def configure_logging(verbose: bool) -> None:
    """Process-wide output settings, made here because the CLI owns its process (the
    library modules leave logging and warnings as they find them)."""
    from PIL import Image

    # Pillow warns about images past ~89 M pixels; PageLens checks every image against its
    # own explicit pixel limits (RenderSettings.max_image_pixels, indexer.pages.raster), so the
    # warning would only alarm someone indexing a large scan.
    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
    # --quantize int8 uses torch.ao.quantization, which announces its own deprecation.
    warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated")
    warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor")
    level = logging.DEBUG if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # gRPC's C core (pymilvus, Ray) logs failed TLS handshakes and reconnects on stderr
        # itself; PageLens reports each failure once, in one line.
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        for noisy in ("transformers", "httpx", "huggingface_hub"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
    from indexer import config

    # pymilvus logs every failed RPC and background reconnect with a traceback on stderr
    # (its own handler, any verbosity); PageLens says each failure once, in one line.
    # The Milvus engine quiets it during its own calls; the CLI does it for good, as it
    # did before. PAGELENS_MILVUS_LOG set keeps pymilvus's records.
    if not config.get(config.MILVUS_LOG_ENV):
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)


def check_search_usage(
    question: str | None,
    *,
    image: Path | None = None,
    mode: str | None = None,
    k: int = 5,
    pages: str | None = None,
    rerank: int | None = None,
    evidence: str = "text",
) -> None:
    """Usage errors of a searching command, found before anything loads (exit code 2)."""
    from indexer.errors import QueryError
    from retriever.search import MODES, PageRange, check_evidence

    try:
        check_evidence(evidence)
    except QueryError as exc:
        fail(f"--evidence: {exc}", 2)
    if evidence == "visual" and mode == "text":
        fail("--evidence visual embeds regions of each page with the model: drop --mode text", 2)

    if not (question or "").strip() and image is None:
        fail("give a question, --image FILE, or both", 2)
    if mode is not None and mode not in MODES:
        fail(f"unknown --mode '{mode}': use {', '.join(MODES)}", 2)
    if image is not None and mode == "text":
        fail(
            "--mode text searches the text layer, which cannot match an image: drop --image, "
            "or search by image with --mode visual or --mode hybrid",
            2,
        )
    if k < 1:
        fail(f"-k must be at least 1, not {k}", 2)
    if rerank is not None:
        from retriever.rerank import MAX_DEPTH

        if not 0 <= rerank <= MAX_DEPTH:
            fail(f"--rerank must be between 0 (off) and {MAX_DEPTH}, not {rerank}", 2)
        if 0 < rerank < k:
            fail(f"-k {k} is more than the {rerank} pages reranked: use --rerank {k} or more", 2)
    if image is not None and not image.is_file():
        fail(f"the image file {image} does not exist", 2)
    if pages:
        try:
            PageRange.parse(pages)
        except PageLensError as exc:
            fail(str(exc), 2)


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 document``, ``2 documents`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def open_retriever(opts: Options, mode: str | None, rerank: int | None = None) -> Retriever:
    """The retriever a searching command uses. Without a model and without ``--mode``, the
    text layer still answers, so it says why and falls back to text search. The configured
    reranker comes with it unless ``rerank`` is 0 (off)."""
    from retriever.search import Retriever

    store = opts.store(create=False)
    if not store.stats().pages:  # say so, instead of loading (or failing to load) a model
        raise CollectionError(
            f"The collection {store.location} is empty: add files with 'pagelens index PATH' first."
        )
    embedder = None
    if mode != "text":
        try:
            opts.fail_fast = True  # a person waits for this query
            embedder = opts.embedder()
        except ModelNotAvailableError as exc:
            if mode is not None or not store.stats().pages:
                raise
            # No mode asked for: the text layer still answers, so say why and use it.
            say(f"note: {exc}")
            say("note: the model is not available, so this searches the text layer (--mode text)")
    return Retriever(embedder, store, reranker=opts.reranker() if rerank != 0 else None)


def rerank_depth(opts: Options, retriever: Retriever, rerank: int | None) -> int | None:
    """The ``rerank`` to search with, said before a CPU rerank starts: 0 when the configured
    reranker could not load (its note is already out; search goes on without it), else
    ``rerank`` as asked (None: the retriever's default).

    The estimate is pages x :data:`retriever.rerank.CPU_SECONDS_PER_PAGE` (or the
    reranker's measured ``seconds_per_page``), for at most the pages the collection holds.
    """
    from retriever.rerank import DEFAULT_DEPTH, describe_seconds, estimate_seconds

    if retriever.reranker is None:
        return 0 if opts.reranker_unavailable else rerank
    if rerank == 0:
        return 0
    pages = min(rerank or DEFAULT_DEPTH, retriever.store.stats().pages)
    seconds = estimate_seconds(retriever.reranker, pages)
    if seconds is not None:
        say(
            f"reranking the top {pages} page(s) on the CPU with {retriever.reranker.model_id}: "
            f"{describe_seconds(seconds)} (--rerank 0 turns it off)"
        )
    return rerank
