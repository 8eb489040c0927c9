"""Hits -> an answer: the export's ``messages`` sent to any OpenAI-compatible vision LLM.

The question and the retrieved pages go to a Chat Completions endpoint exactly as
:func:`retriever.export.to_openai_messages` builds them (pages as ``image_url`` parts, each
introduced by a numbered citation line ``[i] document, p. N``); the answer comes back
streamed or whole. Works with a local Ollama or vLLM serving a vision model, or any hosted
provider that speaks the same API.

Privacy: nothing is sent anywhere until a URL is configured (``PAGELENS_LLM_URL``); without
one every entry point stops with :class:`LLMNotConfiguredError` before it connects.

Citations: the model is asked to cite ``[document, p. N]`` (or the source number ``[i]``);
:func:`parse_citations` finds them and checks each against the pages that were sent. A page
that was not sent is kept but flagged (``sent=False``, no image), never trusted.

Limits: providers cap the images per request, the bytes per image and the request size. They
are settings (:class:`LLMSettings`) with safe defaults, checked before sending, so going over
is a clear :class:`AskLimitError` instead of a provider's 400.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import os
import re
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from indexer.errors import PageLensError, QueryError
from retriever.export import ExportSettings, to_openai_messages
from retriever.search import Hit

log = logging.getLogger(__name__)

#: Ollama's name for Qwen2.5-VL (``ollama pull qwen2.5vl``); vLLM users set the served name.
DEFAULT_MODEL = "qwen2.5vl"
#: Sent when no key is configured: local servers ignore it, and it keeps a stray
#: ``OPENAI_API_KEY`` from the environment from ever being sent to a configured URL.
NO_KEY = "no-key"
MB = 1024 * 1024
#: Statuses worth retrying: rate limits and the server-side failures that pass.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 30.0


class LLMError(PageLensError):
    """The LLM endpoint could not give an answer; the message says why and what to do.

    ``status`` is the endpoint's HTTP status (None when it was never reached) and ``code``
    a short stable reason (``llm_not_configured``, ``too_many_images``, ``rate_limited``...).
    """

    def __init__(self, message: str, *, status: int | None = None, code: str = "llm_error"):
        super().__init__(message)
        self.status = status
        self.code = code


class LLMNotConfiguredError(LLMError):
    """No URL is configured, so nothing may be sent."""

    def __init__(self) -> None:
        super().__init__(
            "No LLM is configured, so nothing was sent. Set PAGELENS_LLM_URL to an "
            "OpenAI-compatible endpoint (a local Ollama: http://localhost:11434/v1, a local "
            f"vLLM: http://localhost:8000/v1) and PAGELENS_LLM_MODEL (default {DEFAULT_MODEL}); "
            "add PAGELENS_LLM_API_KEY for a hosted provider.",
            code="llm_not_configured",
        )


class AskLimitError(LLMError):
    """The request would exceed one of the provider limits in :class:`LLMSettings`."""


# --------------------------------------------------------------------------- settings


def _env_int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageLensError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise PageLensError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise PageLensError(f"{name} must be a number, not {raw!r}.") from None
    if value <= 0:
        raise PageLensError(f"{name} must be positive, not {value}.")
    return value


@dataclass(frozen=True)
class LLMSettings:
    """Where questions go, and the limits a request must respect.

    ``url`` is the base URL as the OpenAI client takes it (``http://localhost:11434/v1``);
    a URL that already ends in ``/chat/completions`` is used as is. ``None`` means "not
    configured": nothing is sent. The limits default to what the strictest common providers
    accept (10 images, 5 MB per image, 20 MB per request); images are first downscaled per
    ``image`` (the export's settings: longest side 1568 px, JPEG).
    """

    url: str | None = None
    model: str = DEFAULT_MODEL
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 300.0
    retries: int = 2
    max_images: int = 10
    max_image_bytes: int = 5 * MB
    max_request_bytes: int = 20 * MB
    image: ExportSettings = ExportSettings()

    def __post_init__(self) -> None:
        if self.url is not None:
            parts = urllib.parse.urlsplit(self.url.strip())
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise PageLensError(
                    f"PAGELENS_LLM_URL must be an http(s) URL such as "
                    f"http://localhost:11434/v1, not {self.url!r}."
                )
        if not self.model.strip():
            raise PageLensError("PAGELENS_LLM_MODEL must not be empty.")
        if self.retries < 0:
            raise PageLensError("The number of retries must be 0 or more.")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> LLMSettings:
        """Settings from ``PAGELENS_LLM_*`` variables; keyword arguments win when not None.

        ``PAGELENS_LLM_URL``, ``PAGELENS_LLM_MODEL``, ``PAGELENS_LLM_API_KEY``,
        ``PAGELENS_LLM_MAX_IMAGES``, ``PAGELENS_LLM_MAX_IMAGE_MB``,
        ``PAGELENS_LLM_MAX_REQUEST_MB``, ``PAGELENS_LLM_MAX_SIDE`` (pixels),
        ``PAGELENS_LLM_TIMEOUT`` (seconds), ``PAGELENS_LLM_RETRIES``.
        """
        env = os.environ if env is None else env
        max_side = _env_int(env, "PAGELENS_LLM_MAX_SIDE", ExportSettings.max_side)
        values: dict[str, Any] = {
            "url": env.get("PAGELENS_LLM_URL", "").strip() or None,
            "model": env.get("PAGELENS_LLM_MODEL", "").strip() or DEFAULT_MODEL,
            "api_key": env.get("PAGELENS_LLM_API_KEY", "").strip() or None,
            "timeout_s": _env_float(env, "PAGELENS_LLM_TIMEOUT", cls.timeout_s),
            "retries": _env_int(env, "PAGELENS_LLM_RETRIES", cls.retries, minimum=0),
            "max_images": _env_int(env, "PAGELENS_LLM_MAX_IMAGES", cls.max_images),
            "max_image_bytes": int(
                _env_float(env, "PAGELENS_LLM_MAX_IMAGE_MB", cls.max_image_bytes / MB) * MB
            ),
            "max_request_bytes": int(
                _env_float(env, "PAGELENS_LLM_MAX_REQUEST_MB", cls.max_request_bytes / MB) * MB
            ),
            "image": ExportSettings(max_side=max_side),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def configured(self) -> bool:
        return self.url is not None

    @property
    def endpoint(self) -> str:
        """The Chat Completions URL."""
        if self.url is None:
            raise LLMNotConfiguredError()
        url = self.url.strip().rstrip("/")
        return url if url.endswith("/chat/completions") else f"{url}/chat/completions"

    @property
    def host(self) -> str:
        """``host:port`` of the endpoint, as shown to the user before anything is sent."""
        if self.url is None:
            return "(not configured)"
        parts = urllib.parse.urlsplit(self.url.strip())
        return parts.netloc.rpartition("@")[2]  # never show credentials in a URL

    @property
    def is_local(self) -> bool:
        """Whether the endpoint is on this machine (localhost or a loopback address)."""
        if self.url is None:
            return False
        host = urllib.parse.urlsplit(self.url.strip()).hostname or ""
        if host == "localhost" or host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def destination(self) -> str:
        """One line saying where pages go: ``http://host:port (model M)``."""
        if self.url is None:
            return "nowhere: no LLM is configured (PAGELENS_LLM_URL)"
        scheme = urllib.parse.urlsplit(self.url.strip()).scheme
        return f"{scheme}://{self.host} (model {self.model})"

    def with_overrides(self, **overrides: Any) -> LLMSettings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- messages


def build_messages(question: str, hits: Sequence[Hit], settings: LLMSettings) -> list[dict]:
    """The export's messages for these pages, after checking every limit (nothing is sent).

    Raises :class:`LLMNotConfiguredError` without a URL and :class:`AskLimitError` when the
    pages would exceed the provider's limits, before any network use.
    """
    if not settings.configured:
        raise LLMNotConfiguredError()
    question = (question or "").strip()
    if not question:
        raise QueryError("Ask a question to send with the pages.")
    if not hits:
        raise QueryError("No pages were found to ask about; search for something else.")
    check_page_count(len(hits), settings)
    messages = to_openai_messages(question, hits, settings=settings.image)
    for part in messages[-1]["content"]:
        if part.get("type") != "image_url":
            continue
        url = part["image_url"]["url"]
        size = len(url.partition(",")[2]) * 3 // 4
        if size > settings.max_image_bytes:
            index = messages[-1]["content"].index(part) // 2
            hit = hits[index - 1] if 0 < index <= len(hits) else hits[0]
            raise AskLimitError(
                f"The image of {hit.document}, p. {hit.page} is {size / MB:.1f} MB, more than "
                f"the {settings.max_image_bytes / MB:.1f} MB the LLM accepts per image "
                "(PAGELENS_LLM_MAX_IMAGE_MB); lower PAGELENS_LLM_MAX_SIDE or raise the limit.",
                code="image_too_large",
            )
    total = len(json.dumps(request_body(messages, settings, stream=True)).encode())
    if total > settings.max_request_bytes:
        raise AskLimitError(
            f"The request would be {total / MB:.1f} MB, more than the "
            f"{settings.max_request_bytes / MB:.1f} MB the LLM accepts "
            "(PAGELENS_LLM_MAX_REQUEST_MB); send fewer pages (-k) or smaller images "
            "(PAGELENS_LLM_MAX_SIDE).",
            code="request_too_large",
        )
    return messages


def check_page_count(n: int, settings: LLMSettings) -> None:
    """Raises :class:`AskLimitError` when ``n`` pages are more images than the LLM takes."""
    if n > settings.max_images:
        raise AskLimitError(
            f"{n} pages would be sent, but the LLM takes at most {settings.max_images} "
            f"images per request (PAGELENS_LLM_MAX_IMAGES); ask with -k {settings.max_images} "
            "or fewer, or raise the limit if your provider allows more.",
            code="too_many_images",
        )


def request_body(messages: list[dict], settings: LLMSettings, *, stream: bool) -> dict:
    return {"model": settings.model, "messages": messages, "stream": stream}


# --------------------------------------------------------------------------- citations


@dataclass(frozen=True)
class Citation:
    """A page the answer cites. ``sent`` is False when that page was not among those sent:
    such a citation is reported, but it has no image and must not be trusted."""

    document: str | None
    page: int | None
    image: str | None
    sent: bool
    text: str = ""

    def as_dict(self) -> dict:
        return {
            "document": self.document,
            "page": self.page,
            "image": self.image,
            "sent": self.sent,
        }


_BRACKETS = re.compile(r"\[([^\[\]\n]{1,400})\]")
_DOC_PAGE = re.compile(r"^\s*(?P<doc>.+?)\s*,\s*(?:p\.|pp\.|page|pg\.)\s*(?P<page>\d+)\s*$", re.I)
_NUMBER = re.compile(r"^\s*(\d{1,4})\s*$")


def parse_citations(text: str, hits: Sequence[Hit]) -> list[Citation]:
    """Citations in ``text``, in order of first appearance, each checked against ``hits``.

    Recognised forms: ``[document, p. N]`` (the form the prompt asks for; several may share
    brackets, separated by ``;``) and ``[i]``, the number of a citation line that was sent.
    """
    by_page = {(h.document, h.page): h for h in hits}
    by_lower = {(h.document.lower(), h.page): h for h in hits}
    out: list[Citation] = []
    seen: set[tuple[Any, Any]] = set()
    for match in _BRACKETS.finditer(text):
        for part in match.group(1).split(";"):
            cite = _one_citation(part, hits, by_page, by_lower)
            if cite is None:
                continue
            key = (cite.document, cite.page)
            if key in seen:
                continue
            seen.add(key)
            out.append(cite)
    return out


def _one_citation(
    part: str,
    hits: Sequence[Hit],
    by_page: dict[tuple[str, int], Hit],
    by_lower: dict[tuple[str, int], Hit],
) -> Citation | None:
    number = _NUMBER.match(part)
    if number:
        i = int(number.group(1))
        if 1 <= i <= len(hits):
            hit = hits[i - 1]
            return Citation(hit.document, hit.page, hit.image, True, part.strip())
        return Citation(None, None, None, False, part.strip())
    m = _DOC_PAGE.match(part)
    if not m:
        return None
    doc, page = m.group("doc").strip().strip("\"'“”"), int(m.group("page"))
    found = by_page.get((doc, page)) or by_lower.get((doc.lower(), page))
    if found is not None:
        return Citation(found.document, found.page, found.image, True, part.strip())
    return Citation(doc, page, None, False, part.strip())


# --------------------------------------------------------------------------- answers


@dataclass(frozen=True)
class Answer:
    """The LLM's answer to a question about the pages sent (``hits``)."""

    question: str
    text: str
    citations: list[Citation]
    hits: list[Hit]
    model: str

    @property
    def unverified(self) -> list[Citation]:
        """Citations of pages that were not sent."""
        return [c for c in self.citations if not c.sent]

    def as_dict(self) -> dict:
        """``{"answer", "citations": [{"document", "page", "image", "sent"}], "hits", "model"}``."""
        return {
            "answer": self.text,
            "citations": [c.as_dict() for c in self.citations],
            "hits": [h.as_dict() for h in self.hits],
            "model": self.model,
        }


def make_answer(question: str, text: str, hits: Sequence[Hit], model: str) -> Answer:
    return Answer(question, text, parse_citations(text, hits), list(hits), model)


class AnswerStream:
    """Iterate for the answer's text as it arrives; :attr:`answer` is set once it ends."""

    def __init__(self, question: str, hits: Sequence[Hit], pieces: Iterator[str], model: str):
        self.question = question
        self.hits = list(hits)
        self.model = model
        self.answer: Answer | None = None
        self._pieces = pieces
        self._parts: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for piece in self._pieces:
            self._parts.append(piece)
            yield piece
        self.answer = make_answer(self.question, "".join(self._parts), self.hits, self.model)

    def result(self) -> Answer:
        """Reads the rest of the stream (if any) and returns the answer."""
        for _ in self:
            pass
        assert self.answer is not None
        return self.answer


# --------------------------------------------------------------------------- the client


class ChatClient:
    """A minimal OpenAI-compatible Chat Completions client with retries and clear errors.

    Retries 408/409/429/5xx and connection failures up to ``settings.retries`` times,
    waiting ``Retry-After`` (capped at 30 s) or 0.5, 1, 2... seconds; a streamed request
    is only retried before its first byte arrives. Every failure becomes an
    :class:`LLMError` naming the endpoint and the provider's own message.
    """

    def __init__(
        self,
        settings: LLMSettings,
        *,
        transport: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not settings.configured:
            raise LLMNotConfiguredError()
        self.settings = settings
        self.transport = transport
        self.sleep = sleep

    def _headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.settings.api_key or NO_KEY}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream, application/json",
        }

    def _client(self):
        import httpx

        return httpx.Client(
            timeout=httpx.Timeout(self.settings.timeout_s, connect=10.0),
            transport=self.transport,
            # A local LLM is reached directly, never through an HTTP(S)_PROXY from the
            # environment (that would hand the pages to the proxy); hosted ones may need it.
            trust_env=not self.settings.is_local,
        )

    def complete(self, messages: list[dict]) -> str:
        """The whole answer of one non-streamed request."""
        body = request_body(messages, self.settings, stream=False)
        with self._client() as client:
            response = self._send(client, body, stream=False)
            try:
                data = response.json()
                content = data["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                raise LLMError(
                    f"The LLM at {self.settings.host} answered something that is not a Chat "
                    f"Completions response ({type(exc).__name__}: {exc}).",
                    status=response.status_code,
                    code="bad_response",
                ) from exc
        return _content_text(content)

    def stream(self, messages: list[dict]) -> Iterator[str]:
        """The answer's text pieces of one streamed request, as they arrive."""
        body = request_body(messages, self.settings, stream=True)
        with self._client() as client:
            response = self._send(client, body, stream=True)
            try:
                yield from self._pieces(response)
            finally:
                response.close()

    def _pieces(self, response) -> Iterator[str]:
        import httpx

        kind = response.headers.get("content-type", "")
        try:
            if "text/event-stream" not in kind:
                # A server that ignores "stream": one JSON answer.
                response.read()
                data = response.json()
                yield _content_text(data["choices"][0]["message"]["content"])
                return
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    return
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise LLMError(
                        f"The LLM at {self.settings.host} stopped with an error: "
                        f"{_error_message(chunk)}",
                        code="llm_error",
                    )
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        yield _content_text(piece)
        except httpx.HTTPError as exc:
            raise LLMError(
                f"The connection to the LLM at {self.settings.host} broke while it answered "
                f"({type(exc).__name__}: {exc}).",
                code="llm_unreachable",
            ) from exc
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise LLMError(
                f"The LLM at {self.settings.host} sent something that is not a Chat "
                f"Completions stream ({type(exc).__name__}: {exc}).",
                code="bad_response",
            ) from exc

    def _send(self, client, body: dict, *, stream: bool):
        import httpx

        settings = self.settings
        attempts = settings.retries + 1
        last: LLMError | None = None
        for attempt in range(1, attempts + 1):
            try:
                request = client.build_request(
                    "POST", settings.endpoint, json=body, headers=self._headers()
                )
                response = client.send(request, stream=stream)
            except httpx.TimeoutException as exc:
                raise LLMError(
                    f"The LLM at {settings.host} did not answer within {settings.timeout_s:.0f} s "
                    "(PAGELENS_LLM_TIMEOUT).",
                    code="llm_timeout",
                ) from exc
            except httpx.HTTPError as exc:
                last = LLMError(
                    f"Cannot reach the LLM at {settings.endpoint} ({type(exc).__name__}: {exc}); "
                    "is the server running, and is PAGELENS_LLM_URL right?",
                    code="llm_unreachable",
                )
                wait = _backoff(attempt)
            else:
                if response.status_code < 400:
                    return response
                response.read()
                last = _status_error(response, settings)
                response.close()
                if response.status_code not in RETRY_STATUSES:
                    raise last
                after = _retry_after(response)
                wait = _backoff(attempt) if after is None else after
            if attempt < attempts:
                log.info("LLM request failed (%s); retry %d in %.1f s", last, attempt, wait)
                self.sleep(wait)
        assert last is not None
        if attempts > 1:
            raise LLMError(f"{last} (tried {attempts} times)", status=last.status, code=last.code)
        raise last


def _backoff(attempt: int) -> float:
    return 0.5 * 2 ** (attempt - 1)


def _retry_after(response) -> float | None:
    raw = response.headers.get("retry-after")
    if not raw:
        return None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(raw)))
    except ValueError:
        return None


