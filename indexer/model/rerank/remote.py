"""A reranker behind a ``/v1/rerank`` endpoint (vLLM, Jina, Cohere, ``pagelens serve
--reranker``): rerank here, run the model on a GPU box elsewhere.

Why its failures look as they do: a rerank runs while a person waits for a search that
already has an answer (the first-stage ranking), so the caller falls back to that answer
when this one fails. What matters is failing *clearly and quickly*: ``timeout`` is the
budget of one whole :meth:`RemoteReranker.score` call (every request, retry and backoff
inside it), a refused connection (nothing listens there: the server was stopped) fails at
once, and every failure is one :class:`~indexer.errors.EndpointError` line naming the
endpoint. 408, 429 and 5xx answers and dropped connections are retried, as the remote
embedder does, within that budget and honouring ``Retry-After``.

Configured like the remote embedder (``PAGELENS_RERANK_URL``, ``_MODEL``, ``_API_KEY``,
``_TIMEOUT``, ``_CA``; see :func:`load_remote_reranker`), with its TLS rules, URL checks,
error parsing and key handling (the key only in the ``Authorization`` header). Identity:
:meth:`RemoteReranker.connect` reads ``/v1/models``, so the reranker's ``model_id`` is the
served model's id, and a wrong URL, key or model name fails before the first search.

Images: pages and image queries go as vLLM's multimodal documents (see
:mod:`indexer.model.rerank.remote_wire`). A server that refuses them (a text-only
reranker) is detected on the first refusal: the reranker logs it once and sends text only
from then on (``images=None``, the default); ``images=False`` starts text-only,
``images=True`` makes a refusal an error.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from indexer import config
from indexer.errors import EndpointError, ModelNotAvailableError
from indexer.model.remote.http import (
    RETRY_STATUSES,
    RetryPolicy,
    api_base,
    connection_refused,
    error_message,
    make_client,
    parse_retry_after,
    redact_url,
    short_name,
    tls_refused,
    transport_reason,
)
from indexer.model.rerank.base import RerankPage, RerankQuery
from indexer.model.rerank.remote_wire import (
    decode_results,
    encode_document,
    encode_query,
    has_image,
    to_unit_scores,
)

log = logging.getLogger(__name__)

ENV_URL = config.RERANK_URL_ENV
ENV_MODEL = config.RERANK_MODEL_ENV
ENV_KEY = config.RERANK_API_KEY_ENV
ENV_TIMEOUT = config.RERANK_TIMEOUT_ENV
ENV_CA = config.RERANK_CA_ENV

#: Seconds one whole rerank may take: a person waits, and the first stage has an answer.
DEFAULT_TIMEOUT = 30.0
#: Retries per request after the first try (within the timeout): a server restarting.
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 0.25
DEFAULT_MAX_BACKOFF = 2.0
#: Documents per request: 8 page images are ~10 MB of PNG, well under servers' limits.
DEFAULT_BATCH_SIZE = 8
#: Requests in flight at once, so a GPU server batches a rerank's pages together.
DEFAULT_CONCURRENCY = 4


class _Retry(Exception):
    """One try failed in a way that may pass; ``retry_after`` from the server if it said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _ImagesRefused(Exception):
    """The server refused a request that carried images (a text-only reranker)."""


