"""OpenAI-compatible embeddings API and page search over HTTP (``pagelens serve``).

Build the app with :func:`create_app` and an injected embedder (nothing global)::

    app = create_app(load_embedder(...), api_key="secret")

Endpoints
---------
``POST /v1/embeddings``
    OpenAI's request and response shapes (``model``, ``input``, ``encoding_format`` "float" or
    "base64" = little-endian float32, ``dimensions``, ``user``), plus PageLens extensions:

    * list items may be objects: ``{"text": ...}``, ``{"image": URL}`` or both (fused input);
      an image is a ``data:image/...;base64,`` URL, or an ``http(s)`` URL when the server
      runs with ``--allow-url-images``;
    * ``"input_type": "query"`` embeds on the query side of retrieval (GME's
      :data:`~indexer.embedder.QUERY_INSTRUCTION`); ``"document"`` (the default) uses the
      model's default instruction; ``"instruction"`` gives any other instruction (not both).

    The vectors are exactly those of the library's ``embed_texts`` / ``embed_images`` /
    ``embed_fused`` for the same inputs and instruction. ``dimensions`` truncates then
    re-normalises (as OpenAI does for its v3 models). ``usage.prompt_tokens`` counts the tokens
    of every sequence the model runs (prompt template, instruction and visual tokens included)
    when the embedder can count them (GME's ``count_tokens``); otherwise it is an estimate:
    one token per word or punctuation mark of the text, images not counted.
    An input longer than the model's limit (GME: 1800 tokens) is refused with 400
    ``context_length_exceeded``, like OpenAI, rather than silently truncated.
``POST /v1/search``
    ``{"query", "image", "k", "collection", "documents", "mode", "pages"}`` ->
    ``{"hits": [...], "pending": n}``; collections are named (under ``PAGELENS_HOME``), never
    given as paths.
``GET /v1/pages/{id}/image?collection=NAME``
    The stored page image (PNG).
``GET /v1/models``, ``GET /v1/models/{id}``
    OpenAI's list / model shapes.
``GET /health``
    ``{"status": "ok", "model", "dim", "batches", "max_batch_seen", ...}`` (never needs a key).

Errors are OpenAI-style ``{"error": {"message", "type", "param", "code"}}`` objects. With an
``api_key`` every path but ``/health`` needs ``Authorization: Bearer KEY``.

Model work goes through one :class:`~app.batching.DynamicBatcher` (one worker thread owns
the model and its tokenizer), so concurrent requests are embedded together.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import io
import ipaddress
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.batching import (
    BatchedEmbedder,
    BatcherClosedError,
    DynamicBatcher,
    Job,
    QueueFullError,
    WorkItem,
)
from indexer.config import DEFAULT_MODEL_ID, collection_path, home
from indexer.embedder import QUERY_INSTRUCTION, Embedder
from indexer.errors import (
    CollectionError,
    DocumentNotFoundError,
    ModelMismatchError,
    PageLensError,
    QueryError,
)
from indexer.store import CATALOG, Collection

log = logging.getLogger(__name__)

#: Most inputs in one embeddings request (OpenAI allows 2048; images make ours heavier).
MAX_ITEMS = 256
#: Characters per text input, refused before tokenising (GME's 1800 tokens are far fewer).
MAX_TEXT_CHARS = 65_536
MAX_INSTRUCTION_CHARS = 2_000
#: Bytes of one image (decoded from its data URL, or downloaded).
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Pixels of one image (checked from its header, before decoding).
MAX_IMAGE_PIXELS = 50_000_000
#: Bytes of one request body (checked against Content-Length).
MAX_REQUEST_BYTES = 64 * 1024 * 1024
MAX_K = 100
#: Names every server answers to besides its model id and that id's last path part.
GENERIC_ALIASES = ("pagelens", "gme", "default")
GME_2B_ALIASES = (DEFAULT_MODEL_ID, "gme-Qwen2-VL-2B-Instruct", "gme-2b", "gme-qwen2-vl-2b")
_COLLECTION_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_WORD = re.compile(r"\w+|[^\w\s]")


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered as an OpenAI-style error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def response(self) -> JSONResponse:
        return error_response(
            self.status,
            self.message,
            type=self.type,
            param=self.param,
            code=self.code,
            headers=self.headers,
        )


class InputTooLongError(ValueError):
    """An input does not fit the model's sequence length (raised on the batcher's thread)."""

    code = "context_length_exceeded"


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _overloaded(exc: Exception) -> ApiError:
    return ApiError(
        503,
        f"The server is busy ({exc}); retry after a short wait.",
        type="server_error",
        code="server_overloaded",
        headers={"Retry-After": "1"},
    )


# --------------------------------------------------------------------------- request models


class InputItem(BaseModel):
    """One multimodal input: a text, an image (data URL or URL), or both (fused)."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = None
    image: str | None = None