def _error_message(data: Any) -> str:
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message") or err)
        return str(err)
    return str(data)


def _status_error(response, settings: LLMSettings) -> LLMError:
    status = response.status_code
    try:
        detail = _error_message(response.json())
    except ValueError:
        detail = response.text.strip()[:300] or response.reason_phrase
    where = f"The LLM at {settings.host}"
    if status == 429:
        return LLMError(
            f"{where} is rate-limiting requests (429: {detail}); wait and ask again.",
            status=status,
            code="rate_limited",
        )
    if status in (401, 403):
        return LLMError(
            f"{where} refused the request ({status}: {detail}); check PAGELENS_LLM_API_KEY.",
            status=status,
            code="llm_auth",
        )
    if status == 404:
        return LLMError(
            f"{where} answered 404 ({detail}); check PAGELENS_LLM_URL (the base URL, e.g. "
            f"http://localhost:11434/v1) and that it serves the model '{settings.model}' "
            "(PAGELENS_LLM_MODEL).",
            status=status,
            code="llm_not_found",
        )
    if status >= 500:
        return LLMError(
            f"{where} had a server error ({status}: {detail}).", status=status, code="llm_error"
        )
    return LLMError(
        f"{where} refused the request ({status}: {detail}).", status=status, code="llm_refused"
    )


