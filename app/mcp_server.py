"""PageLens as an MCP server: an agent (Claude Desktop, an IDE agent...) searches the pages.

Built on the official ``mcp`` SDK (v2, :class:`mcp.server.mcpserver.MCPServer`); ``pagelens
mcp`` runs it over stdio (``--http``: streamable HTTP, loopback by default). Three tools:

* ``search_pages``: the best pages for a question, as images (what a vision model reads)
  with a citation line and a text snippet for each, plus the hits as structured data
  (each with its ``highlights``: the boxes of the question's words; ``draw_boxes`` draws
  them on the images);
* ``get_page``: one page's image and its full text layer (``query``: highlights of those
  words, ``draw_boxes`` to draw them);
* ``list_documents``: what the collection holds.

The model is injected as a loader (loaded on the first visual search, once); without it,
search falls back to the text layer and says so. Nothing here opens a network connection:
the agent's client talks to this process over stdio or loopback HTTP.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Literal

from mcp.server.mcpserver import MCPServer
from mcp.types import CallToolResult, ContentBlock, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from app.warmup import prepare_queries
from indexer.errors import ModelNotAvailableError, PageLensError
from indexer.model import Embedder
from indexer.model.rerank import Reranker
from indexer.stores import Store
from retriever.export import ExportSettings, citation, encode_page
from retriever.search import Hit, Retriever, snippet, with_evidence

log = logging.getLogger(__name__)

MAX_K = 20
#: Deepest rerank an agent may ask for (each page costs a model pass).
MAX_RERANK = 50

INSTRUCTIONS = (
    "PageLens searches the user's own PDF collection (papers, manuals, reports, scans) and "
    "returns whole pages as images. Use search_pages to find pages that answer a question, "
    "read the page images, and cite the pages you use as [document, p. N]. Use get_page to "
    "read one page (image and text) in full, for example the page after a hit, and "
    "list_documents to see what is in the collection."
)

SEARCH_DESCRIPTION = (
    "Search the user's PDF collection for the pages that best answer a question. Returns "
    "the top pages best first: for each, a citation line '[i] document, p. N' with its "
    "score and a text snippet, followed by the page itself as an image (read it: tables, "
    "figures and scans are only in the image). Cite pages as [document, p. N]. "
    "Modes: 'visual' (default; a vision embedding model matches the meaning of the "
    "question against the page images, best for charts, slides, scans and paraphrases), "
    "'text' (BM25 keyword search over the page text: best for exact names, codes and "
    "numbers), 'hybrid' (both fused). Narrow with documents (names from list_documents) "
    "and a page range like '3-7'. Ask for few pages (k=3..5): each page image is large."
)

GET_PAGE_DESCRIPTION = (
    "Get one page of a document: the page image and its full text layer. Use it to read "
    "a page in full, or the pages around a search hit. Pages are numbered from 1."
)

LIST_DESCRIPTION = (
    "List the documents in the collection: name, id, page count and how many pages are "
    "searchable visually. Use the names to narrow search_pages."
)


class LazyModel:
    """Loads the embedder once, on first use, from an injected loader (thread-safe)."""

    def __init__(self, loader: Callable[[], Embedder] | None) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._model: Embedder | None = None
        self._error: str | None = None

    def preload(self) -> threading.Thread:
        """Load the model now, in a background thread, and decide its text-query weights
        (:mod:`app.warmup`), so that the first search does not pay for either."""

        def run() -> None:
            embedder = self.get()
            if embedder is not None:
                prepare_queries(embedder)

        thread = threading.Thread(target=run, name="pagelens-mcp-model", daemon=True)
        thread.start()
        return thread

    def get(self) -> Embedder | None:
        """The model, or None (with :attr:`error` saying why) when it cannot load."""
        with self._lock:
            if self._model is None and self._error is None and self._loader is not None:
                try:
                    self._model = self._loader()
                except ModelNotAvailableError as exc:
                    self._error = str(exc)
            return self._model

    @property
    def error(self) -> str | None:
        return self._error if self._loader is not None else "no model is configured"


def _image_content(hit: Hit, settings: ExportSettings) -> ImageContent:
    data, mime = encode_page(hit, settings)
    return ImageContent(type="image", data=base64.b64encode(data).decode("ascii"), mime_type=mime)


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


def _error(message: str) -> CallToolResult:
    return CallToolResult(content=[_text(message)], is_error=True)


def build_server(
    store: Store,
    model_loader: Callable[[], Embedder] | None,
    *,
    image_settings: ExportSettings | None = None,
    name: str = "pagelens",
    preload: bool = False,
    reranker: Reranker | None = None,
) -> MCPServer:
    """The MCP server over one collection; ``model_loader`` is called on first visual use,
    or at once in the background with ``preload`` (``pagelens mcp``: then the model is
    loaded and its text-query weights decided before the first search comes).

    The MCP SDK registers each tool as a function (its signature is the tool's schema): the
    ``_*_tool`` factories below make them as closures over the store, the lazy model and the
    image settings. ``reranker``: the second stage ``search_pages`` uses (its ``rerank``
    option; by default the top 20 are reranked when one is given).
    """
    image_settings = image_settings or ExportSettings()
    model = LazyModel(model_loader)
    if preload and model_loader is not None:
        model.preload()
    read_only = ToolAnnotations(read_only_hint=True, open_world_hint=False)
    server = MCPServer(name, instructions=INSTRUCTIONS, log_level="WARNING")
    server.add_tool(
        _search_tool(store, model, image_settings, reranker),
        title="Search pages",
        description=SEARCH_DESCRIPTION,
        annotations=read_only,
    )
    server.add_tool(
        _page_tool(store, image_settings),
        title="Get a page",
        description=GET_PAGE_DESCRIPTION,
        annotations=read_only,
    )
    server.add_tool(
        _list_tool(store),
        title="List documents",
        description=LIST_DESCRIPTION,
        annotations=read_only,
    )
    return server


def _search_tool(
    store: Store, model: LazyModel, image_settings: ExportSettings, reranker: Reranker | None
) -> Callable[..., CallToolResult]:
    """The ``search_pages`` tool over ``store`` (reranking with ``reranker`` when given)."""

    def search_pages(
        question: Annotated[str, Field(description="The question, in plain language.")],
        k: Annotated[
            int, Field(description="How many pages to return (1-20).", ge=1, le=MAX_K)
        ] = 5,
        documents: Annotated[
            list[str] | None,
            Field(description="Only search these documents (names or ids)."),
        ] = None,
        pages: Annotated[
            str | None, Field(description="Only these pages, e.g. '3-7', '5-' or '2'.")
        ] = None,
        mode: Annotated[
            Literal["visual", "text", "hybrid"] | None,
            Field(description="visual (default), text (exact words) or hybrid."),
        ] = None,
        rerank: Annotated[
            int | None,
            Field(
                description="Rerank the top N pages with the reranker (slower, puts the right "
                "page first more often); N >= k. Default: 20 when a reranker is configured; "
                "0: off.",
                ge=0,
                le=MAX_RERANK,
            ),
        ] = None,
        draw_boxes: Annotated[
            bool,
            Field(description="Draw the matches of the question's words on the page images."),
        ] = False,
    ) -> CallToolResult:
        notes: list[str] = []
        if rerank and reranker is None:
            return _error("No reranker is configured for this server; leave rerank out.")
        embedder = None
        if mode != "text":
            embedder = model.get()
            if embedder is None:
                if mode is not None:
                    return _error(
                        f"{mode} search needs the model, which is not available: "
                        f"{model.error} Use mode 'text'."
                    )
                notes.append(
                    f"Note: the embedding model is not available ({model.error}); this is a "
                    "text (keyword) search."
                )
        try:
            retriever = Retriever(embedder, store, reranker=reranker)
            hits = retriever.search(
                question,
                k,
                documents=documents or None,
                pages=pages,
                mode=mode,
                rerank=rerank,
                notify=lambda line: notes.append(f"Note: {line}."),
            )
            pending = retriever.pending() if embedder is not None else 0
        except PageLensError as exc:
            return _error(str(exc))
        if pending:
            notes.append(
                f"Note: {pending} page(s) are not embedded yet, so visual search has not "
                "seen them; mode 'text' covers every page."
            )
        settings = replace(image_settings, draw_boxes=draw_boxes)
        return _search_result(question, hits, notes, pending, settings)

    return search_pages


def _search_result(
    question: str, hits: list[Hit], notes: list[str], pending: int, settings: ExportSettings
) -> CallToolResult:
    """``search_pages``'s answer: a summary with citations, then each page's line and image."""
    if not hits:
        return CallToolResult(
            content=[_text(" ".join(["No pages found.", *notes]))],
            structured_content={"hits": []},
        )
    content: list[ContentBlock] = [
        _text(
            f"{len(hits)} page(s) for: {question}\n"
            + "\n".join(f"[{i}] {citation(h)}" for i, h in enumerate(hits, 1))
            + "\nCite pages as [document, p. N]."
            + ("\n" + "\n".join(notes) if notes else "")
        )
    ]
    for i, hit in enumerate(hits, start=1):
        line = f"[{i}] {citation(hit)} (score {hit.score:.4f})"
        if hit.snippet:
            line += f"\n{hit.snippet}"
        content.append(_text(line))
        content.append(_image_content(hit, settings))
    structured = {"hits": [_hit_dict(h) for h in hits], "pending": pending}
    return CallToolResult(content=content, structured_content=structured)


def _page_tool(store: Store, image_settings: ExportSettings) -> Callable[..., CallToolResult]:
    """The ``get_page`` tool over ``store``."""

    def get_page(
        document: Annotated[str, Field(description="Document name (or id).")],
        page: Annotated[int, Field(description="Page number, from 1.", ge=1)],
        query: Annotated[
            str | None,
            Field(description="Words to highlight on the page (their boxes are returned)."),
        ] = None,
        draw_boxes: Annotated[
            bool, Field(description="Draw the highlighted words on the page image.")
        ] = False,
    ) -> CallToolResult:
        try:
            hit = page_hit(store, document, page)
            hit = with_evidence(store, [hit], (query or "").strip())[0]
        except PageLensError as exc:
            return _error(str(exc))
        text = hit.text.strip() or "(this page has no text layer: read the image)"
        return CallToolResult(
            content=[
                _text(f"{citation(hit)}\n\n{text}"),
                _image_content(hit, replace(image_settings, draw_boxes=draw_boxes)),
            ],
            structured_content=_hit_dict(hit) | {"text": hit.text},
        )

    return get_page


def _list_tool(store: Store) -> Callable[[], CallToolResult]:
    """The ``list_documents`` tool over ``store``."""

    def list_documents() -> CallToolResult:
        docs = [d.as_dict() for d in store.documents()]
        lines = [
            f"{d['name']} (id {d['id']}): {d['pages']} pages, {d['pages_embedded']} embedded"
            for d in docs
        ] or ["The collection is empty."]
        return CallToolResult(
            content=[_text("\n".join(lines))], structured_content={"documents": docs}
        )

    return list_documents


def _hit_dict(hit: Hit) -> dict:
    out = hit.as_dict()
    out["citation"] = f"[{citation(hit)}]"
    return json.loads(json.dumps(out))


def page_hit(store: Store, document: str, page: int) -> Hit:
    """One stored page as a :class:`Hit` (score 0), by document name or id and number."""
    doc = store.document(document)
    ids = store.page_ids(documents=[doc.id], first=page, last=page)
    if not ids:
        raise PageLensError(
            f"{doc.name} has no stored page {page} (it has {doc.page_count} pages)."
        )
    row = store.pages_by_id(ids)[ids[0]]
    return Hit(
        document=doc.name,
        document_id=doc.id,
        path=doc.path,
        page=row.number,
        score=0.0,
        image=str(store.image_path(row).resolve()),
        snippet=snippet(row.text, ""),
        page_id=row.id,
        text=row.text,
    )
