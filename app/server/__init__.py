"""OpenAI-compatible embeddings API and page search over HTTP (``pagelens serve``).

Build the app with :func:`create_app` and an injected embedder (nothing global)::

    app = create_app(load_embedder(...), api_key="secret")

Endpoints
---------
``POST /v1/embeddings``
    OpenAI's request and response shapes (``model``, ``input``, ``encoding_format`` "float" or
    "base64" = little-endian float32, ``dimensions``, ``user``), plus PageLens extensions:

    * list items may be objects: ``{"text": ...}``, ``{"image": URL}`` or both (fused input);
      an image is a ``data:image/...;base64,`` URL, or an ``http(s)`` URL when the server
      runs with ``--allow-url-images``;
    * ``"input_type": "query"`` embeds on the query side of retrieval (GME's
      :data:`~indexer.embedder.QUERY_INSTRUCTION`); ``"document"`` (the default) uses the
      model's default instruction; ``"instruction"`` gives any other instruction (not both).

    The vectors are exactly those of the library's ``embed_texts`` / ``embed_images`` /
    ``embed_fused`` for the same inputs and instruction. ``dimensions`` truncates then
    re-normalises (as OpenAI does for its v3 models). ``usage.prompt_tokens`` counts the tokens
    of every sequence the model runs (prompt template, instruction and visual tokens included)
    when the embedder can count them (GME's ``count_tokens``); otherwise it is an estimate:
    one token per word or punctuation mark of the text, images not counted.
    An input longer than the model's limit (GME: 1800 tokens) is refused with 400
    ``context_length_exceeded``, like OpenAI, rather than silently truncated.
``POST /v1/search``
    ``{"query", "image", "k", "collection", "documents", "mode", "pages"}`` ->
    ``{"hits": [...], "pending": n}``. ``collection``: none (the server's ``--collection``,
    which may be a Milvus address), a name under ``PAGELENS_HOME`` (never a path), or a
    ``milvus://`` address the server was started with (``--collection``,
    ``--allow-collection``); other addresses get 403 ``collection_not_allowed`` and are
    never contacted (see :mod:`app.server.named_collections`).
``GET /v1/pages/{id}/image?collection=NAME``
    The stored page image (PNG).
``POST /v1/ask``
    ``{"question", "k", "collection", "documents", "mode", "pages", "stream"}`` -> the pages
    found as by ``/v1/search``, sent with the question to the server's configured vision LLM
    (``PAGELENS_LLM_URL``; 503 ``llm_not_configured`` and nothing sent without one) ->
    ``{"answer", "citations", "hits", "model"}``, or server-sent events with ``"stream": true``
    (see :mod:`app.server.routes_ask`).
``POST /v1/rerank``
    With a reranker (``create_app(..., reranker=)``, ``pagelens serve --reranker``): the
    ``/v1/rerank`` shape of vLLM, Jina and Cohere (``model``, ``query``, ``documents``,
    ``top_n``) -> ``{"results": [{"index", "relevance_score"}]}`` best first; documents and
    query may carry one image each (see :mod:`app.server.routes_rerank`). Without one: 404
    ``reranker_not_configured``.
``GET /v1/models``, ``GET /v1/models/{id}``
    OpenAI's list / model shapes (the reranker listed too, with ``"task": "rerank"``).
``GET /health``
    ``{"status": "ok", "model", "dim", "batches", "max_batch_seen", ...}`` (never needs a key).

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` objects. With an
``api_key`` every path but ``/health`` needs ``Authorization: Bearer KEY``.

Model work goes through one :class:`~app.server.batching.DynamicBatcher` (one worker thread owns
the model and its tokenizer), so concurrent requests are embedded together.

Layout (one job per module)
---------------------------
``factory``            :func:`create_app`: builds the :class:`~app.server.state.ServerState`,
                       error handlers, guard middleware, and includes the routers.
``state``              what routes share (``Depends(get_state)``): embedder, batcher, images,
                       collections, model names.
``routes_meta``        ``/health``, ``/v1/models``.
``routes_embeddings``  ``/v1/embeddings``.
``routes_search``      ``/v1/search``, ``/v1/pages/{id}/image``.
``routes_ask``         ``/v1/ask`` (search, then the configured LLM; SSE streaming).
``routes_rerank``      ``/v1/rerank`` (the server's reranker, one rerank at a time).
``schemas``            request bodies (pydantic).
``errors``             :class:`ApiError` and the OpenAI-style error handlers.
``guard``              ASGI middleware: API key and body-size limit.
``images``             data URLs / URLs -> PIL images, with limits.
``fetch``              :class:`UrlImageFetcher`, the SSRF-guarded URL fetcher.
``tokens``             token counts and the model-length check (batcher thread).
``named_collections``  collection names -> folders -> open stores.
``limits``             the size limits.
``batching``           the dynamic batcher in front of the embedder (only the server uses it).

This package may import app.warmup, retriever and indexer; never app.cli or app.web.

A new endpoint goes in its own ``routes_*.py`` (an ``APIRouter``) added to
:data:`app.server.factory.ROUTERS`.
"""

from app.server.errors import ApiError, InputTooLongError, error_response
from app.server.factory import ROUTERS, create_app
from app.server.fetch import UrlImageFetcher
from app.server.guard import GuardMiddleware
from app.server.images import ImageLoader
from app.server.limits import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_INSTRUCTION_CHARS,
    MAX_ITEMS,
    MAX_K,
    MAX_REQUEST_BYTES,
    MAX_TEXT_CHARS,
)
from app.server.named_collections import CollectionCache, resolve_collection_name
from app.server.state import ServerState, get_state, model_names, public_model_id
from app.server.tokens import check_item, estimate_tokens

__all__ = [
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "MAX_INSTRUCTION_CHARS",
    "MAX_ITEMS",
    "MAX_K",
    "MAX_REQUEST_BYTES",
    "MAX_TEXT_CHARS",
    "ROUTERS",
    "ApiError",
    "CollectionCache",
    "GuardMiddleware",
    "ImageLoader",
    "InputTooLongError",
    "ServerState",
    "UrlImageFetcher",
    "check_item",
    "create_app",
    "error_response",
    "estimate_tokens",
    "get_state",
    "model_names",
    "public_model_id",
    "resolve_collection_name",
]