class EmbeddingRequest(BaseModel):
    model: str = Field(description="The served model's id, its last path part, or an alias.")
    input: str | list[str | InputItem] = Field(
        description="A string, or a list of strings and {text, image} objects."
    )
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, description="Truncate and re-normalise.")
    user: str | None = None
    input_type: Literal["query", "document"] | None = Field(
        default=None,
        description="query: GME's retrieval-query instruction; document (default): the "
        "model's default instruction.",
    )
    instruction: str | None = Field(default=None, description="A custom instruction.")


class SearchRequest(BaseModel):
    query: str | None = None
    image: str | None = Field(default=None, description="data URL (or http(s) URL if allowed)")
    k: int = 5
    collection: str | None = Field(default=None, description="A collection name.")
    documents: list[str | int] | None = None
    mode: Literal["visual", "text", "hybrid"] | None = None
    pages: str | None = Field(default=None, description="A page range, e.g. 3-7.")


# --------------------------------------------------------------------------- images


class ImageLoader:
    """Turns a data URL (or, if allowed, an http(s) URL) into a PIL image, with limits."""

    def __init__(
        self,
        *,
        fetcher: UrlImageFetcher | None,
        max_bytes: int = MAX_IMAGE_BYTES,
        max_pixels: int = MAX_IMAGE_PIXELS,
    ) -> None:
        self.fetcher = fetcher
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels

    def load(self, ref: str, param: str) -> Image.Image:
        ref = ref.strip()
        if ref[:5].lower() == "data:":
            data = self._data_url(ref, param)
        elif ref[:7].lower() == "http://" or ref[:8].lower() == "https://":
            if self.fetcher is None:
                raise ApiError(
                    400,
                    "Image URLs are turned off on this server; send the image as a data URL "
                    "(data:image/png;base64,...) or start the server with --allow-url-images.",
                    param=param,
                    code="image_url_not_allowed",
                )
            data = self.fetcher.fetch(ref, param=param, max_bytes=self.max_bytes)
        else:
            raise ApiError(
                400,
                "An image must be a data URL (data:image/png;base64,...) or an http(s) URL.",
                param=param,
                code="invalid_image",
            )
        return self.decode(data, param)

    def _data_url(self, ref: str, param: str) -> bytes:
        head, sep, payload = ref.partition(",")
        if not sep or not head.lower().endswith(";base64"):
            raise ApiError(
                400,
                "An image data URL must be base64: data:image/png;base64,...",
                param=param,
                code="invalid_image",
            )
        if len(payload) * 3 // 4 > self.max_bytes + 3:
            raise _too_large(param, f"more than {self.max_bytes} bytes")
        try:
            data = base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ApiError(
                400,
                f"The image data URL is not valid base64 ({exc}).",
                param=param,
                code="invalid_image",
            ) from exc
        if len(data) > self.max_bytes:
            raise _too_large(param, f"more than {self.max_bytes} bytes")
        return data

    def decode(self, data: bytes, param: str) -> Image.Image:
        if not data:
            raise ApiError(400, "The image is empty.", param=param, code="invalid_image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im = Image.open(io.BytesIO(data))
                width, height = im.size
                if width * height > self.max_pixels:
                    raise _too_large(param, f"{width}x{height} pixels, more than {self.max_pixels}")
                im.load()
        except ApiError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _too_large(param, str(exc)) from exc
        except Exception as exc:
            raise ApiError(
                400,
                f"The data is not an image PageLens can read ({type(exc).__name__}: {exc}).",
                param=param,
                code="invalid_image",
            ) from exc
        return im


def _too_large(param: str, what: str) -> ApiError:
    return ApiError(400, f"The image is too large ({what}).", param=param, code="image_too_large")


class UrlImageFetcher:
    """Downloads images from public http(s) URLs only (a guard against SSRF).

    Every hop (the URL and each redirect) is resolved with DNS and refused unless *all* its
    addresses are public (not private, loopback, link-local, multicast, reserved, shared or
    unspecified; IPv4-mapped IPv6 is checked as IPv4). The connection then goes to the
    checked address itself (Host header and TLS SNI keep the name), so a DNS answer that
    changes between check and connect cannot redirect it. Redirects are followed by hand, at
    most ``max_redirects``, each re-checked; the whole fetch has a time limit and a size limit.
    Proxies from the environment are ignored.
    """

    def __init__(
        self,
        *,
        timeout: float = 10.0,
        max_redirects: int = 3,
        transport: Any = None,
    ) -> None:
        self.timeout = float(timeout)
        self.max_redirects = int(max_redirects)
        self.transport = transport

    @staticmethod
    def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                return UrlImageFetcher.is_public(ip.ipv4_mapped)
            if ip.sixtofour is not None and not UrlImageFetcher.is_public(ip.sixtofour):
                return False
            if ip.teredo is not None:
                return False
        return bool(
            ip.is_global
            and not (
                ip.is_private
                or ip.is_loopback
                or ip.is_link_local
                or ip.is_multicast
                or ip.is_reserved
                or ip.is_unspecified
            )
        )

    def resolve(self, host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out = []
        for info in infos:
            addr = info[4][0].split("%", 1)[0]  # drop an IPv6 zone id
            out.append(ipaddress.ip_address(addr))
        return out

    def allowed_addresses(
        self, host: str, port: int
    ) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
        """The host's addresses if all are public; raises ApiError otherwise."""
        try:
            addresses = self.resolve(host, port)
        except (OSError, UnicodeError) as exc:
            raise _url_error(f"cannot resolve {host!r} ({exc})") from exc
        if not addresses:
            raise _url_error(f"{host!r} has no address")
        bad = [str(a) for a in addresses if not self.is_public(a)]
        if bad:
            raise ApiError(
                400,
                f"Image URL host {host!r} resolves to a non-public address ({', '.join(bad)}); "
                "only public addresses may be fetched.",
                code="image_url_not_allowed",
            )
        return addresses

    def fetch(
        self, url: str, *, param: str | None = None, max_bytes: int = MAX_IMAGE_BYTES
    ) -> bytes:
        try:
            return self._fetch(url, max_bytes)
        except ApiError as exc:
            exc.param = param
            raise

    def _fetch(self, url: str, max_bytes: int) -> bytes:
        import httpx

        deadline = time.monotonic() + self.timeout
        current = url
        with httpx.Client(
            follow_redirects=False,
            timeout=httpx.Timeout(self.timeout),
            trust_env=False,
            transport=self.transport,
        ) as client:
            for _hop in range(self.max_redirects + 1):
                parts = urllib.parse.urlsplit(current)
                scheme = parts.scheme.lower()
                if scheme not in ("http", "https"):
                    raise _url_error(f"only http and https URLs can be fetched, not {scheme!r}")
                if parts.username or parts.password:
                    raise _url_error("URLs with user names or passwords are refused")
                host = parts.hostname
                if not host:
                    raise _url_error("the URL has no host")
                try:
                    port = parts.port or (443 if scheme == "https" else 80)
                except ValueError as exc:
                    raise _url_error(f"bad port ({exc})") from exc
                ip = self.allowed_addresses(host, port)[0]
                ip_host = f"[{ip}]" if ip.version == 6 else str(ip)
                target = urllib.parse.urlunsplit(
                    (scheme, f"{ip_host}:{port}", parts.path or "/", parts.query, "")
                )
                host_header = host if parts.port is None else f"{host}:{port}"
                extensions = {"sni_hostname": host} if scheme == "https" else {}
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _url_error(f"timed out after {self.timeout:g}s")
                request = client.build_request(
                    "GET",
                    target,
                    headers={"Host": host_header, "Accept": "image/*"},
                    extensions={**extensions, "timeout": httpx.Timeout(remaining).as_dict()},
                )
                try:
                    response = client.send(request, stream=True)
                except httpx.HTTPError as exc:
                    raise _url_error(f"cannot fetch {current} ({_short(exc)})") from exc
                try:
                    if response.status_code in (301, 302, 303, 307, 308):
                        location = response.headers.get("location")
                        if not location:
                            raise _url_error("a redirect without a Location")
                        current = urllib.parse.urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        raise _url_error(f"{current} answered HTTP {response.status_code}")
                    declared = response.headers.get("content-length")
                    if declared and declared.isdigit() and int(declared) > max_bytes:
                        raise _too_large(None, f"{declared} bytes, more than {max_bytes}")
                    chunks, size = [], 0
                    for chunk in response.iter_bytes():
                        size += len(chunk)
                        if size > max_bytes:
                            raise _too_large(None, f"more than {max_bytes} bytes")
                        if time.monotonic() > deadline:
                            raise _url_error(f"timed out after {self.timeout:g}s")
                        chunks.append(chunk)
                    return b"".join(chunks)
                except httpx.HTTPError as exc:
                    raise _url_error(f"cannot fetch {current} ({_short(exc)})") from exc
                finally:
                    response.close()
        raise _url_error(f"more than {self.max_redirects} redirects")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _url_error(message: str) -> ApiError:
    return ApiError(400, f"Image URL refused: {message}.", code="invalid_image_url")


# --------------------------------------------------------------------------- tokens


def estimate_tokens(text: str | None) -> int:
    """Without a tokenizer: one token per word or punctuation mark."""
    return len(_WORD.findall(text)) if text else 0


def check_item(embedder: Any, item: WorkItem) -> int:
    """Token count of an item; InputTooLongError if it exceeds the model's length.

    Runs on the batcher's thread (the only one that touches the tokenizer).
    """
    count = getattr(embedder, "count_tokens", None)
    if not callable(count):
        return estimate_tokens(item.text)
    try:
        n = int(count(item.text, item.image, instruction=item.instruction))
    except ValueError as exc:
        raise InputTooLongError(str(exc)) from exc
    max_length = getattr(embedder, "max_length", None)
    if max_length and n >= max_length:
        # count_tokens reports the length after truncation: count the text separately.
        exact = n
        tokenizer = getattr(embedder, "tokenizer", None)
        if tokenizer is not None and item.text:
            frame = int(count(None, item.image, instruction=item.instruction))
            text_ids = tokenizer(item.text, add_special_tokens=False)["input_ids"]
            exact = frame + len(text_ids)
        if exact > max_length:
            raise InputTooLongError(
                f"This model's maximum context length is {max_length} tokens, however this "
                f"input needs about {exact} tokens (prompt template and image included). "
                "Shorten the text."
            )
    return n


# --------------------------------------------------------------------------- collections


def resolve_collection_name(name: str | None) -> Path:
    """A collection *name* -> its folder under PAGELENS_HOME; paths are refused."""
    if name is None or name == "":
        return collection_path(None)
    if not _COLLECTION_NAME.fullmatch(name) or ".." in name:
        raise ApiError(
            400,
            f"Collection {name!r} is not a collection name (letters, digits, '_', '-', '.'; "
            "paths are not accepted over HTTP).",
            param="collection",
            code="invalid_collection",
        )
    path = collection_path(name)
    root = home()
    if path.parent.resolve() != root.resolve():  # a same-named folder in the cwd
        path = root / name
    return path


class CollectionCache:
    """Opened collections by folder, shared by all requests (thread-safe)."""

    def __init__(self, resolver: Callable[[str | None], Path]) -> None:
        self.resolver = resolver
        self._open: dict[Path, Collection] = {}
        self._lock = threading.Lock()

    def get(self, name: str | None) -> Collection:
        path = Path(self.resolver(name))
        with self._lock:
            store = self._open.get(path)
            if store is not None:
                return store
            if not (path / CATALOG).is_file():
                raise ApiError(
                    404,
                    f"No collection {name or path.name!r} on this server.",
                    param="collection",
                    code="collection_not_found",
                )
            try:
                store = Collection(path, create=False)
            except CollectionError as exc:
                raise ApiError(
                    404, str(exc), param="collection", code="collection_not_found"
                ) from exc
            self._open[path] = store
            return store

    def close(self) -> None:
        with self._lock:
            for store in self._open.values():
                with contextlib.suppress(Exception):
                    store.close()
            self._open.clear()


# --------------------------------------------------------------------------- the app


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


def public_model_id(model_id: str) -> str:
    """The id clients see: the model id, or only the folder name of a local model."""
    return os.path.basename(model_id.rstrip("/\\")) if os.path.isabs(model_id) else model_id


def model_names(model_id: str, extra: tuple[str, ...] = ()) -> set[str]:
    """Lower-cased names a request's ``model`` may use for the served model."""
    base = os.path.basename(model_id.rstrip("/\\"))
    names = {model_id, base, public_model_id(model_id), *GENERIC_ALIASES, *extra}
    gme_2b = {a.lower() for a in GME_2B_ALIASES}
    # GME-2B's names also mean the served model unless it is another GME variant.
    if base.lower() in gme_2b or not base.lower().startswith("gme-"):
        names |= set(GME_2B_ALIASES)
    return {n.lower() for n in names}


def create_app(
    embedder: Embedder,
    *,
    collection_resolver: Callable[[str | None], Path] | None = None,
    api_key: str | None = None,
    allow_url_images: bool = False,
    url_fetcher: UrlImageFetcher | None = None,
    max_batch: int = 16,
    max_wait_ms: float = 10.0,
    max_queue: int = 1024,
    max_items: int = MAX_ITEMS,
    max_image_bytes: int = MAX_IMAGE_BYTES,
    max_image_pixels: int = MAX_IMAGE_PIXELS,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    model_aliases: tuple[str, ...] = (),
) -> FastAPI:
    """The API app around one embedder (see the module docstring for the endpoints).

    ``collection_resolver(name)`` maps a request's collection name (None: the default) to a
    folder; by default names under ``PAGELENS_HOME``. ``url_fetcher`` replaces the default
    :class:`UrlImageFetcher` (it implies ``allow_url_images``).
    """
    batcher = DynamicBatcher(
        embedder,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_queue=max_queue,
        check=check_item,
    )
    shared = BatchedEmbedder(batcher)
    if url_fetcher is None and allow_url_images:
        url_fetcher = UrlImageFetcher()
    images = ImageLoader(
        fetcher=url_fetcher, max_bytes=max_image_bytes, max_pixels=max_image_pixels
    )
    collections = CollectionCache(collection_resolver or resolve_collection_name)
    served_id = public_model_id(embedder.model_id)
    accepted = model_names(embedder.model_id, tuple(model_aliases))

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        await run_in_threadpool(batcher.close)
        collections.close()

    app = FastAPI(
        title="PageLens API",
        version="1",
        summary="OpenAI-compatible embeddings (text, image, fused) and page search, with GME.",
        lifespan=lifespan,
    )
    app.state.batcher = batcher
    app.state.embedder = embedder
    app.state.collections = collections

    # -- errors ------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        if first.get("type") == "json_invalid":
            return error_response(
                400,
                "We could not parse the JSON body of your request. It must be valid JSON.",
                code="invalid_json",
            )
        loc = [p for p in first.get("loc", ()) if p != "body"]
        if loc[:1] == ["input"]:  # a union: the deepest error says the most
            first = max(errors, key=lambda e: len(e.get("loc", ())))
            loc = [p for p in first.get("loc", ()) if p != "body"]
        param = _param(loc)
        message = first.get("msg", "invalid request")
        if first.get("type") == "missing":
            message = f"Missing required parameter: '{param}'."
        elif param:
            message = f"Invalid value for '{param}': {message}."
        if loc[:1] == ["input"]:
            message += (
                " 'input' must be a string, or a list of strings and objects "
                '{"text": ..., "image": ...} (token arrays are not supported).'
            )
        return error_response(400, message, param=param or None, code=first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(
            exc.status_code, str(exc.detail), code=code, headers=getattr(exc, "headers", None)
        )

    @app.exception_handler(Exception)
    async def _crash(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(
            500, f"The server had an error ({type(exc).__name__}).", type="server_error"
        )

    # -- auth and size limits ------------------------------------------------------------
    app.add_middleware(GuardMiddleware, api_key=api_key, max_request_bytes=max_request_bytes)

    # -- helpers -------------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name.strip().lower() not in accepted:
            raise ApiError(
                404,
                f"The model '{name}' does not exist on this server; it serves '{served_id}'.",
                param="model",
                code="model_not_found",
            )

    def load_image(ref: str, param: str) -> Image.Image:
        return images.load(ref, param)

    # -- endpoints -----------------------------------------------------------------------
    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": served_id, "dim": embedder.dim, **batcher.stats()}

    def model_card() -> dict:
        return {"id": served_id, "object": "model", "created": 0, "owned_by": "pagelens"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        check_model(model)
        return model_card()

    @app.post("/v1/embeddings")
    async def embeddings(body: EmbeddingRequest) -> JSONResponse:
        check_model(body.model)
        single = isinstance(body.input, str)
        raw = [body.input] if single else list(body.input)
        if not raw:
            raise ApiError(400, "'input' must not be empty.", param="input", code="empty_input")
        if len(raw) > max_items:
            raise ApiError(
                400,
                f"Too many inputs: {len(raw)}; at most {max_items} per request.",
                param="input",
                code="too_many_inputs",
            )
        if body.instruction is not None and body.input_type is not None:
            raise ApiError(
                400, "Give 'instruction' or 'input_type', not both.", param="instruction"
            )
        instruction = body.instruction
        if instruction is not None and not (0 < len(instruction) <= MAX_INSTRUCTION_CHARS):
            raise ApiError(
                400,
                f"'instruction' must have 1 to {MAX_INSTRUCTION_CHARS} characters.",
                param="instruction",
            )
        if body.input_type == "query":
            instruction = QUERY_INSTRUCTION
        dims = body.dimensions
        if dims is not None and not 1 <= dims <= embedder.dim:
            raise ApiError(
                400,
                f"'dimensions' must be between 1 and {embedder.dim} for this model, not {dims}.",
                param="dimensions",
            )
        parsed: list[tuple[str | None, str | None]] = []
        for i, entry in enumerate(raw):
            param = "input" if single else f"input[{i}]"
            text, image = (entry, None) if isinstance(entry, str) else (entry.text, entry.image)
            if text is None and image is None:
                raise ApiError(400, "An input object needs 'text', 'image' or both.", param=param)
            if text is not None:
                if not text.strip() and image is None:
                    raise ApiError(
                        400, "An input text must not be empty.", param=param, code="empty_input"
                    )
                if len(text) > MAX_TEXT_CHARS:
                    raise ApiError(
                        400,
                        f"An input text has {len(text)} characters; at most {MAX_TEXT_CHARS}.",
                        param=param,
                        code="context_length_exceeded",
                    )
            parsed.append((text, image))

        def decode_all() -> list[Image.Image | None]:
            return [
                load_image(img, f"input[{i}].image" if not single else "input.image")
                if img is not None
                else None
                for i, (_text, img) in enumerate(parsed)
            ]

        pictures = (
            await run_in_threadpool(decode_all)
            if any(p[1] for p in parsed)
            else [None] * len(parsed)
        )
        job = Job()
        items = []
        for (text, _img), picture in zip(parsed, pictures, strict=True):
            kind = (
                "fused"
                if text is not None and picture is not None
                else ("image" if picture is not None else "text")
            )
            items.append(WorkItem(kind, text=text, image=picture, instruction=instruction, job=job))
        try:
            futures = batcher.submit(items)
        except (QueueFullError, BatcherClosedError) as exc:
            raise _overloaded(exc) from exc
        results = []
        for i, future in enumerate(futures):
            try:
                results.append(await asyncio.wrap_future(future))
            except InputTooLongError as exc:
                for other in futures:
                    other.cancel()
                culprit = getattr(exc, "work_item", None)
                at = next((n for n, it in enumerate(items) if it is culprit), i)
                raise ApiError(
                    400,
                    str(exc),
                    param="input" if single else f"input[{at}]",
                    code=exc.code,
                ) from exc
        data = []
        tokens = 0
        for i, result in enumerate(results):
            vector = result.vector
            if dims is not None and dims < vector.shape[0]:
                vector = vector[:dims]
                norm = float(np.linalg.norm(vector))
                vector = vector / norm if norm > 0 else vector
            vector = np.asarray(vector, dtype="<f4")
            tokens += result.tokens or 0
            value: Any = (
                base64.b64encode(vector.tobytes()).decode("ascii")
                if body.encoding_format == "base64"
                else vector.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": served_id,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    @app.post("/v1/search")
    def search(body: SearchRequest) -> dict:
        from retriever.search import Retriever

        if not 1 <= body.k <= MAX_K:
            raise ApiError(400, f"'k' must be between 1 and {MAX_K}.", param="k")
        if body.query is not None and len(body.query) > MAX_TEXT_CHARS:
            raise ApiError(
                400, "The query is too long.", param="query", code="context_length_exceeded"
            )
        store = collections.get(body.collection)
        picture = load_image(body.image, "image") if body.image else None
        try:
            retriever = Retriever(None if body.mode == "text" else shared, store)
            hits = retriever.search(
                body.query,
                body.k,
                image=picture,
                documents=body.documents or None,
                pages=body.pages,
                mode=body.mode,
            )
            pending = retriever.pending()
        except (QueueFullError, BatcherClosedError) as exc:
            raise _overloaded(exc) from exc
        except InputTooLongError as exc:
            raise ApiError(400, str(exc), param="query", code=exc.code) from exc
        except DocumentNotFoundError as exc:
            raise ApiError(404, str(exc), param="documents", code="document_not_found") from exc
        except ModelMismatchError as exc:
            raise ApiError(409, str(exc), param="collection", code="model_mismatch") from exc
        except QueryError as exc:
            raise ApiError(400, str(exc), code="invalid_query") from exc
        except PageLensError as exc:
            raise ApiError(400, str(exc)) from exc
        suffix = (
            "?" + urllib.parse.urlencode({"collection": body.collection}) if body.collection else ""
        )
        return {
            "hits": [
                {
                    "document": h.document,
                    "document_id": h.document_id,
                    "page": h.page,
                    "score": round(float(h.score), 6),
                    "scores": {k: round(float(v), 6) for k, v in h.scores.items()},
                    "page_id": h.page_id,
                    "snippet": h.snippet,
                    "image_url": f"/v1/pages/{h.page_id}/image{suffix}",
                }
                for h in hits
            ],
            "pending": pending,
        }

    @app.get("/v1/pages/{page_id}/image", response_class=FileResponse)
    def page_image(page_id: int, collection: str | None = Query(default=None)) -> FileResponse:
        store = collections.get(collection)
        try:
            page = store.page(page_id)
        except DocumentNotFoundError as exc:
            raise ApiError(404, str(exc), param="page_id", code="page_not_found") from exc
        path = store.image_path(page).resolve()
        if store.path.resolve() not in path.parents or not path.is_file():
            raise ApiError(404, f"The image of page {page_id} is missing.", code="page_not_found")
        return FileResponse(path, media_type="image/png")

    return app


def _param(loc: list) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("str", "list[union[str,InputItem]]", "InputItem") or "[" in str(part):
            continue  # pydantic's names of union members
        else:
            out += ("." if out else "") + str(part)
    return out
