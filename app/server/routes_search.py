"""``POST /v1/search`` and ``GET /v1/pages/{id}/image``: page search over named collections."""

from __future__ import annotations

import urllib.parse

from fastapi import APIRouter, Query
from fastapi.responses import FileResponse

from app.batching import BatcherClosedError, QueueFullError
from app.server.errors import ApiError, InputTooLongError, overloaded
from app.server.limits import MAX_K, MAX_TEXT_CHARS
from app.server.schemas import SearchRequest
from app.server.state import State
from indexer.errors import DocumentNotFoundError, ModelMismatchError, PageLensError, QueryError
from retriever.search import Hit

router = APIRouter()


@router.post("/v1/search")
def search(body: SearchRequest, state: State) -> dict:
    """Runs in a worker thread (a sync endpoint): the retriever blocks on the batcher."""
    hits, pending = find_hits(body, state)
    return {"hits": [hit_json(h, body.collection) for h in hits], "pending": pending}


def find_hits(body: SearchRequest, state: State) -> tuple[list[Hit], int]:
    """The hits of a search request and the pages still pending; API errors for bad ones.

    Shared by ``/v1/search`` and ``/v1/ask`` so both validate and fail the same way.
    """
    from retriever.search import Retriever

    if not 1 <= body.k <= MAX_K:
        raise ApiError(400, f"'k' must be between 1 and {MAX_K}.", param="k")
    if body.query is not None and len(body.query) > MAX_TEXT_CHARS:
        raise ApiError(400, "The query is too long.", param="query", code="context_length_exceeded")
    store = state.collections.get(body.collection)
    picture = state.images.load(body.image, "image") if body.image else None
    try:
        retriever = Retriever(None if body.mode == "text" else state.shared, store)
        hits = retriever.search(
            body.query,
            body.k,
            image=picture,
            documents=body.documents or None,
            pages=body.pages,
            mode=body.mode,
        )
        pending = retriever.pending()
    except (QueueFullError, BatcherClosedError) as exc:
        raise overloaded(exc) from exc
    except InputTooLongError as exc:
        raise ApiError(400, str(exc), param="query", code=exc.code) from exc
    except DocumentNotFoundError as exc:
        raise ApiError(404, str(exc), param="documents", code="document_not_found") from exc
    except ModelMismatchError as exc:
        raise ApiError(409, str(exc), param="collection", code="model_mismatch") from exc
    except QueryError as exc:
        raise ApiError(400, str(exc), code="invalid_query") from exc
    except PageLensError as exc:
        raise ApiError(400, str(exc)) from exc
    return hits, pending


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
        page = store.page(page_id)
    except DocumentNotFoundError as exc:
        raise ApiError(404, str(exc), param="page_id", code="page_not_found") from exc
    path = store.image_path(page).resolve()
    if store.path.resolve() not in path.parents or not path.is_file():
        raise ApiError(404, f"The image of page {page_id} is missing.", code="page_not_found")
    return FileResponse(path, media_type="image/png")
