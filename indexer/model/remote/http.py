"""HTTP to an embedding endpoint: its address, how failed requests are retried, what an
error answer says, TLS. Imports indexer.errors only (and httpx when used)."""

from __future__ import annotations

import email.utils
import os
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from indexer.errors import EndpointError, ModelNotAvailableError

if TYPE_CHECKING:
    import httpx

#: Seconds one request may take (a cold GPU server may need a while for its first batch).
DEFAULT_TIMEOUT = 120.0
#: Retries per request after the first try (backoff 0.5, 1, 2, 4, 8, 16, 30, 30 s: ~1.5 min).
DEFAULT_RETRIES = 8
DEFAULT_BACKOFF = 0.5
DEFAULT_MAX_BACKOFF = 30.0
#: The longest ``Retry-After`` honoured as given; longer ones are cut to this.
MAX_RETRY_AFTER = 300.0
#: HTTP statuses worth retrying: the request may succeed later unchanged.
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


def is_endpoint_url(value: object) -> bool:
    """Whether a model argument names an endpoint (``http(s)://...``) rather than a model."""
    return isinstance(value, str) and value.strip().lower().startswith(("http://", "https://"))


def api_base(url: str, *, what: str = "embedder", key_env: str = "PAGELENS_API_KEY") -> str:
    """The endpoint's OpenAI base (``.../v1``) from what a person types.

    ``http://gpu:8000``, ``http://gpu:8000/`` and ``http://gpu:8000/v1`` all mean
    ``http://gpu:8000/v1``; a URL with another path (a hosted API's
    ``https://host/compatible-mode/v1``) is kept as given. ``what`` and ``key_env`` name the
    client (the embedder, the reranker) and its key's variable in the messages.
    """
    text = str(url).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise EndpointError(
            f"The {what} URL must be http:// or https:// with a host, not {redact_url(text)!r}."
        )
    if parts.username or parts.password:
        raise EndpointError(
            f"Put no credentials in the {what} URL; give the key with {key_env} "
            "(it is sent as a bearer token)."
        )
    if parts.query or parts.fragment:
        raise EndpointError(f"The {what} URL must not have a query string or fragment.")
    path = parts.path.rstrip("/")
    if path == "":
        path = "/v1"
    return urllib.parse.urlunsplit((parts.scheme.lower(), parts.netloc, path, "", ""))


def redact_url(url: str) -> str:
    """A URL safe to print: no user info, query or fragment (where keys tend to hide)."""
    try:
        parts = urllib.parse.urlsplit(str(url))
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
    except ValueError:
        return "<invalid URL>"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry one request; ``delay`` is the wait before retry n."""

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), MAX_RETRY_AFTER)
        base = min(self.backoff * (2**attempt), self.max_backoff)
        return base * (0.75 + 0.5 * random.random())  # jitter: clients do not retry in step


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (it may be a number or an HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(when.timestamp() - time.time(), 0.0)


class Retryable(Exception):
    """One try failed in a way that may pass: retry after ``retry_after`` or the backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class InputRefused(Exception):
    """The server refused one input of a request (``400`` with ``param`` ``input[i]``)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


def make_client(
    *,
    api_key: str | None,
    timeout: float,
    concurrency: int,
    verify: bool | str | ssl.SSLContext,
    transport: Any,
    user_agent: str = "pagelens-remote-embedder",
) -> httpx.Client:
    """The HTTP client for one endpoint: the key only in the ``Authorization`` header, a CA
    bundle path turned into an SSL context, and no proxies from the environment."""
    import httpx

    headers = {"User-Agent": user_agent}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    if isinstance(verify, str):  # a CA bundle: httpx wants an SSL context
        try:
            verify = ssl.create_default_context(cafile=verify)
        except (OSError, ssl.SSLError) as exc:
            raise EndpointError(f"Cannot read the CA bundle {verify!r} ({exc}).") from None
    return httpx.Client(
        headers=headers,
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        limits=httpx.Limits(
            max_connections=concurrency + 1,
            max_keepalive_connections=concurrency + 1,
        ),
        verify=verify,
        transport=transport,
        trust_env=False,  # no proxies from the environment: pages go where the user said
    )


def fatal_error(
    status: int,
    message: str,
    response: Any,
    *,
    url: str,
    base_url: str,
    model_id: str,
    has_key: bool,
    per_input: bool,
) -> Exception:
    """The error for an answer that retrying cannot fix (401/403, a redirect, a refused input,
    an unknown model, any other 4xx)."""
    if status in (401, 403):
        how = (
            "the key in PAGELENS_API_KEY was refused"
            if has_key
            else "it needs a key: set PAGELENS_API_KEY (sent as a bearer token)"
        )
        return EndpointError(
            f"The endpoint {url} refused the request (HTTP {status}): {how}.",
            status=status,
        )
    if status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
        target = redact_url(urllib.parse.urljoin(base_url, response.headers["Location"]))
        return EndpointError(
            f"The endpoint {url} redirects to {target}; give that address as the "
            "embedder URL (pages and keys are not sent through redirects).",
            status=status,
        )
    param = _error_param(response)
    if per_input and status in (400, 413, 422) and param and param.startswith("input["):
        try:
            index = int(param[len("input[") :].split("]", 1)[0])
        except ValueError:
            index = -1
        if index >= 0:
            return InputRefused(index, f"{url} refused it (HTTP {status}): {message}")
    if status == 404 and _error_code(response) == "model_not_found":
        return ModelNotAvailableError(
            f"The endpoint {url} does not serve the model '{short_name(model_id)}'"
            + (f": {message}" if message else ".")
        )
    return EndpointError(
        f"The endpoint {url} answered HTTP {status}" + (f": {message}" if message else ""),
        status=status,
    )


def short_name(name: str) -> str:
    return os.path.basename(str(name).rstrip("/\\")) or str(name)


def _error_json(response: Any) -> dict:
    try:
        body = response.json()
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return error
    if isinstance(error, str):
        return {"message": error}
    return {}


def error_message(response: Any) -> str:
    message = _error_json(response).get("message")
    if not message:
        text = (response.text or "").strip().splitlines()
        message = text[0] if text else ""
    return str(message)[:300]


def _error_param(response: Any) -> str | None:
    param = _error_json(response).get("param")
    return str(param) if param else None


def _error_code(response: Any) -> str | None:
    code = _error_json(response).get("code")
    return str(code) if code else None


def tls_refused(exc: BaseException) -> bool:
    """Whether a transport error is a refused certificate or TLS handshake (not transient)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, ssl.SSLError) and "CERTIFICATE" in str(seen).upper():
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def connection_refused(exc: BaseException) -> bool:
    """Whether a transport error is a refused TCP connection (no server on that port)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "connection refused" in str(exc).lower()


def transport_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