class RemoteReranker:
    """The :class:`~indexer.model.rerank.base.Reranker` seam over a ``/v1/rerank`` endpoint.

    Build it with :func:`load_remote_reranker` (or ``load_reranker(URL)``), which reads the
    endpoint's model list first; ``RemoteReranker(url).connect()`` does the same.
    """

    def __init__(
        self,
        url: str,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        images: bool | None = None,
        verify: bool | str | ssl.SSLContext = True,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if int(batch_size) < 1 or int(concurrency) < 1:
            raise EndpointError("The reranker's batch size and concurrency must be >= 1.")
        if float(timeout) <= 0 or int(retries) < 0:
            raise EndpointError("The reranker's timeout must be > 0 and its retries >= 0.")
        self.base_url = api_base(url, what="reranker", key_env=ENV_KEY)
        self.url = redact_url(self.base_url)
        self.timeout = float(timeout)
        self.policy = RetryPolicy(int(retries), float(backoff), float(max_backoff))
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        #: None: send images until the server refuses them; then False (text only).
        self.images = images
        self._requested_model = model
        self._has_key = bool(api_key)
        self._sleep = sleep
        self._client = make_client(
            api_key=api_key,
            timeout=self.timeout,
            concurrency=self.concurrency,
            verify=verify,
            transport=transport,
            user_agent="pagelens-remote-reranker",
        )
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.model_id: str = model or ""
        self.fingerprint: str | None = None
        self.revision: str | None = None
        #: What the endpoint's model list said about the served model.
        self.card: dict[str, Any] = {}
        #: Requests sent and retried, and documents scored (for tests and the benchmark).
        self.stats = {"requests": 0, "retries": 0, "documents": 0}

    # -- setup -------------------------------------------------------------------------
    def connect(self) -> RemoteReranker:
        """Read ``/v1/models`` and take the served reranker's id; raises on a wrong URL,
        key or model name (so that mistakes show at start, not in the first search)."""
        deadline = time.monotonic() + self.timeout
        try:
            body = self._call("GET", "/models", None, deadline)
        except EndpointError as exc:
            if exc.status not in (404, 405):
                raise
            body = None  # no model list (some servers): trust the name given
        card = self._choose_card(body)
        self.card = card
        self.model_id = str(card["id"])
        self.fingerprint = str(card["fingerprint"]) if card.get("fingerprint") else None
        self.revision = str(card["revision"]) if card.get("revision") else None
        log.info("remote reranker %s: model %s", self.url, self.model_id)
        return self

    def _choose_card(self, body: Any) -> dict[str, Any]:
        """The served model to use: the one named (by full id or last path part), else the
        one marked as a reranker (``pagelens serve`` lists its embedder too), else the only
        one listed."""
        listed = body.get("data") if isinstance(body, dict) else None
        models = [m for m in listed or [] if isinstance(m, dict) and m.get("id")]
        wanted = self._requested_model
        if wanted:
            for m in models:
                if _same_name(str(m["id"]), wanted):
                    return m
            if not models:
                return {"id": wanted}
            served = ", ".join(repr(str(m["id"])) for m in models)
            raise ModelNotAvailableError(
                f"The reranker endpoint {self.url} does not serve '{short_name(wanted)}'; it "
                f"serves {served}. Set {ENV_MODEL} to one of those, or leave it unset."
            )
        rerankers = [m for m in models if m.get("task") == "rerank"]
        if len(rerankers) == 1 or len(models) == 1:
            return (rerankers or models)[0]
        if not models:
            raise EndpointError(
                f"The reranker endpoint {self.url} lists no models (/v1/models); name the "
                f"model with {ENV_MODEL}."
            )
        served = ", ".join(repr(str(m["id"])) for m in models)
        raise EndpointError(
            f"The reranker endpoint {self.url} serves several models ({served}); name the "
            f"reranker with {ENV_MODEL}."
        )

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
        self._client.close()

    def __repr__(self) -> str:  # never the key
        return (
            f"RemoteReranker(url={self.url!r}, model_id={self.model_id!r}, "
            f"timeout={self.timeout:g}, key={'set' if self._has_key else 'none'})"
        )

    # -- the Reranker seam ---------------------------------------------------------------
    def score(self, query: RerankQuery, pages: Sequence[RerankPage]) -> np.ndarray:
        """One score in [0, 1] per page, in the pages' order (see the module docstring for
        how failures show)."""
        if not pages:
            return np.zeros(0, dtype=np.float32)
        deadline = time.monotonic() + self.timeout
        chunks = [
            list(pages[i : i + self.batch_size]) for i in range(0, len(pages), self.batch_size)
        ]

        def run(chunk: list[RerankPage]) -> list[float]:
            return self._score_chunk(query, chunk, deadline)

        if len(chunks) == 1:
            raw = run(chunks[0])
        else:
            raw = [s for part in self._executor().map(run, chunks) for s in part]
        with self._lock:
            self.stats["documents"] += len(pages)
        return to_unit_scores(raw)

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="pagelens-rerank"
                )
            return self._pool

    def _score_chunk(
        self, query: RerankQuery, chunk: list[RerankPage], deadline: float
    ) -> list[float]:
        """Raw scores of one request's pages; falls back to text once if images are
        refused and the images setting allows it."""
        images = self.images is not False
        try:
            return self._post(query, chunk, images, deadline)
        except _ImagesRefused as exc:
            if self.images is True or query.image is not None:
                raise EndpointError(
                    f"The reranker at {self.url} refused image documents: {exc}"
                ) from None
            if self.images is None:
                log.warning(
                    "the reranker at %s refused image documents (%s); sending page text only",
                    self.url,
                    exc,
                )
            self.images = False
            return self._post(query, chunk, False, deadline)

    def _post(
        self, query: RerankQuery, chunk: list[RerankPage], images: bool, deadline: float
    ) -> list[float]:
        documents = [encode_document(p, images=images) for p in chunk]
        encoded_query = encode_query(query, images=images, url=self.url)
        body = {
            "model": self.model_id,
            "query": encoded_query,
            "documents": documents,
            "top_n": len(documents),
            "return_documents": False,
        }
        carries_images = has_image(encoded_query) or any(has_image(d) for d in documents)
        try:
            answer = self._call("POST", "/rerank", body, deadline)
        except EndpointError as exc:
            if carries_images and exc.status in (400, 415, 422):
                raise _ImagesRefused(str(exc)) from None
            raise
        return decode_results(answer, len(documents), url=self.url)

    # -- HTTP ----------------------------------------------------------------------------
    def _call(self, method: str, path: str, body: Any, deadline: float) -> Any:
        """One API call with retries inside ``deadline``; the decoded JSON answer, or one
        :class:`EndpointError` line."""
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._out_of_time()
            try:
                return self._try(method, path, body, left)
            except _Retry as failure:
                if attempt >= self.policy.retries:
                    raise EndpointError(
                        f"The reranker at {self.url} failed after {attempt + 1} tries: "
                        f"{failure.reason}."
                    ) from None
                wait = self.policy.delay(attempt, failure.retry_after)
                if time.monotonic() + wait >= deadline:
                    raise EndpointError(
                        f"The reranker at {self.url} is unavailable ({failure.reason}) and "
                        f"did not recover within {self.timeout:g} s."
                    ) from None
                log.warning("%s; retry %d of %d", failure.reason, attempt + 1, self.policy.retries)
                with self._lock:
                    self.stats["retries"] += 1
                self._sleep(wait)
                attempt += 1

    def _out_of_time(self) -> EndpointError:
        return EndpointError(
            f"The reranker at {self.url} did not answer within {self.timeout:g} s "
            f"(timeout; {ENV_TIMEOUT} sets it)."
        )

    def _try(self, method: str, path: str, body: Any, left: float) -> Any:
        """One request with ``left`` seconds; raises :class:`_Retry` for what may pass."""
        import httpx

        with self._lock:
            self.stats["requests"] += 1
        try:
            response = self._client.request(
                method,
                self.base_url + path,
                json=body,
                timeout=httpx.Timeout(left, connect=min(left, 10.0)),
            )
        except httpx.TimeoutException:
            raise self._out_of_time() from None
        except httpx.TransportError as exc:
            if tls_refused(exc):  # retrying cannot fix a certificate
                raise EndpointError(
                    f"The TLS certificate of the reranker at {self.url} was not accepted "
                    f"({transport_reason(exc)}); trust its CA with {ENV_CA}."
                ) from None
            if connection_refused(exc):  # nothing listens there: fail now, not in 30 s
                raise EndpointError(
                    f"Nothing accepts connections at the reranker {self.url} (connection "
                    f"refused): start the rerank server, or check {ENV_URL}."
                ) from None
            raise _Retry(f"cannot reach {self.url} ({transport_reason(exc)})") from None
        status = response.status_code
        if status < 300:
            try:
                return response.json()
            except ValueError:
                raise EndpointError(
                    f"The reranker at {self.url} answered something that is not JSON."
                ) from None
        message = error_message(response)
        if status in RETRY_STATUSES or status >= 500:
            raise _Retry(
                f"{self.url} answered HTTP {status}" + (f": {message}" if message else ""),
                parse_retry_after(response.headers.get("Retry-After")),
            )
        raise self._refusal(status, message, response)

    def _refusal(self, status: int, message: str, response: Any) -> Exception:
        """The error for an answer retrying cannot fix (a key, a redirect, a model, a 4xx)."""
        if status in (401, 403):
            how = f"the key in {ENV_KEY} was refused" if self._has_key else f"set {ENV_KEY}"
            return EndpointError(
                f"The reranker at {self.url} refused the request (HTTP {status}): {how}.",
                status=status,
            )
        if status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
            target = redact_url(urllib.parse.urljoin(self.base_url, response.headers["Location"]))
            return EndpointError(
                f"The reranker at {self.url} redirects to {target}; give that address as "
                f"{ENV_URL} (pages and keys are not sent through redirects).",
                status=status,
            )
        if status == 404 and self.model_id and _names_model(response, message):
            return ModelNotAvailableError(
                f"The reranker at {self.url} does not serve '{short_name(self.model_id)}': "
                f"{message}"
            )
        return EndpointError(
            f"The reranker at {self.url} answered HTTP {status}"
            + (f": {message}" if message else ""),
            status=status,
        )


