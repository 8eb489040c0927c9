"""GME behind an OpenAI-compatible ``/v1/embeddings`` endpoint: index here, embed elsewhere.

On a laptop CPU a page costs tens of seconds at GME's published budget; on one GPU it costs a
fraction of a second. :class:`RemoteEmbedder` implements the same
:class:`~indexer.embedder.Embedder` interface as the in-process
:class:`~indexer.gme.GmeEmbedder`, so the indexer, the retriever, the app and ``pagelens
serve`` use it unchanged. The first target is PageLens's own ``pagelens serve`` on a GPU
machine; the request shapes are the ones it serves, which are also those of hosted GME APIs:

* texts are strings, images ``{"image": "data:image/png;base64,..."}``, fused inputs
  ``{"text": ..., "image": ...}``;
* ``"input_type": "query"`` for GME's retrieval-query instruction, ``"document"`` for the
  default one, ``"instruction"`` (a PageLens extension) for any other.

Why the vectors equal local ones: pages are rendered here at the endpoint's visual-token
budget (read from its model card) and sent as PNG, which is lossless, so the server's GME
sees the very pixels the local one would; the returned vectors are re-normalised float32.

Throughput: a call's inputs are split into requests of ``batch_size`` inputs, and up to
``concurrency`` requests are in flight at once, so one client keeps a GPU server busy.
:attr:`batch_hint` tells the indexer how many pages to hand over per call.

Faults: every request has a timeout; connection errors, timeouts, 408, 429 and 5xx answers
are retried with exponential backoff (with jitter, capped), honouring ``Retry-After``: an
index run rides out a server restarting mid-job. A query is different: a person waits, so
with ``fail_fast`` (what ``pagelens search`` and ``ask`` use) a refused connection (nothing
listens at that address) fails at once with one line instead of ~1.5 min of retries. When
a request finally fails, :class:`~indexer.errors.EmbeddingError` says which inputs got no
vector and why; the indexer stores the others and leaves those pages pending (never stored
without a vector), so a later run fills them in. An input the server refuses on its own
(``400`` naming ``input[i]``) fails alone; the rest of its request is sent again.

Identity: the endpoint's model id and dimension (from ``/v1/models``, or from the first
response) are this embedder's :attr:`model_id` and :attr:`dim`, and the weights'
``fingerprint`` (see :mod:`indexer.identity`; ``pagelens serve`` puts it in its model card)
is its :attr:`fingerprint`, so a collection records the same identity whether its model ran
here or there, and a collection built with another model refuses it before anything is
written. An endpoint that gives no fingerprint is matched by name, like any such model.

Security: ``https://`` works (system certificates; ``verify=`` or ``$PAGELENS_EMBEDDER_CA``
for a private CA; a refused certificate is an error at once, not retried); the API key
goes only into the ``Authorization`` header and never into a message, log line, ``repr`` or
the collection's metadata; credentials written into the URL itself are refused.
"""

from __future__ import annotations

import base64
import email.utils
import io
import logging
import os
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from indexer.model import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, EmbedderBase, require_pairs
from indexer.errors import (
    EmbeddingError,
    EndpointError,
    ModelNotAvailableError,
)

log = logging.getLogger(__name__)

#: Environment variables (the CLI's ``--embedder`` reads the first).
ENV_URL = "PAGELENS_EMBEDDER_URL"
ENV_KEY = "PAGELENS_API_KEY"
ENV_BATCH = "PAGELENS_EMBEDDER_BATCH"
ENV_CONCURRENCY = "PAGELENS_EMBEDDER_CONCURRENCY"
ENV_TIMEOUT = "PAGELENS_EMBEDDER_TIMEOUT"
ENV_RETRIES = "PAGELENS_EMBEDDER_RETRIES"
#: A CA bundle (PEM) to trust for an https endpoint with a private certificate authority.
ENV_CA = "PAGELENS_EMBEDDER_CA"

#: Inputs per request: 8 budget-sized pages are ~10 MB of PNG, well under servers' limits.
DEFAULT_BATCH_SIZE = 8
#: Requests in flight: enough for a GPU server's dynamic batcher to fill its batches.
DEFAULT_CONCURRENCY = 4
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


