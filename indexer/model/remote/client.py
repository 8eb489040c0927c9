"""The remote embedder: GME behind an OpenAI-compatible ``/v1/embeddings`` endpoint, used
through the same :class:`~indexer.embedder.Embedder` interface as the in-process one (see
the package docstring for how and why). Imports the embedder interface, indexer.config,
indexer.errors and the other remote modules."""

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
from PIL import Image

from indexer import config
from indexer.errors import (
    EmbeddingError,
    EndpointError,
    ModelNotAvailableError,
)
from indexer.model import DEFAULT_INSTRUCTION, QUERY_INSTRUCTION, EmbedderBase, require_pairs
from indexer.model.remote.http import (
    DEFAULT_BACKOFF,
    DEFAULT_MAX_BACKOFF,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    RETRY_STATUSES,
    InputRefused,
    Retryable,
    RetryPolicy,
    api_base,
    connection_refused,
    error_message,
    fatal_error,
    make_client,
    parse_retry_after,
    redact_url,
    short_name,
    tls_refused,
    transport_reason,
)
from indexer.model.remote.wire import decode_embeddings, encode_input

log = logging.getLogger(__name__)

#: Environment variables (the CLI's ``--embedder`` reads the first); declared in
#: indexer/config.py.
ENV_URL = config.EMBEDDER_URL_ENV
ENV_KEY = config.API_KEY_ENV
ENV_BATCH = config.EMBEDDER_BATCH_ENV
ENV_CONCURRENCY = config.EMBEDDER_CONCURRENCY_ENV
ENV_TIMEOUT = config.EMBEDDER_TIMEOUT_ENV
ENV_RETRIES = config.EMBEDDER_RETRIES_ENV
#: A CA bundle (PEM) to trust for an https endpoint with a private certificate authority.
ENV_CA = config.EMBEDDER_CA_ENV

#: Inputs per request: 8 budget-sized pages are ~10 MB of PNG, well under servers' limits.
DEFAULT_BATCH_SIZE = 8
#: Requests in flight: enough for a GPU server's dynamic batcher to fill its batches.
DEFAULT_CONCURRENCY = 4


class RemoteEmbedder(EmbedderBase):
    """GME served by an OpenAI-compatible ``/v1/embeddings`` endpoint (see the package doc).

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
        #: Interactive use: a refused connection is not retried (see the package docstring).
        self.fail_fast = bool(fail_fast)
        self._has_key = bool(api_key)
        self._client = make_client(
            api_key=api_key,
            timeout=self.timeout,
            concurrency=self.concurrency,
            verify=verify,
            transport=transport,
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
            card = self._call("GET", "/models/" + urllib.parse.quote(short_name(wanted)), None)
        except EndpointError as exc:
            if exc.status not in (400, 404, 405):
                raise
            card = None
        if isinstance(card, dict) and card.get("id"):
            known = next((m for m in models if str(m["id"]) == str(card["id"])), {})
            return {**known, **card}
        served = ", ".join(repr(str(m["id"])) for m in models)
        raise ModelNotAvailableError(
            f"The endpoint {self.url} does not serve the model '{short_name(wanted)}'; it "
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
        payload = [encode_input(items[i]) for i in chunk]
        todo = list(range(len(chunk)))
        while todo:
            try:
                vectors = self._post_embeddings([payload[j] for j in todo], instruction)
            except InputRefused as exc:
                bad = todo.pop(exc.index)
                failed[chunk[bad]] = exc.reason
                continue
            except Retryable as exc:  # retries spent: the endpoint is down or overloaded
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
        out = decode_embeddings(answer, len(inputs), url=self.url, dim=self.dim)
        with self._stats_lock:
            self.stats["inputs"] += len(inputs)
        return out

    _stats_lock = threading.Lock()

    def _call(self, method: str, path: str, body: Any, *, per_input: bool = False) -> Any:
        """One API call with retries; returns the decoded JSON answer.

        Raises :class:`Retryable` when retries are spent on retryable failures,
        :class:`InputRefused` for a refused input (``per_input``), and
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
                failure = Retryable(
                    f"no answer from {self.url} within {self.timeout:g} s (timeout)"
                )
            except httpx.TransportError as exc:
                if tls_refused(exc):  # retrying cannot fix a certificate
                    raise EndpointError(
                        f"The TLS certificate of {self.url} was not accepted "
                        f"({transport_reason(exc)}). Use a certificate this computer trusts, "
                        f"or point {ENV_CA} at the CA bundle that signed it."
                    ) from None
                if self.fail_fast and connection_refused(exc):  # nothing listens there
                    raise Retryable(
                        f"nothing accepts connections at {self.url} (connection refused): "
                        f"start the embedding server, or check --embedder / {ENV_URL}"
                    ) from None
                failure = Retryable(f"cannot reach {self.url} ({transport_reason(exc)})")
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
                message = error_message(response)
                if status in RETRY_STATUSES or status >= 500:
                    failure = Retryable(
                        f"{self.url} answered HTTP {status}" + (f": {message}" if message else ""),
                        parse_retry_after(response.headers.get("Retry-After")),
                    )
                else:
                    raise fatal_error(
                        status,
                        message,
                        response,
                        url=self.url,
                        base_url=self.base_url,
                        model_id=self.model_id,
                        has_key=self._has_key,
                        per_input=per_input,
                    )
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


def _positive_int(value: Any) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def _same_name(served: str, wanted: str) -> bool:
    """A served id matches a wanted model by full id or by last path part, ignoring case.

    That is the rule collections use, so a local folder ``~/models/gme-2b`` names the model
    a server loaded from its own ``gme-2b`` folder.
    """
    a, b = served.strip().rstrip("/\\").lower(), wanted.strip().rstrip("/\\").lower()
    return a == b or short_name(a) == short_name(b)


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
    url = url or config.get(ENV_URL)
    if not url:
        raise EndpointError(f"No embedder URL: pass --embedder URL or set {ENV_URL}.")
    if api_key is None:
        api_key = config.get(ENV_KEY)
    for key, env, kind in (
        ("batch_size", ENV_BATCH, int),
        ("concurrency", ENV_CONCURRENCY, int),
        ("timeout", ENV_TIMEOUT, float),
        ("retries", ENV_RETRIES, int),
    ):
        if key not in options and (raw := config.get(env)):
            try:
                options[key] = kind(raw)
            except ValueError as exc:
                raise EndpointError(f"{env} must be a number, not {raw!r}.") from exc
    if "verify" not in options and (bundle := config.get(ENV_CA)):
        options["verify"] = bundle
    embedder = RemoteEmbedder(
        url, api_key=api_key, model=model, max_image_tokens=max_image_tokens, **options
    )
    try:
        embedder.connect()
    except Retryable as exc:
        embedder.close()
        raise EndpointError(f"The embedder endpoint is unavailable: {exc.reason}.") from None
    except BaseException:
        embedder.close()
        raise
    return embedder


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_CONCURRENCY", "RemoteEmbedder", "load_remote_embedder"]