def _names_model(response: Any, message: str) -> bool:
    """Whether a 404 says the model is unknown (``pagelens serve``'s ``model_not_found``
    code, or vLLM's "The model ... does not exist"), not that the path is."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        error = None
    code = error.get("code") if isinstance(error, dict) else None
    return (
        code == "model_not_found"
        or (code is None and "model" in message.lower())
        or (code == 404 and "model" in message.lower())
    )


def _same_name(served: str, wanted: str) -> bool:
    """A served id matches a wanted name by full id or last path part, ignoring case (the
    remote embedder's rule)."""
    a, b = served.strip().rstrip("/\\").lower(), wanted.strip().rstrip("/\\").lower()
    return a == b or short_name(a) == short_name(b)


def load_remote_reranker(
    url: str | None = None,
    *,
    model: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> RemoteReranker:
    """A connected :class:`RemoteReranker`; unset settings come from the environment.

    ``url`` defaults to ``$PAGELENS_RERANK_URL``, ``model`` to ``$PAGELENS_RERANK_MODEL``,
    ``api_key`` to ``$PAGELENS_RERANK_API_KEY`` (never the embedder's key: the two servers
    may be different hosts), ``timeout`` to ``$PAGELENS_RERANK_TIMEOUT`` and ``verify`` to
    ``$PAGELENS_RERANK_CA`` or True.
    """
    url = url or config.get(ENV_URL)
    if not url:
        raise EndpointError(f"No reranker URL: set {ENV_URL} (http(s)://host:port).")
    model = model or config.get(ENV_MODEL)
    if api_key is None:
        api_key = config.get(ENV_KEY)
    if "timeout" not in options:
        options["timeout"] = config.get_float(ENV_TIMEOUT, DEFAULT_TIMEOUT)
    if "verify" not in options and (bundle := config.get(ENV_CA)):
        options["verify"] = bundle
    reranker = RemoteReranker(url, model=model, api_key=api_key, **options)
    try:
        reranker.connect()
    except BaseException:
        reranker.close()
        raise
    return reranker


__all__ = ["DEFAULT_TIMEOUT", "RemoteReranker", "load_remote_reranker"]
