"""``POST /v1/rerank``: the reranker a server was started with (``pagelens serve
--reranker``), in the shape vLLM, Jina and Cohere share, so that one GPU box reranks for
every laptop and any client of those APIs can use it.

Request: ``{"model", "query", "documents", "top_n", "return_documents"}``; the query and each
document are a string, vLLM's ``{"content": [{"type": "text", ...}, {"type": "image_url",
"image_url": {"url": ...}}]}`` or PageLens's ``{"text", "image"}``, with at most one image
each (a page is one image and its text). Images are data URLs (or http(s) URLs with
``--allow-url-images``), decoded by the same loader, limits and per-request pixel budget as
``/v1/embeddings``. Answer: ``{"id", "model", "results": [{"index", "relevance_score"}]}``,
best first (ties by index), cut to ``top_n``. The scores are the reranker's own float32
values, so a remote client gets exactly what the model gave here.

A server without a reranker answers 404 ``reranker_not_configured``. One rerank runs at a
time (the model is one GPU's worth); a request that waits longer than
:data:`RERANK_WAIT_S` for its turn gets 503 with ``Retry-After``.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from PIL import Image

from app.server.errors import ApiError
from app.server.images import PixelBudget
from app.server.limits import MAX_TEXT_CHARS
from app.server.schemas import InputItem, RerankContent, RerankItem, RerankRequest
from app.server.state import ServerState, State
from indexer.errors import EndpointError, PageLensError
from indexer.model.rerank import RerankPage, RerankQuery

router = APIRouter()

#: Seconds a rerank waits for the one before it to finish before the client gets 503.
RERANK_WAIT_S = 60.0


@router.post("/v1/rerank")
def rerank(body: RerankRequest, state: State) -> dict:
    """Runs in a worker thread (a sync endpoint): decoding and the model block."""
    reranker = state.require_reranker()
    if body.model is not None:
        state.check_reranker_model(body.model)
    items = document_items(body.documents, state.max_items)
    top_n = len(items) if body.top_n is None else body.top_n
    if top_n < 1:
        raise ApiError(400, "'top_n' must be at least 1.", param="top_n")
    budget = PixelBudget(state.max_request_pixels)
    text, image = read_item(body.query, "query", state, budget)
    try:
        query = RerankQuery(text=text, image=image)
    except ValueError as exc:
        raise ApiError(400, f"The query is empty: {exc}.", param="query") from exc
    pages = []
    for i, item in enumerate(items):
        doc_text, doc_image = read_item(item, f"documents[{i}]", state, budget)
        pages.append(RerankPage(image=doc_image, text=doc_text or ""))
    scores = run_reranker(state, reranker, query, pages)
    order = sorted(range(len(pages)), key=lambda i: (-float(scores[i]), i))[:top_n]
    results = []
    for i in order:
        result: dict = {"index": i, "relevance_score": float(scores[i])}
        if body.return_documents:
            result["document"] = {"text": pages[i].text}
        results.append(result)
    return {"id": f"rerank-{uuid.uuid4().hex}", "model": state.reranker_id, "results": results}


def document_items(documents: list[RerankItem] | RerankContent, max_items: int) -> list:
    """The request's documents as a list; vLLM's older single ``{"content": [...]}`` form
    means one document per part."""
    if isinstance(documents, RerankContent):
        items: list = [RerankContent(content=[part]) for part in documents.content]
    else:
        items = list(documents)
    if not items:
        raise ApiError(400, "'documents' must not be empty.", param="documents", code="empty_input")
    if len(items) > max_items:
        raise ApiError(
            400,
            f"Too many documents: {len(items)}; at most {max_items} per request.",
            param="documents",
            code="too_many_inputs",
        )
    return items


def read_item(
    item: RerankItem, param: str, state: ServerState, budget: PixelBudget
) -> tuple[str | None, Image.Image | None]:
    """One query or document as (text, decoded image), each checked against the limits."""
    text: str | None
    ref: str | None
    if isinstance(item, str):
        text, ref = item, None
    elif isinstance(item, InputItem):
        text, ref = item.text, item.image
    else:
        texts: list[str] = []
        refs: list[str] = []
        for j, part in enumerate(item.content):
            if part.type == "text":
                value = part.text
            else:
                value = part.image_url.url if part.image_url is not None else None
            if value is None:
                field = "text" if part.type == "text" else "image_url.url"
                raise ApiError(
                    400, f"A {part.type} part needs '{field}'.", param=f"{param}.content[{j}]"
                )
            (texts if part.type == "text" else refs).append(value)
        if len(refs) > 1:
            raise ApiError(
                400, "A query or document may hold one image.", param=param, code="invalid_image"
            )
        text, ref = ("\n".join(texts) if texts else None), (refs[0] if refs else None)
    if text is not None and len(text) > MAX_TEXT_CHARS:
        raise ApiError(
            400,
            f"A text has {len(text)} characters; at most {MAX_TEXT_CHARS}.",
            param=param,
            code="context_length_exceeded",
        )
    image = None
    if ref is not None:
        image = state.images.load(ref, f"{param}.image")
        budget.spend(image, param)
    return text, image


def run_reranker(state: ServerState, reranker, query: RerankQuery, pages: list[RerankPage]):
    """The scores, one rerank at a time; the model's own errors as API errors."""
    if not state.rerank_lock.acquire(timeout=RERANK_WAIT_S):
        raise ApiError(
            503,
            "The reranker is busy with other requests; retry after a short wait.",
            type="server_error",
            code="server_overloaded",
            headers={"Retry-After": "1"},
        )
    try:
        scores = reranker.score(query, pages)
    except EndpointError as exc:  # a reranker that is itself remote failed
        raise ApiError(503, str(exc), type="server_error", code="reranker_unavailable") from exc
    except PageLensError as exc:
        raise ApiError(400, str(exc), code="invalid_request") from exc
    finally:
        state.rerank_lock.release()
    if len(scores) != len(pages):
        raise ApiError(
            500, "The reranker answered the wrong number of scores.", type="server_error"
        )
    return scores
