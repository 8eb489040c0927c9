"""Questions -> ranked pages.

Three ways to rank, one result type:

* ``visual``: GME. The question (text, image, or both) is embedded on the query side, with
  GME's retrieval instruction, and compared by cosine with the page vectors.
* ``text``: BM25 over the pages' text layer (SQLite FTS5). Catches exact names and numbers.
* ``hybrid``: reciprocal rank fusion (RRF, Cormack et al. 2009) of the two rankings:
  ``score = sum over rankings of 1 / (60 + rank)``, each ranking taken to depth
  ``max(50, 4k)``. RRF needs no score calibration between cosine and BM25, and a page
  missing from one ranking (a scan with no text) still ranks through the other.

Visual and hybrid search use the pages embedded so far; ``pending()`` says how many wait.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image

from indexer.errors import QueryError
from indexer.model import Embedder
from indexer.model.rerank import Reranker
from indexer.pages import RenderSettings, fit_image
from indexer.pages.raster import ImageRefusedError, decode_image
from indexer.pipeline import Meter, ProgressFn
from indexer.stores.base import (  # noqa: F401 (RRF_K, reciprocal_rank_fusion: re-exported)
    RRF_K,
    PageFilter,
    Store,
    reciprocal_rank_fusion,
)
from retriever.evidence.cache import EvidenceCache
from retriever.evidence.highlights import (
    EVIDENCE,
    Highlight,
    PageWord,
    Stemmer,
    text_highlights,
)
from retriever.evidence.visual import VisualEvidence, VisualRegion, visual_evidence
from retriever.rerank import rerank_hits, resolve_depth

MODES = ("visual", "text", "hybrid")
# ``EVIDENCE`` (what ``search(evidence=...)`` adds to each hit's highlights): "text" (the
# default, the words of the query on the page), "none", or "visual" (also the scored regions
# of :mod:`retriever.evidence.visual`, an approximation from embedded crops).


@dataclass(frozen=True)
class Hit:
    """One ranked page. ``image`` is the absolute path of the stored page image."""

    document: str
    document_id: int
    path: str
    page: int
    score: float
    image: str
    snippet: str
    page_id: int
    text: str = field(default="", repr=False)
    scores: dict[str, float] = field(default_factory=dict)
    #: The page has no vector yet: it was found through its text layer only.
    pending: bool = False
    #: Where the query's words are on the page image (:mod:`retriever.evidence`), then, with
    #: ``evidence="visual"``, the scored regions of :func:`Retriever.where_on_page`.
    highlights: tuple[Highlight | VisualRegion, ...] = ()
    #: The page's words with their boxes, kept so an answer's quotes can be boxed too
    #: (:mod:`retriever.ask`); empty when the search asked for no evidence. Not shown.
    words: tuple[PageWord, ...] = field(default=(), repr=False, compare=False)

    def as_dict(self, *, with_text: bool = False) -> dict:
        out = {
            "document": self.document,
            "document_id": self.document_id,
            "path": self.path,
            "page": self.page,
            "score": round(float(self.score), 6),
            "image": self.image,
            "snippet": self.snippet,
            "page_id": self.page_id,
            "highlights": [h.as_dict() for h in self.highlights],
        }
        if self.scores:
            out["scores"] = {k: round(float(v), 6) for k, v in self.scores.items()}
        if self.pending:
            out["pending"] = True  # found by its text layer; its vector is still being made
        out["highlights"] = [h.as_dict() for h in self.highlights]
        if with_text:
            out["text"] = self.text
        return out


#: Highest page number a range may name (SQLite integers stop at 2**63; no document comes near).
MAX_PAGE = 1_000_000_000


@dataclass(frozen=True)
class PageRange:
    """A 1-based, inclusive page range; either end may be open."""

    first: int | None = None
    last: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> PageRange | None:
        """``"3"``, ``"3-7"``, ``"5-"`` or ``"-4"``."""
        if not text:
            return None
        m = re.fullmatch(r"\s*(\d*)\s*(-?)\s*(\d*)\s*", text)
        if not m or not (m.group(1) or m.group(3)):
            raise QueryError(f"Page range '{text}' should look like 3, 3-7, 5- or -4.")
        for number in (m.group(1), m.group(3)):
            if number and (len(number) > 10 or int(number) > MAX_PAGE):
                raise QueryError(
                    f"Page number {number[:20]}{'...' if len(number) > 20 else ''} is out of "
                    f"range (at most {MAX_PAGE:,})."
                )
        first = int(m.group(1)) if m.group(1) else None
        last = int(m.group(3)) if m.group(3) else (first if not m.group(2) else None)
        if first is not None and last is not None and last < first:
            raise QueryError(f"Page range '{text}' ends before it starts.")
        return cls(first, last)


class Retriever:
    """Searches one collection with an injected embedder (None: text search only) and,
    optionally, an injected reranker that reorders the first stage's top pages
    (:mod:`retriever.rerank`; None: the first stage's order is the answer)."""

    def __init__(
        self,
        embedder: Embedder | None,
        store: Store,
        reranker: Reranker | None = None,
        *,
        evidence_cache: EvidenceCache | None = None,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.reranker = reranker
        #: Region scores of visual evidence already computed (memory only unless given one
        #: with a folder: the CLI's lives in the user's cache dir).
        self.evidence_cache = evidence_cache if evidence_cache is not None else EvidenceCache()
        if embedder is not None and store.model_id is not None:
            store.bind_embedder(embedder)

    def pending(self) -> int:
        """Pages stored but not embedded yet (not reachable by visual search)."""
        return self.store.stats().pending

    def search(
        self,
        query: str | None = None,
        k: int = 5,
        *,
        image: Image.Image | str | Path | None = None,
        documents: Sequence[str | int] | None = None,
        pages: PageRange | str | None = None,
        mode: str | None = None,
        rerank: int | None = None,
        notify: Callable[[str], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
        evidence: str = "text",
        evidence_progress: ProgressFn | None = None,
    ) -> list[Hit]:
        """The ``k`` best pages for a question, an image, or both.

        ``documents`` restricts to documents named by name or id; ``pages`` to a page range.
        ``mode`` defaults to ``visual`` when a model is loaded, else ``text``.

        ``rerank``: how many first-stage hits the reranker reads before the best ``k`` of
        them are returned (0: none; None: :data:`retriever.rerank.DEFAULT_DEPTH`, at least
        ``k``, when a reranker is given, else none). ``k`` above it is a UsageError, and so
        is a depth with no reranker. ``notify`` gets the one line said when the reranker
        fails (the first-stage ranking is returned); ``progress(done, total)`` follows the
        rerank (see :func:`retriever.rerank.rerank_hits`).

        ``evidence``: ``text`` (default) gives every hit, whatever the mode, the boxes of the
        query's words on its page (:attr:`Hit.highlights`); ``none`` skips them; ``visual``
        adds the scored regions of :func:`where_on_page` (source "visual";
        ``evidence_progress`` follows the pages).
        """
        self._check_evidence(evidence)
        depth = resolve_depth(rerank, k, self.reranker)
        query = (query or "").strip()
        if isinstance(image, str | Path):
            image = load_query_image(image)
        if not query and image is None:
            raise QueryError("Ask a question (or give an image) to search for.")
        if k < 1:
            raise QueryError("k must be at least 1.")
        mode = mode or ("visual" if self.embedder is not None else "text")
        if mode not in MODES:
            raise QueryError(f"Unknown search mode '{mode}'; use one of {', '.join(MODES)}.")
        if mode in ("visual", "hybrid") and self.embedder is None:
            raise QueryError(f"{mode} search needs the model; use --mode text without it.")
        if mode == "text" and image is not None:
            raise QueryError("Text search cannot use an image; use visual or hybrid mode.")
        if mode == "text" and not query:
            raise QueryError("Text search needs words; an image query needs visual mode.")
        if image is not None:
            image = fit_image(image, self.render_settings())
        where = self._filter(documents, pages)
        hits = self._first_stage(query, image, max(k, depth), where, mode)
        if depth and self.reranker is not None:
            hits = self._reranked(hits, query, image, k, depth, notify, progress)
        hits = with_evidence(self.store, hits, query, evidence)
        if evidence == "visual":
            hits = self._with_visual(hits, query, image, evidence_progress)
        return hits

    def _reranked(
        self,
        hits: list[Hit],
        query: str,
        image: Image.Image | None,
        k: int,
        depth: int,
        notify: Callable[[str], None] | None,
        progress: Callable[[int, int], None] | None,
    ) -> list[Hit]:
        assert self.reranker is not None
        return rerank_hits(
            hits,
            query=query,
            image=image,
            store=self.store,
            reranker=self.reranker,
            k=k,
            depth=depth,
            notify=notify,
            progress=progress,
        )

    def _check_evidence(self, evidence: str) -> None:
        check_evidence(evidence)
        if evidence == "visual" and self.embedder is None:
            raise QueryError("Visual evidence needs the model; use --evidence text without it.")

    def _with_visual(
        self,
        hits: list[Hit],
        query: str,
        image: Image.Image | None,
        progress: ProgressFn | None,
    ) -> list[Hit]:
        """Each hit with its visual regions (best first) appended to its highlights; the
        query is embedded once for all pages."""
        if not hits:
            return hits
        vector = self.embed_query(query, image)
        meter = Meter("visual evidence", len(hits), progress)
        out = []
        for hit in hits:
            found = self._evidence(hit, vector)
            ranked = tuple(sorted(found.regions, key=lambda r: -r.score))
            out.append(replace(hit, highlights=(*hit.highlights, *ranked)))
            meter.step(file=hit.document)
        return out

    def where_on_page(
        self,
        hit: Hit,
        query: str | None = None,
        *,
        image: Image.Image | str | Path | None = None,
    ) -> VisualEvidence:
        """Visual evidence for one hit: its regions' scores, the heat map over its page
        image and the best region (an approximation, see :mod:`retriever.evidence.visual`);
        the app draws it with :func:`retriever.evidence.visual.heatmap_image`."""
        self._check_evidence("visual")
        query = (query or "").strip()
        if isinstance(image, str | Path):
            image = load_query_image(image)
        if image is not None:
            image = fit_image(image, self.render_settings())
        if not query and image is None:
            raise QueryError("Ask a question (or give an image) to locate on the page.")
        return self._evidence(hit, self.embed_query(query, image))

    def _evidence(self, hit: Hit, vector: np.ndarray) -> VisualEvidence:
        assert self.embedder is not None
        try:
            with Image.open(hit.image) as stored:
                page = stored.convert("RGB")
        except OSError as exc:
            raise QueryError(f"The image of page {hit.page} of {hit.document} is missing.") from exc
        return visual_evidence(self.embedder, page, vector, cache=self.evidence_cache)

    def _first_stage(
        self, query: str, image: Image.Image | None, k: int, where: PageFilter | None, mode: str
    ) -> list[Hit]:
        """The ``k`` best pages by the embedding, BM25, or both fused (filters applied
        inside the store's search)."""
        if mode == "visual":
            ranked = self._visual(query, image, k, where)
            scores = {pid: {"visual": s} for pid, s in ranked}
            waiting = self._pending_ids(where) if query else []
            if waiting:
                # Pages still waiting for vectors are invisible to the model; their text
                # layer still answers, so fuse them in (marked ``pending``) rather than
                # returning few or no pages right after an upload.
                txt = self.store.search_text(query, max(50, 4 * k), page_ids=waiting)
                if txt:
                    ranked, scores = reciprocal_rank_fusion({"visual": ranked, "text": txt}, k)
        elif mode == "text":
            ranked = self.store.search_text(query, k, where=where)
            scores = {pid: {"text": s} for pid, s in ranked}
        else:
            # Both rankings to the same depth, fused by RRF inside the store (Milvus:
            # hybrid_search with RRFRanker(RRF_K); local: reciprocal_rank_fusion).
            vector = self.embed_query(query, image) if self.store.dim is not None else None
            ranked, scores = self.store.search_hybrid(
                vector, query, k, depth=max(50, 4 * k), where=where
            )
        return self._hits(ranked, scores, query)

    def _pending_ids(self, where: PageFilter | None) -> list[int]:
        """Ids of the pages (within the filter) that have no vector yet."""
        if not self.store.stats().pending:
            return []
        docs = list(where.documents) if where and where.documents is not None else None
        return self.store.page_ids(
            documents=docs,
            first=where.first if where else None,
            last=where.last if where else None,
            embedded=False,
        )

    def render_settings(self) -> RenderSettings:
        """The collection's page settings (query images are prepared the same way)."""
        stored = self.store.render_settings()
        if stored:
            fields = RenderSettings.__dataclass_fields__
            return RenderSettings(**{k: v for k, v in stored.items() if k in fields})
        tokens = (self.embedder.max_image_tokens if self.embedder is not None else None) or 1280
        return RenderSettings.for_tokens(int(tokens))

    def embed_query(self, query: str, image: Image.Image | None) -> np.ndarray:
        """GME query vector: the retrieval instruction with text, image or both.

        An image query (screenshot, photo, figure) goes through the model exactly as a page
        image does; :meth:`search` first prepares it like an image-file page
        (:func:`indexer.pages.fit_image`). Text and image together are one fused input.
        """
        assert self.embedder is not None
        if image is not None and query:
            return self.embedder.embed_queries([query], images=[image])[0]
        if image is not None:
            return self.embedder.embed_queries(images=[image])[0]
        return self.embedder.embed_queries([query])[0]

    def _visual(
        self, query: str, image: Image.Image | None, k: int, where: PageFilter | None
    ) -> list[tuple[int, float]]:
        if self.store.dim is None:
            return []  # nothing embedded yet (e.g. after 'index --text-only')
        vector = self.embed_query(query, image)
        return self.store.search(vector, k, where=where)

    def _filter(
        self, documents: Sequence[str | int] | None, pages: PageRange | str | None
    ) -> PageFilter | None:
        """Documents (by name or id) and a page range as a filter the store applies inside
        its search (never to a top-k afterwards)."""
        if isinstance(pages, str):
            pages = PageRange.parse(pages)
        if not documents and pages is None:
            return None
        doc_ids = tuple(self.store.document(d).id for d in documents) if documents else None
        return PageFilter(
            documents=doc_ids,
            first=pages.first if pages else None,
            last=pages.last if pages else None,
        )

    def _hits(
        self, ranked: list[tuple[int, float]], scores: dict[int, dict[str, float]], query: str
    ) -> list[Hit]:
        pages = self.store.pages_by_id(pid for pid, _ in ranked)
        docs = self.store.documents_by_id(p.document_id for p in pages.values())
        hits = []
        for pid, score in ranked:
            page = pages.get(pid)
            if page is None or page.document_id not in docs:
                continue  # removed while we searched
            doc = docs[page.document_id]
            hits.append(
                Hit(
                    document=doc.name,
                    document_id=doc.id,
                    path=doc.path,
                    page=page.number,
                    score=float(score),
                    image=str(self.store.image_path(page).resolve()),
                    snippet=snippet(page.text, query),
                    page_id=page.id,
                    text=page.text,
                    scores=scores.get(pid, {}),
                    pending=not page.embedded,
                )
            )
        return hits


def check_evidence(evidence: str) -> None:
    """A clear error for an ``evidence`` that cannot be given, before anything is searched."""
    if evidence not in EVIDENCE:
        raise QueryError(f"Unknown evidence '{evidence}'; use one of {', '.join(EVIDENCE)}.")


def with_evidence(store: Store, hits: list[Hit], query: str, evidence: str = "text") -> list[Hit]:
    """``hits`` with their highlights (and page words), read in one call to the store:
    the query's words on each page, whatever found the page (``evidence="none"``: as
    they are; ``"visual"`` gets the words too, its regions are added by the retriever).
    A page whose words were never stored gets none."""
    check_evidence(evidence)
    if evidence == "none" or not hits:
        return hits
    words = store.page_words_many([h.page_id for h in hits])
    stemmer = Stemmer()  # every page's words stemmed in one round trip
    if query:
        stemmer.prime(w.text for page in words.values() for w in page)
    out = []
    for hit in hits:
        page_words = tuple(words.get(hit.page_id) or ())
        found = tuple(text_highlights(page_words, query, stemmer=stemmer)) if query else ()
        out.append(replace(hit, highlights=found, words=page_words))
    return out


def snippet(text: str, query: str, *, width: int = 240) -> str:
    """A short excerpt of a page's text around the first query word it contains."""
    flat = " ".join(text.split())
    if not flat:
        return ""
    words = [w for w in re.findall(r"\w+", query.lower()) if len(w) > 2]
    lower = flat.lower()
    pos = min((lower.find(w) for w in words if lower.find(w) >= 0), default=-1)
    if pos < 0:
        return flat[:width] + ("…" if len(flat) > width else "")
    start = max(0, pos - width // 3)
    end = min(len(flat), start + width)
    return ("…" if start else "") + flat[start:end] + ("…" if end < len(flat) else "")


def load_query_image(path: str | Path | IO[bytes]) -> Image.Image:
    """Open an image given as a query (a path or an upload), with a clear error when it is
    not one. Decoded by :func:`indexer.pages.raster.decode_image`: only PNG, JPEG, WebP, TIFF,
    BMP and GIF, never more than a few million pixels kept.

    Orientation, transparency and size are left to :func:`indexer.pages.fit_image`, which
    :meth:`Retriever.search` applies to every query image.
    """
    name = getattr(path, "name", None) or str(path)
    try:
        return decode_image(path)
    except FileNotFoundError as exc:
        raise QueryError(f"Query image {name} does not exist.") from exc
    except ImageRefusedError as exc:
        raise QueryError(f"Query image {name} cannot be read ({exc}).") from exc
