"""The gate in front of every route: API key and body-size limit (pure ASGI middleware)."""

from __future__ import annotations

import hmac
from typing import Any

from app.server.errors import error_response


class GuardMiddleware:
    """Pure ASGI middleware: the API key (all paths but /health) and the body-size limit."""

    def __init__(self, app: Any, *, api_key: str | None, max_request_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_request_bytes = max_request_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        refusal = None
        if self.api_key and scope.get("path") != "/health":
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                refusal = error_response(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer YOUR_KEY'.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length", b"")
        if refusal is None and length.isdigit() and int(length) > self.max_request_bytes:
            refusal = error_response(
                413,
                f"The request body is larger than {self.max_request_bytes} bytes.",
                code="request_too_large",
            )
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)
