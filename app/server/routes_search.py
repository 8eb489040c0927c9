"""``POST /v1/search`` and ``GET /v1/pages/{id}/image``: page search over named collections."""

from __future__ import annotations

import logging
import urllib.parse
from pathlib import Path

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.server.batching import BatcherClosedError, QueueFullError
from app.server.errors import ApiError, InputTooLongError, overloaded
from app.server.limits import MAX_K, MAX_TEXT_CHARS
from app.server.schemas import SearchRequest
from app.server.state import State
from indexer.errors import (
    CollectionError,
    DocumentNotFoundError,
    ModelMismatchError,
    PageLensError,
    QueryError,
)
from indexer.stores import is_milvus_spec
from retriever.evidence.visual import NOTE as VISUAL_NOTE
from retriever.rerank import MAX_DEPTH
from retriever.search import Hit, check_evidence

log = logging.getLogger(__name__)

router = APIRouter()

#: Largest id SQLite can store; larger ones in a request cannot name anything.
MAX_ID = 2**63 - 1


@router.post("/v1/search")
def search(body: SearchRequest, state: State) -> dict:
    """Runs in a worker thread (a sync endpoint): the retriever blocks on the batcher."""
    notes: list[str] = []
    hits, pending = find_hits(body, state, notes)
    out: dict = {"hits": [hit_json(h, body.collection) for h in hits], "pending": pending}
    if body.evidence == "visual":
        out["evidence_note"] = VISUAL_NOTE
    if notes:  # the reranker failed: these are the first-stage hits, and the client is told
        out["warnings"] = notes
    return out


def find_hits(
    body: SearchRequest, state: State, notes: list[str] | None = None
) -> tuple[list[Hit], int]:
    """The hits of a search request and the pages still pending; API errors for bad ones.

    Shared by ``/v1/search`` and ``/v1/ask`` so both validate and fail the same way. With
    the server's reranker, the first ``rerank`` hits (default 20) are reranked; when it
    fails, the first-stage hits come back, its one line logged and added to ``notes``.
    """
    from retriever.search import Retriever

    if not 1 <= body.k <= MAX_K:
        raise ApiError(400, f"'k' must be between 1 and {MAX_K}.", param="k")
    if body.rerank is not None and not 0 <= body.rerank <= MAX_DEPTH:
        raise ApiError(400, f"'rerank' must be between 0 and {MAX_DEPTH}.", param="rerank")
    if body.rerank and state.reranker is None:
        raise ApiError(400, "This server has no reranker; send 'rerank': 0.", param="rerank")
    if body.rerank and body.rerank < body.k:
        raise ApiError(
            400, f"'k' ({body.k}) must not exceed 'rerank' ({body.rerank}).", param="rerank"
        )
    try:
        check_evidence(body.evidence)  # an unknown name is a 400 before anything loads
    except QueryError as exc:
        raise ApiError(400, str(exc), param="evidence", code="evidence_not_available") from exc
    if body.query is not None and len(body.query) > MAX_TEXT_CHARS:
        raise ApiError(400, "The query is too long.", param="query", code="context_length_exceeded")
    store = state.collections.get(body.collection)
    picture = state.images.load(body.image, "image") if body.image else None
    for doc in body.documents or ():
        if isinstance(doc, int) and not 0 <= doc <= MAX_ID:
            raise ApiError(404, f"No document {doc}.", param="documents", code="document_not_found")
    try:
        if body.evidence == "visual" and body.mode == "text":
            raise ApiError(
                400,
                "'evidence': 'visual' needs the model: not with 'mode': 'text'.",
                param="evidence",
            )
        retriever = Retriever(
            None if body.mode == "text" else state.shared,
            store,
            reranker=state.reranker,
            evidence_cache=state.evidence_cache,
        )
        hits = retriever.search(
            body.query,
            body.k,
            image=picture,
            documents=body.documents or None,
            pages=body.pages,
            mode=body.mode,
            rerank=body.rerank,
            notify=lambda line: _rerank_failed(line, notes),
            evidence=body.evidence,
        )
        pending = retriever.pending()
    except (QueueFullError, BatcherClosedError) as exc:
        raise overloaded(exc) from exc
    except CollectionError as exc:
        message = state.collections.scrub(str(exc), body.collection)
        if is_milvus_spec(store.location):  # its server failed: not the client's fault
            raise ApiError(503, message, code="collection_unavailable") from exc
        raise search_error(exc, message) from exc
    except (InputTooLongError, PageLensError) as exc:
        raise search_error(exc, state.collections.scrub(str(exc), body.collection)) from exc
    return hits, pending


def _rerank_failed(line: str, notes: list[str] | None) -> None:
    """The reranker failed and the first-stage hits are answered: logged for the operator,
    and told to the client when the route shows notes."""
    log.warning("%s", line)
    if notes is not None:
        notes.append(line)


def search_error(exc: Exception, message: str) -> ApiError:
    """The 4xx for a library error of a search (the message already scrubbed of paths)."""
    if isinstance(exc, InputTooLongError):
        return ApiError(400, message, param="query", code=exc.code)
    if isinstance(exc, DocumentNotFoundError):
        return ApiError(404, message, param="documents", code="document_not_found")
    if isinstance(exc, ModelMismatchError):
        return ApiError(409, message, param="collection", code="model_mismatch")
    if isinstance(exc, QueryError):
        return ApiError(400, message, code="invalid_query")
    return ApiError(400, message)


def image_url(page_id: int, collection: str | None) -> str:
    """The API path of a page's image (``GET /v1/pages/{id}/image``)."""
    suffix = "?" + urllib.parse.urlencode({"collection": collection}) if collection else ""
    return f"/v1/pages/{page_id}/image{suffix}"


def hit_json(h: Hit, collection: str | None) -> dict:
    """A hit as the API shows it: no server paths, the image as an API URL."""
    return {
        "document": h.document,
        "document_id": h.document_id,
        "page": h.page,
        "score": round(float(h.score), 6),
        "scores": {k: round(float(v), 6) for k, v in h.scores.items()},
        "page_id": h.page_id,
        "snippet": h.snippet,
        "image_url": image_url(h.page_id, collection),
        "highlights": [hl.as_dict() for hl in h.highlights],
    }


@router.get("/v1/pages/{page_id}/image", response_class=FileResponse)
def page_image(
    page_id: int,
    state: State,
    collection: str | None = Query(default=None),
) -> FileResponse:
    """The stored PNG of one page, only from inside the collection's folder."""
    store = state.collections.get(collection)
    try:
        if not 0 <= page_id <= MAX_ID:  # SQLite integers end at 2**63 - 1
            raise DocumentNotFoundError(f"No page {page_id} in collection {store.location}.")
        page = store.page(page_id)
        # a bucket-backed store downloads the image here: its failure is a CollectionError too
        path = store.image_path(page).resolve()
    except DocumentNotFoundError as exc:
        message = state.collections.scrub(str(exc), collection)
        raise ApiError(404, message, param="page_id", code="page_not_found") from exc
    except CollectionError as exc:  # the collection's (Milvus) server or image store failed
        message = state.collections.scrub(str(exc), collection)
        raise ApiError(503, message, code="collection_unavailable") from exc
    root = getattr(store, "path", None)  # a local collection: only files inside its folder
    inside = root is None or Path(root).resolve() in path.parents
    if not inside or not path.is_file():
        raise ApiError(404, f"The image of page {page_id} is missing.", code="page_not_found")
    return FileResponse(path, media_type="image/png")