def api_base(url: str) -> str:
    """The endpoint's OpenAI base (``.../v1``) from what a person types.

    ``http://gpu:8000``, ``http://gpu:8000/`` and ``http://gpu:8000/v1`` all mean
    ``http://gpu:8000/v1``; a URL with another path (a hosted API's
    ``https://host/compatible-mode/v1``) is kept as given.
    """
    text = str(url).strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise EndpointError(
            f"The embedder URL must be http:// or https:// with a host, not {redact_url(text)!r}."
        )
    if parts.username or parts.password:
        raise EndpointError(
            "Put no credentials in the embedder URL; give the key with PAGELENS_API_KEY "
            "(it is sent as a bearer token)."
        )
    if parts.query or parts.fragment:
        raise EndpointError("The embedder URL must not have a query string or fragment.")
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


def encode_png(image: Image.Image) -> bytes:
    """PNG bytes of ``image``, pixel for pixel (fast compression: the network is the cost).

    Modes PNG holds as they are (RGB, RGBA, L, LA, P, 1, I;16) are kept, so the server's
    GME converts them exactly as the local one would; others are converted to RGB here,
    as GME does first thing.
    """
    if image.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "I;16"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def image_data_url(image: Image.Image) -> str:
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


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


class _Retryable(Exception):
    """One try failed in a way that may pass: retry after ``retry_after`` or the backoff."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class _InputRefused(Exception):
    """The server refused one input of a request (``400`` with ``param`` ``input[i]``)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(reason)
        self.index = index
        self.reason = reason


