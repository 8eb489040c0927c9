"""``pagelens mcp``: PageLens as an MCP server for agents (see app/mcp_server.py).

stdio by default (what Claude Desktop and IDE agents launch); ``--http`` serves MCP's
streamable HTTP on loopback (``/mcp``). Listening beyond loopback needs ``--api-key``.
"""

from __future__ import annotations

import hmac
from typing import Any

import typer

from app.cli.common import fail, is_loopback_bind, options, run_guarded, say
from app.cli.root import cli
from indexer.config import API_KEY_ENV


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
    if http and not is_loopback_bind(host) and not api_key:
        fail(f"--host {host} is not loopback: set --api-key (or PAGELENS_API_KEY) too", 2)
    opts = options(ctx)

    def body() -> None:
        from app.mcp_server import build_server
        from retriever.export import ExportSettings

        store = opts.store(create=False)
        server = build_server(
            store, opts.embedder, image_settings=ExportSettings(max_side=max_side), preload=True
        )
        if not http:
            say(f"PageLens MCP server on stdio, collection {store.location}")
            server.run("stdio")
            return
        import uvicorn

        app: Any = server.streamable_http_app(host=host)
        if api_key:
            app = _BearerGuard(app, api_key)
        say(f"PageLens MCP server on http://{host}:{port}/mcp, collection {store.location}")
        uvicorn.run(app, host=host, port=port, log_level="warning")

    run_guarded(body)


class _BearerGuard:
    """ASGI wrapper: every HTTP request needs ``Authorization: Bearer KEY``."""

    def __init__(self, app, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http":
            given = dict(scope.get("headers") or []).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error": "unauthorized"}'})
                return
        await self.app(scope, receive, send)
