"""``create_app``: wire one embedder, its batcher, the guards and the route modules together."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from app.server import (
    docs_page,
    routes_ask,
    routes_embeddings,
    routes_meta,
    routes_rerank,
    routes_search,
)
from app.server.batching import BatchedEmbedder, DynamicBatcher
from app.server.errors import install_error_handlers
from app.server.fetch import UrlImageFetcher
from app.server.guard import GuardMiddleware
from app.server.images import ImageLoader
from app.server.limits import (
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_ITEMS,
    MAX_REQUEST_BYTES,
    MAX_REQUEST_PIXELS,
)
from app.server.named_collections import CollectionCache, resolve_collection_name
from app.server.state import ServerState, model_names, public_model_id, reranker_names
from app.server.tokens import check_item
from app.warmup import prepare_queries_in_background
from indexer.model import Embedder
from indexer.model.rerank import Reranker
from retriever.ask import LLMSettings

#: The route modules, in the order their paths appear in the OpenAPI document.
ROUTERS = (
    routes_meta.router,
    routes_embeddings.router,
    routes_search.router,
    routes_ask.router,
    routes_rerank.router,
)


def create_app(
    embedder: Embedder,
    *,
    collection_resolver: Callable[[str | None], Path | str] | None = None,
    api_key: str | None = None,
    allow_url_images: bool = False,
    url_fetcher: UrlImageFetcher | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 1024,
    max_items: int = MAX_ITEMS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_request_pixels: int = MAX_REQUEST_PIXELS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    model_aliases: tuple[str, ...] = (),
    llm: LLMSettings | None = None,
    allowed_hosts: Iterable[str] | None = None,
    prepare_queries: bool = True,
    reranker: Reranker | None = None,
) -> FastAPI:
    """The API app around one embedder (see :mod:`app.server` for the endpoints).

    ``collection_resolver(name)`` maps a request's collection name (None: the default) to a
    folder or a Milvus address; by default names under ``PAGELENS_HOME``
    (``named_collections.make_resolver`` is ``pagelens serve``'s rule). ``url_fetcher``
    replaces the default :class:`UrlImageFetcher` (it implies ``allow_url_images``). ``llm``
    is where ``/v1/ask`` sends pages (default: ``PAGELENS_LLM_*`` read per request; without
    a URL ``/v1/ask`` answers 503 and sends nothing). ``allowed_hosts`` (host names, without
    ports) limits the ``Host`` header a request may carry, against DNS rebinding; ``pagelens
    serve`` passes the loopback names when it binds to loopback.
    ``api_key=""`` is refused: an empty key would silently mean no authentication.
    ``prepare_queries``: at start-up, decide the text-query weights in the background
    (:mod:`app.warmup`), so that the first query is already on the fast path.
    ``reranker``: turns ``/v1/rerank`` on (without one it answers 404), is listed in
    ``/v1/models`` beside the embedder, and is the second stage ``/v1/search``
    (``"rerank": N``) and ``/v1/ask`` use; None: no reranking (a request asking for it is
    a 400).
    """
    if api_key is not None and not api_key.strip():
        raise ValueError("api_key must not be empty (None means no key)")
    batcher = DynamicBatcher(
        embedder,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        check=check_item,
    )
    if url_fetcher is None and allow_url_images:
        url_fetcher = UrlImageFetcher()
    state = ServerState(
        embedder=embedder,
        batcher=batcher,
        shared=BatchedEmbedder(batcher),
        images=ImageLoader(
            fetcher=url_fetcher, max_bytes=max_image_bytes, max_pixels=max_image_pixels
        ),
        collections=CollectionCache(collection_resolver or resolve_collection_name),
        served_id=public_model_id(embedder.model_id),
        accepted=model_names(embedder.model_id, tuple(model_aliases)),
        max_items=max_items,
        llm=llm,
        max_request_pixels=max_request_pixels,
        reranker=reranker,
        reranker_id=public_model_id(reranker.model_id) if reranker is not None else "",
        reranker_accepted=reranker_names(reranker.model_id) if reranker is not None else set(),
    )

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        _app.state.query_warmup = (
            prepare_queries_in_background(embedder) if prepare_queries else None
        )
        yield
        await run_in_threadpool(batcher.close)
        state.collections.close()
        close = getattr(reranker, "close", None)
        if callable(close):  # a remote reranker's connections
            await run_in_threadpool(close)

    app = FastAPI(
        title="PageLens API",
        version="1",
        summary="OpenAI-compatible embeddings (text, image, fused) and page search, with GME.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs is docs_page instead
        redoc_url=None,
    )
    app.state.pagelens = state
    app.state.batcher = batcher
    app.state.embedder = embedder
    app.state.collections = state.collections
    install_error_handlers(app)
    app.add_middleware(
        GuardMiddleware,
        api_key=api_key,
        max_request_bytes=max_request_bytes,
        allowed_hosts=allowed_hosts,
    )
    for router in ROUTERS:
        app.include_router(router)
    docs_page.install(app)
    return app
