"""``pagelens mcp``: PageLens as an MCP server for agents (see app/mcp_server.py).

stdio by default (what Claude Desktop and IDE agents launch); ``--http`` serves MCP's
streamable HTTP on loopback (``/mcp``). The exposure rule is ``serve``'s and the app's
(:mod:`app.exposure`): beyond loopback ``--api-key`` is required; on a loopback bind only the
loopback names and the bound address are answered to (Host header, against DNS rebinding).
"""

from __future__ import annotations

from typing import Any

import typer

from app.cli.common import fail, options, run_guarded, say
from app.cli.root import cli
from app.exposure import Exposure, decide, require_secret
from indexer.config import API_KEY_ENV
from indexer.errors import UsageError


@cli.command("mcp")
def mcp_cmd(
    ctx: typer.Context,
    http: bool = typer.Option(
        False, "--http", help="Serve streamable HTTP at http://HOST:PORT/mcp instead of stdio."
    ),
    host: str = typer.Option("127.0.0.1", "--host", help="Address for --http (loopback default)."),
    port: int = typer.Option(8765, "--port", help="TCP port for --http."),
    api_key: str = typer.Option(
        None,
        "--api-key",
        envvar=API_KEY_ENV,
        help="With --http: require 'Authorization: Bearer KEY' (needed beyond loopback).",
    ),
    max_side: int = typer.Option(
        1568,
        "--max-side",
        help="Longest side of the page images returned, in pixels (smaller: lighter results).",
    ),
) -> None:
    """Run PageLens as an MCP server: agents search pages, read page images and text."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        fail("the MCP SDK is not installed: pip install 'pagelens[mcp]'")
    if max_side < 64:
        fail("--max-side must be at least 64 pixels", 2)
    if http and api_key is not None and not api_key.strip():
        fail("--api-key (or PAGELENS_API_KEY) is empty, which would turn authentication off", 2)
    exposure = decide(host)
    if http:
        try:
            require_secret(
                exposure,
                api_key,
                what="pagelens mcp --http",
                secret_name=f"an API key (--api-key or {API_KEY_ENV})",
                default="127.0.0.1",
            )
        except UsageError as exc:
            fail(str(exc), 2)
    opts = options(ctx)

    def body() -> None:
        from app.mcp_server import build_server
        from retriever.export import ExportSettings

        store = opts.store(create=False)
        server = build_server(
            store,
            opts.embedder,
            image_settings=ExportSettings(max_side=max_side),
            preload=True,
            reranker=opts.reranker(),
        )
        if not http:
            say(f"PageLens MCP server on stdio, collection {store.location}")
            server.run("stdio")
            return
        import uvicorn

        app = guarded_http_app(server, exposure, api_key)
        say(
            f"PageLens MCP server on http://{exposure.address}:{port}/mcp, "
            f"collection {store.location}"
        )
        uvicorn.run(app, host=exposure.address, port=port, log_level="warning")

    run_guarded(body)


def guarded_http_app(server: Any, exposure: Exposure, api_key: str | None) -> Any:
    """The MCP server's streamable-HTTP app behind PageLens's gate (app.server.guard): the
    Host allow-list of a loopback bind (the SDK's own DNS-rebinding check knows only
    127.0.0.1, localhost and ::1, not another loopback address such as 127.0.0.2) and the
    bearer key. The SDK gets the same names, for its Origin check."""
    from mcp.server.transport_security import (
        DEFAULT_MAX_REQUEST_BODY_SIZE,
        TransportSecuritySettings,
    )

    from app.server.guard import GuardMiddleware

    security = None
    if exposure.allowed_hosts is not None:
        names = sorted(f"[{h}]" if ":" in h else h for h in exposure.allowed_hosts)
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[*names, *(f"{h}:*" for h in names)],
            allowed_origins=[o for h in names for o in (f"http://{h}", f"http://{h}:*")],
        )
    app = server.streamable_http_app(host=exposure.address, transport_security=security)
    return GuardMiddleware(
        app,
        api_key=api_key,
        max_request_bytes=DEFAULT_MAX_REQUEST_BODY_SIZE,
        allowed_hosts=exposure.allowed_hosts,
    )
