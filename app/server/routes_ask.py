"""``POST /v1/ask``: search, then answer from the pages with the configured vision LLM.

Body: ``{"question", "k", "collection", "documents", "mode", "pages", "stream"}``. The pages
are found exactly as ``/v1/search`` finds them (same validation and errors), then sent with
the question to the LLM the *server* is configured with (``PAGELENS_LLM_URL`` etc., see
:mod:`retriever.ask`); a server without one answers 503 ``llm_not_configured`` and sends
nothing. Auth and request limits are the app's, as for every endpoint.

Non-streaming: ``{"answer", "citations": [{"document", "page", "image", "sent",
"page_id", "highlights"}], "hits": [...], "model"}``; a citation's ``image`` is the page's
API URL (``/v1/pages/{id}/image``), or null for a cited page that was not sent (``sent:
false``); its ``highlights`` are the boxes of what the answer quotes from that page.

Streaming (``"stream": true``): server-sent events: ``event: hits`` (the pages, before the
LLM is called), ``event: delta`` ``{"text"}`` per piece of the answer, then ``event: done``
with the same object as the non-streamed answer; a failure after the stream began is an
``event: error`` with an OpenAI-style error object. Failures before it began (no LLM, too
many pages, the LLM refusing or unreachable after retries) are ordinary HTTP errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Literal

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import Field

from app.server.errors import ApiError
from app.server.limits import MAX_TEXT_CHARS
from app.server.routes_search import find_hits, hit_json, image_url
from app.server.schemas import CheckedBody, SearchRequest
from app.server.state import State
from retriever.ask import (
    Answer,
    AskLimitError,
    LLMError,
    LLMNotConfiguredError,
    LLMSettings,
    ask,
    ask_stream,
    check_page_count,
)
from retriever.search import Hit

router = APIRouter()


class AskRequest(CheckedBody):  # strings checked as in every body: a lone surrogate is a 400
    question: str = Field(description="The question, answered from the pages found for it.")
    k: int = Field(default=5, description="How many pages to find and send.")
    collection: str | None = Field(default=None, description="A collection name.")
    documents: list[str | int] | None = None
    mode: Literal["visual", "text", "hybrid"] | None = None
    pages: str | None = Field(default=None, description="A page range, e.g. 3-7.")
    stream: bool = Field(default=False, description="Server-sent events as the answer arrives.")


def answer_json(answer: Answer, collection: str | None) -> dict:
    by_page: dict[tuple[str | None, int | None], Hit] = {
        (h.document, h.page): h for h in answer.hits
    }
    citations = []
    for c in answer.citations:
        hit = by_page.get((c.document, c.page)) if c.sent else None
        citations.append(
            {
                "document": c.document,
                "page": c.page,
                "image": image_url(hit.page_id, collection) if hit else None,
                "sent": c.sent,
                "page_id": hit.page_id if hit else None,
                "highlights": [hl.as_dict() for hl in c.highlights],
            }
        )
    return {
        "answer": answer.text,
        "citations": citations,
        "hits": [hit_json(h, collection) for h in answer.hits],
        "model": answer.model,
    }


def llm_api_error(exc: LLMError) -> ApiError:
    """An LLM failure as the API answers it."""
    if isinstance(exc, LLMNotConfiguredError):
        return ApiError(503, str(exc), type="server_error", code=exc.code)
    if isinstance(exc, AskLimitError):
        return ApiError(400, str(exc), param="k", code=exc.code)
    if exc.status == 429:
        return ApiError(429, str(exc), type="server_error", code=exc.code)
    return ApiError(502, str(exc), type="server_error", code=exc.code)


def _settings(state: State) -> LLMSettings:
    settings = state.llm or LLMSettings.from_env()
    if not settings.configured:
        raise llm_api_error(LLMNotConfiguredError())
    return settings


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


@router.post("/v1/ask", response_model=None)
async def ask_route(body: AskRequest, state: State) -> JSONResponse | StreamingResponse:
    """Answer ``question`` from its best pages, cited; ``stream`` for server-sent events."""
    if not body.question.strip():
        raise ApiError(400, "'question' must not be empty.", param="question")
    if len(body.question) > MAX_TEXT_CHARS:
        raise ApiError(400, "The question is too long.", param="question")
    settings = _settings(state)  # before searching: nothing to do without an LLM
    search = SearchRequest(
        query=body.question,
        k=body.k,
        collection=body.collection,
        documents=body.documents,
        mode=body.mode,
        pages=body.pages,
    )
    try:
        check_page_count(body.k, settings)
    except AskLimitError as exc:
        raise llm_api_error(exc) from exc
    hits, _pending = await run_in_threadpool(find_hits, search, state)
    if not hits:
        raise ApiError(404, "No pages were found to ask about.", code="no_pages")
    collection = body.collection
    if not body.stream:
        try:
            answer = await run_in_threadpool(ask, body.question, hits, settings=settings)
        except LLMError as exc:
            raise llm_api_error(exc) from exc
        return JSONResponse(answer_json(answer, collection))

    def start():
        stream = ask_stream(body.question, hits, settings=settings)
        pieces = iter(stream)
        first = next(pieces, None)  # the request is sent here: its errors are HTTP errors
        return stream, pieces, first

    try:
        stream, pieces, first = await run_in_threadpool(start)
    except LLMError as exc:
        raise llm_api_error(exc) from exc

    def events() -> Iterator[bytes]:
        yield _sse("hits", {"hits": [hit_json(h, collection) for h in hits]})
        try:
            if first is not None:
                yield _sse("delta", {"text": first})
            for piece in pieces:
                yield _sse("delta", {"text": piece})
        except LLMError as exc:
            err = llm_api_error(exc)
            yield _sse(
                "error", {"error": {"message": err.message, "type": err.type, "code": err.code}}
            )
            return
        assert stream.answer is not None
        yield _sse("done", answer_json(stream.answer, collection))

    return StreamingResponse(
        events(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
