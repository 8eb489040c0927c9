"""PageLens as a library: one object for the three-line happy path.

.. code-block:: python

    from pagelens import PageLens

    lens = PageLens("research")                     # a collection (as --collection) + its model
    lens.index(["~/papers"])                        # files or folders; resumable
    hits = lens.search("what changed in 2023?", k=5)

:class:`PageLens` owns a collection and the model that embeds it, as simonw/llm's
``Collection`` owns its embedding model, so a user does not wire a store, an indexer, a
retriever and a model together. It is a thin front: the layers it composes
(:class:`indexer.store.Collection`, :class:`indexer.pipeline.Indexer`,
:class:`retriever.Retriever`, :func:`indexer.load_embedder`) stay public for anyone who
needs more control. The model is loaded on first need, so text search, listing and removing
never import torch.

May import :mod:`indexer` and :mod:`retriever`, never :mod:`app`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from indexer.model import Embedder
from indexer.model.rerank import Reranker
from indexer.pipeline import Indexer, IndexReport, ProgressFn
from indexer.stores import Store, open_collection
from indexer.stores.types import Document
from retriever.ask import Answer, AnswerStream, LLMSettings, ask, ask_stream, check_page_count
from retriever.export import ExportSettings, to_markdown, to_openai_messages
from retriever.search import Hit, PageRange, Retriever

PathLike = str | os.PathLike[str]


class PageLens:
    """A collection of pages and the model that embeds them.

    ``collection`` is what ``pagelens --collection`` takes, read by the same rule: a bare
    name is a named collection under ``$PAGELENS_HOME`` (even when a folder of that name
    exists in the current folder), text with a path separator or starting with ``.`` or
    ``~`` is a folder, and ``milvus://HOST:PORT/NAME`` is a collection on a Milvus server.
    A :class:`~pathlib.Path` (any ``os.PathLike``) is always a folder, made absolute here so
    that a later ``chdir`` does not move it. ``None`` is the ``default`` collection. ``model`` is
    a hub id or a local folder (default ``$PAGELENS_MODEL``, else GME-2B); ``device``,
    ``dtype`` and ``options`` go to :func:`indexer.load_embedder`. Pass ``embedder=`` to
    share an already loaded model (or a test double), ``store=`` to use an open store.
    ``reranker=`` adds a second stage: :meth:`search` and :meth:`ask` then rerank the top
    pages with it (``indexer.model.rerank.configured_reranker()`` gives the configured one;
    none is loaded implicitly, as a reranker costs GBs and seconds per query on a CPU).
    """

    def __init__(
        self,
        collection: PathLike | None = None,
        *,
        model: PathLike | None = None,
        embedder: Embedder | None = None,
        device: str | None = None,
        dtype: Any = None,
        store: Store | None = None,
        reranker: Reranker | None = None,
        **options: Any,
    ) -> None:
        if store is not None and collection is not None:
            raise ValueError("give a collection name/folder or an open store, not both")
        if embedder is not None and (model is not None or device or dtype or options):
            raise ValueError("give a loaded embedder or the options to load one, not both")
        if isinstance(collection, os.PathLike):  # a path object: a folder, whatever its name
            collection = Path(collection).expanduser().absolute()
        self.store = store if store is not None else open_collection(collection)
        self._embedder = embedder
        self._load = {"model": model, "device": device, "dtype": dtype, **options}
        self._retriever: Retriever | None = None
        self.reranker = reranker

    @property
    def embedder(self) -> Embedder:
        """The model, loaded on first use (GME weights take seconds to load and GBs of RAM)."""
        if self._embedder is None:
            from indexer import load_embedder

            self._embedder = load_embedder(**self._load)
        return self._embedder

    def index(
        self,
        paths: PathLike | Iterable[PathLike],
        *,
        text_only: bool = False,
        progress: ProgressFn | None = None,
        **options: Any,
    ) -> IndexReport:
        """Add files and folders (walked recursively); re-running resumes and skips duplicates.

        ``text_only=True`` stores pages and their text layer now (text search works at once)
        and leaves the vectors for a later :meth:`index` or :meth:`embed_pending`. Other
        keyword options (``password``, ``passwords``, ``names``, ``on_file``) are those of
        :meth:`indexer.pipeline.Indexer.add`. Refused files are in the report, with reasons.
        """
        if isinstance(paths, str | os.PathLike):
            paths = [paths]
        indexer = Indexer(self.store, None if text_only else self.embedder)
        return indexer.add(paths, embed=not text_only, progress=progress, **options)

    def embed_pending(self, *, progress: ProgressFn | None = None) -> int:
        """Embed the pages stored without a vector; returns how many got one."""
        return Indexer(self.store, self.embedder).embed_pending(progress=progress)

    def search(
        self,
        query: str | None = None,
        k: int = 5,
        *,
        image: Image.Image | PathLike | None = None,
        documents: Sequence[str | int] | None = None,
        pages: PageRange | str | None = None,
        mode: str = "visual",
        rerank: int | None = None,
        evidence: str = "text",
    ) -> list[Hit]:
        """The ``k`` best pages for a question, an image, or both (see :class:`Retriever`).

        ``mode``: ``visual`` (GME, the default), ``text`` (BM25 over the text layer; never
        loads the model) or ``hybrid``. ``documents`` and ``pages`` filter by document (name
        or id) and page range (``"3-7"``). ``rerank``: with a reranker, how many first-stage
        pages it reads (default 20, at least ``k``; 0: off). ``evidence``: ``text`` (each
        hit's ``highlights``: the boxes of the query's words on its page) or ``none``.
        """
        if isinstance(image, os.PathLike):
            image = Path(image)
        retriever = (
            Retriever(None, self.store, reranker=self.reranker)
            if mode == "text"
            else self._model_retriever()
        )
        return retriever.search(
            query,
            k,
            image=image,
            documents=documents,
            pages=pages,
            mode=mode,
            rerank=rerank,
            evidence=evidence,
        )

    def _model_retriever(self) -> Retriever:
        if self._retriever is None:
            self._retriever = Retriever(self.embedder, self.store, reranker=self.reranker)
        return self._retriever

    def prompt(
        self, query: str, hits: Sequence[Hit], *, format: str = "openai", draw_boxes: bool = False
    ) -> Any:
        """The hits as an LLM prompt: OpenAI ``messages`` (``"openai"``) or ``"markdown"``;
        ``draw_boxes``: the messages' page images with the hits' highlights drawn."""
        if format == "openai":
            return to_openai_messages(
                query, list(hits), settings=ExportSettings(draw_boxes=draw_boxes)
            )
        if format == "markdown":
            return to_markdown(query, list(hits))
        raise ValueError(f"unknown prompt format {format!r}; use 'openai' or 'markdown'")

    def ask(
        self,
        question: str,
        hits: Sequence[Hit] | None = None,
        *,
        k: int = 5,
        mode: str = "visual",
        settings: LLMSettings | None = None,
    ) -> Answer:
        """A cited answer from the configured vision LLM (see :mod:`retriever.ask`).

        The pages are ``hits``, or the ``k`` best for the question in ``mode``. Where they
        go is ``settings`` or ``PAGELENS_LLM_URL``/``_MODEL``/``_API_KEY``; without a URL
        nothing is sent (:class:`~retriever.llm.LLMNotConfiguredError`).
        """
        hits, settings = self._ask_inputs(question, hits, k, mode, settings)
        return ask(question, hits, settings=settings)

    def ask_stream(
        self,
        question: str,
        hits: Sequence[Hit] | None = None,
        *,
        k: int = 5,
        mode: str = "visual",
        settings: LLMSettings | None = None,
    ) -> AnswerStream:
        """:meth:`ask`, streamed: iterate for the text; ``.answer`` once it ends."""
        hits, settings = self._ask_inputs(question, hits, k, mode, settings)
        return ask_stream(question, hits, settings=settings)

    def _ask_inputs(
        self,
        question: str,
        hits: Sequence[Hit] | None,
        k: int,
        mode: str,
        settings: LLMSettings | None,
    ) -> tuple[Sequence[Hit], LLMSettings]:
        """The settings and pages for an answer; the page count is checked against the LLM's
        limit before any search, so that a bad request costs no embedding."""
        settings = settings or LLMSettings.from_env()
        check_page_count(len(hits) if hits is not None else k, settings)
        if hits is None:
            hits = self.search(question, k, mode=mode)
        return hits, settings

    def documents(self) -> list[Document]:
        """The documents in the collection, oldest first, with stored/embedded page counts."""
        return self.store.documents()

    def remove(self, document: str | int) -> Document:
        """Remove a document (by name or id) with its pages, vectors and images."""
        with self.store.writing():
            return self.store.remove_document(document)

    def close(self) -> None:
        """Save the vector index and close the catalog."""
        self.store.close()

    def __enter__(self) -> PageLens:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        model = getattr(self._embedder, "model_id", None) or self._load.get("model") or "lazy"
        return f"PageLens({self.store.location!r}, model={str(model)!r})"


__all__ = ["Hit", "IndexReport", "PageLens", "PageRange"]
