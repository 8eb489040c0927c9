"""The gate in front of every route (pure ASGI middleware): Host header, API key, body size.

* **Host**: with ``allowed_hosts`` (``pagelens serve`` on a loopback address passes the
  loopback names), a request whose ``Host`` names anything else is refused. A web page
  whose own name was rebound to 127.0.0.1 (DNS rebinding) sends its own name, so it cannot
  read a keyless local server.
* **API key**: every path but ``/health`` needs ``Authorization: Bearer KEY``.
* **Secrets in the URL**: a query parameter that looks like a credential (``?api_key=``,
  ``?token=``...) is never accepted as one, and its value is replaced with ``REDACTED`` in
  the request before anything sees it, so the access log (uvicorn formats it from the same
  request) does not keep it in clear.
* **Body size**: ``Content-Length`` above the limit is refused at once; a chunked body (no
  length) is counted as it arrives and answered 413 as soon as it passes the limit, so it
  never reaches the app whole.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Iterable
from typing import Any

from app.server.errors import error_response

#: Host names that always mean this machine.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


#: Query parameters redacted from every request (matched without case; ``-`` as ``_``).
SECRET_PARAMS = frozenset(
    {"api_key", "apikey", "key", "token", "access_token", "auth", "authorization", "password"}
)
_QUERY_PAIR = re.compile(rb"([^&;=]*)=([^&;]*)")


def redact_query(query: bytes) -> bytes:
    """``query`` with the value of every :data:`SECRET_PARAMS` parameter replaced."""
    if b"=" not in query:
        return query

    def replace(match: re.Match[bytes]) -> bytes:
        name = match.group(1).decode("latin-1").lower().replace("-", "_").replace("%5f", "_")
        return match.group(1) + b"=REDACTED" if name in SECRET_PARAMS else match.group(0)

    return _QUERY_PAIR.sub(replace, query)


def host_name(header: bytes) -> str:
    """The name part of a Host header, lower-cased, without the port."""
    text = header.decode("latin-1").strip().lower()
    if text.startswith("["):  # [v6]:port
        return text.split("]", 1)[0] + "]"
    return text.rsplit(":", 1)[0] if text.count(":") == 1 else text


class GuardMiddleware:
    """Pure ASGI middleware: Host allow-list, API key (all paths but /health), body limit."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        max_request_bytes: int,
        allowed_hosts: Iterable[str] | None = None,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_request_bytes = max_request_bytes
        self.allowed_hosts = (
            None if allowed_hosts is None else {h.strip().lower() for h in allowed_hosts}
        )

    def refusal(self, scope: dict) -> Any:
        """The error response for a request refused from its headers alone, or None."""
        headers = dict(scope.get("headers") or ())
        if self.allowed_hosts is not None:
            host = host_name(headers.get(b"host", b""))
            if host not in self.allowed_hosts and host.strip("[]") not in self.allowed_hosts:
                return error_response(
                    400,
                    f"This server does not answer to the host name {host!r} (Host header); "
                    "it answers only to "
                    f"{', '.join(sorted(self.allowed_hosts))}. Start it with --allow-host "
                    "NAME to add one.",
                    code="invalid_host",
                )
        if self.api_key and scope.get("path") != "/health":
            scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
                return error_response(
                    401,
                    "Incorrect or missing API key: send 'Authorization: Bearer YOUR_KEY'.",
                    code="invalid_api_key",
                    headers={"WWW-Authenticate": "Bearer"},
                )
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_request_bytes:
            return self.too_large()
        return None

    def too_large(self) -> Any:
        return error_response(
            413,
            f"The request body is larger than {self.max_request_bytes} bytes.",
            code="request_too_large",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        query = scope.get("query_string") or b""
        redacted = redact_query(query)
        if redacted != query:  # in place: the server logs this same scope
            scope["query_string"] = redacted
        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        received = 0
        over = False
        replaced = False
        started = False

        async def counted_receive() -> dict:
            # Past the limit, the app sees the body end there; its answer is replaced below.
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_request_bytes:
                    over = True
                    return {"type": "http.request", "body": b"", "more_body": False}
            return message

        async def guarded_send(message: dict) -> None:
            nonlocal replaced, started
            if not over or (started and not replaced):  # an answer already under way stays
                started = True
                await send(message)
            elif not replaced:
                replaced = True
                await self.too_large()(scope, counted_receive, send)

        await self.app(scope, counted_receive, guarded_send)
