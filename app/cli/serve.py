"""``pagelens serve``: the OpenAI-compatible embeddings and search API (see app/server/)."""

from __future__ import annotations

import typer

from app.cli.common import fail, options, run_guarded, say
from app.cli.root import cli
from app.exposure import decide, require_secret
from indexer.config import API_KEY_ENV
from indexer.errors import UsageError
from indexer.stores import is_milvus_spec


@cli.command("serve")
def serve(
    ctx: typer.Context,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback default)."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar=API_KEY_ENV,
        help="Require 'Authorization: Bearer KEY' on every endpoint but /health. Prefer "
        "the PAGELENS_API_KEY variable: a key on the command line shows in `ps`.",
    ),
    allow_host: list[str] = typer.Option(
        [],
        "--allow-host",
        help="On a loopback bind, also answer to this Host name (repeatable); other names "
        "are refused, against DNS rebinding.",
    ),
    allow_url_images: bool = typer.Option(
        False,
        "--allow-url-images",
        help="Let requests name images by http(s) URL (public addresses only); "
        "data URLs always work.",
    ),
    allow_collection: list[str] = typer.Option(
        [],
        "--allow-collection",
        metavar="MILVUS_ADDRESS",
        help="Also let requests name this milvus://HOST:PORT/NAME collection (repeatable). "
        "Requests may name the --collection one, local collections by name, and these; any "
        "other address is refused (the server never connects where a request says).",
    ),
    max_batch: int = typer.Option(16, "--max-batch", help="Most inputs per model batch."),
    max_wait_ms: float = typer.Option(
        10.0, "--max-wait-ms", help="How long a batch waits to fill, in milliseconds."
    ),
    max_queue: int = typer.Option(
        1024, "--max-queue", help="Inputs allowed to wait; beyond, requests get 503."
    ),
    reranker: str = typer.Option(
        None,
        "--reranker",
        metavar="MODEL",
        help="Also serve /v1/rerank with this reranker (a model, or a /v1/rerank endpoint "
        "URL), so that clients can rerank through this server.",
    ),
) -> None:
    """Serve OpenAI-compatible /v1/embeddings and /v1/search (and /v1/rerank) over HTTP."""
    if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
        fail("--max-batch and --max-queue must be >= 1, --max-wait-ms >= 0", 2)
    if api_key is not None and not api_key.strip():
        fail(
            "--api-key (or PAGELENS_API_KEY) is empty, which would turn authentication off; "
            "give a key, or leave both unset to serve without one",
            2,
        )
    exposure = decide(host, allow_host)
    try:  # the one exposure rule of serve, app and mcp (app/exposure.py)
        require_secret(
            exposure,
            api_key,
            what="pagelens serve",
            secret_name=f"an API key (--api-key or {API_KEY_ENV})",
            default="127.0.0.1",
        )
    except UsageError as exc:
        fail(str(exc), 2)
    bad = [spec for spec in allow_collection if not is_milvus_spec(spec)]
    if bad:
        fail(f"--allow-collection takes milvus:// addresses, not {bad[0]!r}", 2)
    opts = options(ctx)

    def body() -> None:
        import uvicorn

        from app.server import create_app
        from app.server.named_collections import make_resolver, milvus_key
        from indexer.model.rerank import load_reranker
        from retriever.ask import LLMSettings

        llm = LLMSettings.from_env()  # bad PAGELENS_LLM_* values fail here, at start
        # The reranker first: a wrong name fails in seconds, before the embedder loads.
        rerank_model = load_reranker(reranker) if reranker else opts.reranker()
        embedder = opts.embedder()
        for spec in allow_collection:
            milvus_key(spec)  # a malformed address fails here, at start
        # The operator's --collection (a name, a path or a Milvus address) is the default;
        # requests may name collections under PAGELENS_HOME and the configured addresses.
        resolver = make_resolver(opts.collection_spec, allow_collection)

        app = create_app(
            embedder,
            collection_resolver=resolver,
            api_key=api_key,
            allow_url_images=allow_url_images,
            max_batch=max_batch,
            max_wait_ms=max_wait_ms,
            max_queue=max_queue,
            llm=llm,
            allowed_hosts=exposure.allowed_hosts,
            reranker=rerank_model,
        )
        say(
            f"PageLens API on http://{exposure.address}:{port}/v1 "
            f"(model {embedder.model_id}); Ctrl+C stops"
        )
        say(f"/v1/ask sends pages to {llm.destination()}")
        if rerank_model is not None:
            say(f"/v1/rerank reranks with {rerank_model.model_id}")
        uvicorn.run(app, host=exposure.address, port=port, log_level="info")

    run_guarded(body)