def _content_text(content: Any) -> str:
    """Message content as text (a string, or a list of text parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text")
        )
    raise TypeError(f"unexpected content {type(content).__name__}")


# --------------------------------------------------------------------------- entry points


def ask(
    question: str,
    hits: Sequence[Hit],
    *,
    settings: LLMSettings | None = None,
    client: ChatClient | None = None,
) -> Answer:
    """Send the question and pages in one request and return the whole cited answer."""
    settings = settings or (client.settings if client else LLMSettings.from_env())
    messages = build_messages(question, hits, settings)
    client = client or ChatClient(settings)
    text = client.complete(messages)
    return make_answer(question.strip(), text, hits, settings.model)


def ask_stream(
    question: str,
    hits: Sequence[Hit],
    *,
    settings: LLMSettings | None = None,
    client: ChatClient | None = None,
) -> AnswerStream:
    """Like :func:`ask`, streamed. Every check (configuration, limits) happens here, before
    iteration starts; the request is sent when the stream is first iterated."""
    settings = settings or (client.settings if client else LLMSettings.from_env())
    messages = build_messages(question, hits, settings)
    client = client or ChatClient(settings)
    return AnswerStream(question.strip(), hits, client.stream(messages), settings.model)


def image_count(messages: list[dict]) -> int:
    """How many images a messages list carries (for logs and tests)."""
    return sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for p in m["content"]
        if p.get("type") == "image_url"
    )


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:...;base64,`` URL."""
    return base64.b64decode(url.partition(",")[2])