class RemoteEmbedder(EmbedderBase):
    """GME served by an OpenAI-compatible ``/v1/embeddings`` endpoint (see the module doc).

    Build it with :func:`load_remote_embedder` (or ``indexer.load_embedder(URL)``), which
    reads the endpoint's model card before returning, so a wrong URL, key or model id is an
    error at once rather than in the middle of a job.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str | None = None,
        model: str | None = None,
        max_image_tokens: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        verify: bool | str | ssl.SSLContext = True,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
        fail_fast: bool = False,
    ) -> None:
        import httpx

        if int(batch_size) < 1 or int(concurrency) < 1:
            raise EndpointError("The embedder's batch size and concurrency must be >= 1.")
        if float(timeout) <= 0 or int(retries) < 0:
            raise EndpointError("The embedder's timeout must be > 0 and its retries >= 0.")
        self.base_url = api_base(url)
        self.url = redact_url(self.base_url)
        self.batch_size = int(batch_size)
        self.concurrency = int(concurrency)
        self.timeout = float(timeout)
        self.policy = RetryPolicy(int(retries), float(backoff), float(max_backoff))
        self.device = "remote"
        self.dtype = "remote"
        self._requested_model = model
        self._requested_tokens = int(max_image_tokens) if max_image_tokens else None
        self._sleep = sleep
        #: Interactive use: a refused connection is not retried (see the module docstring).
        self.fail_fast = bool(fail_fast)
        headers = {"User-Agent": "pagelens-remote-embedder"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._has_key = bool(api_key)
        if isinstance(verify, str):  # a CA bundle: httpx wants an SSL context
            try:
                verify = ssl.create_default_context(cafile=verify)
            except (OSError, ssl.SSLError) as exc:
                raise EndpointError(f"Cannot read the CA bundle {verify!r} ({exc}).") from None
        self._client = httpx.Client(
            headers=headers,
            timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
            limits=httpx.Limits(
                max_connections=self.concurrency + 1,
                max_keepalive_connections=self.concurrency + 1,
            ),
            verify=verify,
            transport=transport,
            trust_env=False,  # no proxies from the environment: pages go where the user said
        )
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self.model_id: str = model or ""
        self.dim: int = 0
        self.max_image_tokens: int = self._requested_tokens or 1280
        self.fingerprint: str | None = None
        self.revision: str | None = None
        #: What the endpoint's model card said (id, dim, budget, fingerprint...).
        self.card: dict[str, Any] = {}
        #: Requests sent, retried, and inputs embedded (for the benchmark and tests).
        self.stats = {"requests": 0, "retries": 0, "inputs": 0}

    # -- setup -------------------------------------------------------------------------
    def connect(self) -> RemoteEmbedder:
        """Read the endpoint's model card; learn the dimension. Raises on a wrong URL/key/model."""
        card = self._model_card()
        self.card = card
        self.model_id = str(card["id"])
        # The served weights' identity (pagelens serve gives it): the same weights here or
        # there make the same collection identity; without it, models match by name.
        self.fingerprint = str(card["fingerprint"]) if card.get("fingerprint") else None
        self.revision = str(card["revision"]) if card.get("revision") else None
        served_tokens = _positive_int(card.get("max_image_tokens"))
        if served_tokens and self._requested_tokens and served_tokens != self._requested_tokens:
            raise EndpointError(
                f"The endpoint {self.url} embeds pages at {served_tokens} visual tokens, not the "
                f"{self._requested_tokens} asked for (--image-tokens): pages rendered here for "
                "another budget would be resized there and give other vectors. Drop "
                "--image-tokens or restart the server with the budget you want."
            )
        self.max_image_tokens = served_tokens or self._requested_tokens or 1280
        dim = _positive_int(card.get("dim") or card.get("dimensions"))
        if not dim:  # an endpoint that does not say: the first response does
            try:
                dim = int(self._embed([("text", "dimension probe", None)], None).shape[1])
            except EmbeddingError as exc:
                raise EndpointError(f"Cannot learn the model's dimension: {exc}") from None
        self.dim = dim
        log.info(
            "remote embedder %s: model %s, dim %d, %d visual tokens",
            self.url,
            self.model_id,
            self.dim,
            self.max_image_tokens,
        )
        return self

    def _model_card(self) -> dict[str, Any]:
        try:
            body = self._call("GET", "/models", None)
        except EndpointError as exc:
            if exc.status not in (404, 405):
                raise
            body = None  # no /v1/models: trust the name given
        if not isinstance(body, dict):
            body = None
        models = [m for m in (body or {}).get("data", []) if isinstance(m, dict) and m.get("id")]
        wanted = self._requested_model
        if not models:
            if not wanted:
                raise EndpointError(
                    f"The endpoint {self.url} lists no models (/v1/models); name the model "
                    "with --model (PAGELENS_MODEL)."
                )
            return {"id": wanted}
        if not wanted:
            return models[0]
        for m in models:
            if _same_name(str(m["id"]), wanted):
                return m
        # The server may know the name as an alias (pagelens serve answers to "gme-2b" and
        # GME-2B's other names): ask it about that one model.
        try:
            card = self._call("GET", "/models/" + urllib.parse.quote(_short_name(wanted)), None)
        except EndpointError as exc:
            if exc.status not in (400, 404, 405):
                raise
            card = None
        if isinstance(card, dict) and card.get("id"):
            known = next((m for m in models if str(m["id"]) == str(card["id"])), {})
            return {**known, **card}
        served = ", ".join(repr(str(m["id"])) for m in models)
        raise ModelNotAvailableError(
            f"The endpoint {self.url} does not serve the model '{_short_name(wanted)}'; it "
            f"serves {served}. Name one of those with --model, or leave --model unset."
        )

    @property
    def batch_hint(self) -> int:
        """Pages per call that keep every request slot busy (the indexer reads this)."""
        return self.batch_size * self.concurrency

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._client.close()

    def __repr__(self) -> str:  # never the key
        return (
            f"RemoteEmbedder(url={self.url!r}, model_id={self.model_id!r}, dim={self.dim}, "
            f"max_image_tokens={self.max_image_tokens}, batch_size={self.batch_size}, "
            f"concurrency={self.concurrency}, key={'set' if self._has_key else 'none'})"
        )

    # -- the Embedder interface (embed_queries / embed_documents come from EmbedderBase) ---
    def embed_texts(self, texts: Sequence[str], *, instruction: str | None = None) -> np.ndarray:
        return self._embed([("text", t, None) for t in texts], instruction)

    def embed_images(
        self, images: Sequence[Image.Image], *, instruction: str | None = None
    ) -> np.ndarray:
        return self._embed([("image", None, im) for im in images], instruction)

    def embed_fused(
        self,
        texts: Sequence[str],
        images: Sequence[Image.Image],
        *,
        instruction: str | None = None,
    ) -> np.ndarray:
        require_pairs(texts, images)
        return self._embed(
            [("fused", t, im) for t, im in zip(texts, images, strict=True)], instruction
        )

    # -- requests ------------------------------------------------------------------------
    def _embed(
        self, items: list[tuple[str, str | None, Image.Image | None]], instruction: str | None
    ) -> np.ndarray:
        """Embed items in requests of ``batch_size``, ``concurrency`` at a time, in order."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        chunks = [
            list(range(i, min(i + self.batch_size, len(items))))
            for i in range(0, len(items), self.batch_size)
        ]
        results: list[np.ndarray | None] = [None] * len(items)
        failed: dict[int, str] = {}
        unreachable = False

        def run(chunk: list[int]) -> tuple[dict[int, np.ndarray], dict[int, str], bool]:
            return self._embed_chunk(chunk, items, instruction)

        if len(chunks) == 1:
            outcomes = [run(chunks[0])]
        else:
            outcomes = list(self._executor().map(run, chunks))
        for done, refused, gone in outcomes:
            for i, vec in done.items():
                results[i] = vec
            failed.update(refused)
            unreachable = unreachable or gone
        dim = next((len(v) for v in results if v is not None), self.dim)
        out = np.zeros((len(items), dim), dtype=np.float32)
        for i, row in enumerate(results):
            if row is not None:
                out[i] = row
        if failed:
            first = failed[min(failed)]
            raise EmbeddingError(
                f"{len(failed)} of {len(items)} inputs could not be embedded by {self.url}: "
                f"{first}",
                failed=failed,
                vectors=out,
                retryable=unreachable,
            )
        return out

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="pagelens-remote"
                )
            return self._pool

    def _embed_chunk(
        self,
        chunk: list[int],
        items: list[tuple[str, str | None, Image.Image | None]],
        instruction: str | None,
    ) -> tuple[dict[int, np.ndarray], dict[int, str], bool]:
        """One request's worth of items: (vectors by index, failures by index, unreachable)."""
        done: dict[int, np.ndarray] = {}
        failed: dict[int, str] = {}
        payload = [_input(items[i]) for i in chunk]
        todo = list(range(len(chunk)))
        while todo:
            try:
                vectors = self._post_embeddings([payload[j] for j in todo], instruction)
            except _InputRefused as exc:
                bad = todo.pop(exc.index)
                failed[chunk[bad]] = exc.reason
                continue
            except _Retryable as exc:  # retries spent: the endpoint is down or overloaded
                for j in todo:
                    failed[chunk[j]] = exc.reason
                return done, failed, True
            for j, vec in zip(todo, vectors, strict=True):
                done[chunk[j]] = vec
            todo = []
        return done, failed, False

    def _post_embeddings(self, inputs: list[Any], instruction: str | None) -> np.ndarray:
        body: dict[str, Any] = {
            "model": self.model_id,
            "input": inputs,
            "encoding_format": "base64",
        }
        if instruction is None or instruction == DEFAULT_INSTRUCTION:
            body["input_type"] = "document"
        elif instruction == QUERY_INSTRUCTION:
            body["input_type"] = "query"
        else:
            body["instruction"] = instruction
        answer = self._call("POST", "/embeddings", body, per_input=True)
        data = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(data, list) or len(data) != len(inputs):
            raise EndpointError(
                f"The endpoint {self.url} answered {len(data) if isinstance(data, list) else 0} "
                f"embeddings for {len(inputs)} inputs."
            )
        rows: list[np.ndarray | None] = [None] * len(inputs)
        for pos, entry in enumerate(data):
            index = entry.get("index", pos) if isinstance(entry, dict) else pos
            if not isinstance(index, int) or not 0 <= index < len(inputs):
                raise EndpointError(f"The endpoint {self.url} answered a bad embedding index.")
            rows[index] = _vector(entry.get("embedding") if isinstance(entry, dict) else None)
        vectors = [r for r in rows if r is not None]
        if len(vectors) != len(inputs) or len({len(v) for v in vectors}) != 1:
            raise EndpointError(
                f"The endpoint {self.url} left inputs without an embedding, or answered "
                "vectors of different lengths."
            )
        out = np.stack(vectors).astype(np.float32)
        if self.dim and out.shape[1] != self.dim:
            raise EndpointError(
                f"The endpoint {self.url} answered {out.shape[1]}-d vectors, not {self.dim}-d: "
                "the served model changed during the run."
            )
        if not np.isfinite(out).all():
            raise EndpointError(f"The endpoint {self.url} answered non-finite vectors.")
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        with self._stats_lock:
            self.stats["inputs"] += len(inputs)
        return (out / norms).astype(np.float32)

    _stats_lock = threading.Lock()

    def _call(self, method: str, path: str, body: Any, *, per_input: bool = False) -> Any:
        """One API call with retries; returns the decoded JSON answer.

        Raises :class:`_Retryable` when retries are spent on retryable failures,
        :class:`_InputRefused` for a refused input (``per_input``), and
        :class:`~indexer.errors.EndpointError` for everything that retrying cannot fix.
        """
        import httpx

        attempt = 0
        while True:
            with self._stats_lock:
                self.stats["requests"] += 1
            try:
                response = self._client.request(method, self.base_url + path, json=body)
            except httpx.TimeoutException:
                failure = _Retryable(
                    f"no answer from {self.url} within {self.timeout:g} s (timeout)"
                )
            except httpx.TransportError as exc:
                if _tls_refused(exc):  # retrying cannot fix a certificate
                    raise EndpointError(
                        f"The TLS certificate of {self.url} was not accepted "
                        f"({_transport_reason(exc)}). Use a certificate this computer trusts, "
                        f"or point {ENV_CA} at the CA bundle that signed it."
                    ) from None
                if self.fail_fast and _connection_refused(exc):  # nothing listens there
                    raise _Retryable(
                        f"nothing accepts connections at {self.url} (connection refused): "
                        f"start the embedding server, or check --embedder / {ENV_URL}"
                    ) from None
                failure = _Retryable(f"cannot reach {self.url} ({_transport_reason(exc)})")
            else:
                status = response.status_code
                if status < 300:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise EndpointError(
                            f"The endpoint {self.url} answered something that is not JSON "
                            f"(HTTP {status})."
                        ) from exc
                message = _error_message(response)
                if status in RETRY_STATUSES or status >= 500:
                    failure = _Retryable(
                        f"{self.url} answered HTTP {status}" + (f": {message}" if message else ""),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
                else:
                    raise self._fatal(status, message, response, per_input=per_input)
            if attempt >= self.policy.retries:
                raise failure
            wait = self.policy.delay(attempt, failure.retry_after)
            log.warning(
                "%s; retry %d of %d in %.1f s",
                failure.reason,
                attempt + 1,
                self.policy.retries,
                wait,
            )
            with self._stats_lock:
                self.stats["retries"] += 1
            self._sleep(wait)
            attempt += 1

    def _fatal(self, status: int, message: str, response: Any, *, per_input: bool) -> Exception:
        if status in (401, 403):
            how = (
                "the key in PAGELENS_API_KEY was refused"
                if self._has_key
                else "it needs a key: set PAGELENS_API_KEY (sent as a bearer token)"
            )
            return EndpointError(
                f"The endpoint {self.url} refused the request (HTTP {status}): {how}.",
                status=status,
            )
        if status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
            target = redact_url(urllib.parse.urljoin(self.base_url, response.headers["Location"]))
            return EndpointError(
                f"The endpoint {self.url} redirects to {target}; give that address as the "
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
                return _InputRefused(index, f"{self.url} refused it (HTTP {status}): {message}")
        if status == 404 and _error_code(response) == "model_not_found":
            return ModelNotAvailableError(
                f"The endpoint {self.url} does not serve the model '{_short_name(self.model_id)}'"
                + (f": {message}" if message else ".")
            )
        return EndpointError(
            f"The endpoint {self.url} answered HTTP {status}" + (f": {message}" if message else ""),
            status=status,
        )


# --------------------------------------------------------------------------- helpers


def _input(item: tuple[str, str | None, Image.Image | None]) -> Any:
    kind, text, image = item
    if kind == "text":
        return text
    assert image is not None
    if kind == "image":
        return {"image": image_data_url(image)}
    return {"text": text, "image": image_data_url(image)}


def _vector(value: Any) -> np.ndarray | None:
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value, validate=True)
        except ValueError:
            return None
        if not raw or len(raw) % 4:
            return None
        return np.frombuffer(raw, dtype="<f4").astype(np.float32)
    if isinstance(value, list) and value:
        try:
            return np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            return None
    return None


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _short_name(name: str) -> str:
    return os.path.basename(str(name).rstrip("/\\")) or str(name)


def _same_name(served: str, wanted: str) -> bool:
    """A served id matches a wanted model by full id or by last path part, ignoring case.

    That is the rule collections use, so a local folder ``~/models/gme-2b`` names the model
    a server loaded from its own ``gme-2b`` folder.
    """
    a, b = served.strip().rstrip("/\\").lower(), wanted.strip().rstrip("/\\").lower()
    return a == b or _short_name(a) == _short_name(b)


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


def _error_message(response: Any) -> str:
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


def _tls_refused(exc: BaseException) -> bool:
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


def _connection_refused(exc: BaseException) -> bool:
    """Whether a transport error is a refused TCP connection (no server on that port)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            break
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "connection refused" in str(exc).lower()


def _transport_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]


def load_remote_embedder(
    url: str | None = None,
    *,
    model: str | None = None,
    api_key: str | None = None,
    max_image_tokens: int | None = None,
    **options: Any,
) -> RemoteEmbedder:
    """A connected :class:`RemoteEmbedder`; unset settings come from the environment.

    ``url`` defaults to ``$PAGELENS_EMBEDDER_URL``, ``api_key`` to ``$PAGELENS_API_KEY``;
    ``batch_size``, ``concurrency``, ``timeout`` and ``retries`` default to
    ``$PAGELENS_EMBEDDER_BATCH``, ``_CONCURRENCY``, ``_TIMEOUT`` and ``_RETRIES``; ``verify``
    (True, False, a CA bundle path or an SSL context) to ``$PAGELENS_EMBEDDER_CA`` or True.
    ``fail_fast=True`` (queries) gives up at once when the connection is refused.
    """
    url = url or os.environ.get(ENV_URL)
    if not url:
        raise EndpointError(f"No embedder URL: pass --embedder URL or set {ENV_URL}.")
    if api_key is None:
        api_key = os.environ.get(ENV_KEY) or None
    for key, env, kind in (
        ("batch_size", ENV_BATCH, int),
        ("concurrency", ENV_CONCURRENCY, int),
        ("timeout", ENV_TIMEOUT, float),
        ("retries", ENV_RETRIES, int),
    ):
        if key not in options and os.environ.get(env):
            try:
                options[key] = kind(os.environ[env])
            except ValueError as exc:
                raise EndpointError(f"{env} must be a number, not {os.environ[env]!r}.") from exc
    if "verify" not in options and os.environ.get(ENV_CA):
        options["verify"] = os.environ[ENV_CA]
    embedder = RemoteEmbedder(
        url, api_key=api_key, model=model, max_image_tokens=max_image_tokens, **options
    )
    try:
        embedder.connect()
    except _Retryable as exc:
        embedder.close()
        raise EndpointError(f"The embedder endpoint is unavailable: {exc.reason}.") from None
    except BaseException:
        embedder.close()
        raise
    return embedder


__all__ = [
    "RemoteEmbedder",
    "RetryPolicy",
    "api_base",
    "encode_png",
    "is_endpoint_url",
    "load_remote_embedder",
    "parse_retry_after",
    "redact_url",
]
