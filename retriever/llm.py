"""The wire to an OpenAI-compatible Chat Completions endpoint: settings, errors, client.

:class:`LLMSettings` says where questions go (``PAGELENS_LLM_URL``, ``PAGELENS_LLM_MODEL``,
``PAGELENS_LLM_API_KEY``) and what a request may carry (the provider limits); without a URL
nothing may be sent (:class:`LLMNotConfiguredError`). :class:`ChatClient` sends one request,
whole or streamed, with retries and errors written for a person. What is sent (pages,
citations) is :mod:`retriever.ask`'s business.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import logging
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from indexer import config
from indexer.errors import PageLensError
from retriever.export import ExportSettings

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


def _env_text(env: Mapping[str, str] | None, name: str) -> str:
    return (config.get(name, env) or "").strip()


def _env_int(env: Mapping[str, str] | None, name: str, default: int, minimum: int = 1) -> int:
    raw = _env_text(env, name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise PageLensError(f"{name} must be a whole number, not {raw!r}.") from None
    if value < minimum:
        raise PageLensError(f"{name} must be at least {minimum}, not {value}.")
    return value


def _env_float(env: Mapping[str, str] | None, name: str, default: float) -> float:
    raw = _env_text(env, name)
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
            check_url(self.url)
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
        max_side = _env_int(env, config.LLM_MAX_SIDE_ENV, ExportSettings.max_side)
        values: dict[str, Any] = {
            "url": _env_text(env, config.LLM_URL_ENV) or None,
            "model": _env_text(env, config.LLM_MODEL_ENV) or DEFAULT_MODEL,
            "api_key": _env_text(env, config.LLM_API_KEY_ENV) or None,
            "timeout_s": _env_float(env, config.LLM_TIMEOUT_ENV, cls.timeout_s),
            "retries": _env_int(env, config.LLM_RETRIES_ENV, cls.retries, minimum=0),
            "max_images": _env_int(env, config.LLM_MAX_IMAGES_ENV, cls.max_images),
            "max_image_bytes": int(
                _env_float(env, config.LLM_MAX_IMAGE_MB_ENV, cls.max_image_bytes / MB) * MB
            ),
            "max_request_bytes": int(
                _env_float(env, config.LLM_MAX_REQUEST_MB_ENV, cls.max_request_bytes / MB) * MB
            ),
            "image": ExportSettings(max_side=max_side),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def chosen(
        cls,
        *,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LLMSettings:
        """The environment's settings with a person's choices (the app's LLM settings).

        ``url`` and ``model`` replace the variables' values when given. The key of
        ``PAGELENS_LLM_API_KEY`` belongs to ``PAGELENS_LLM_URL``: it is sent only while the
        endpoint is that URL, so that pointing the app at another server never hands it the
        configured provider's key; ``api_key`` (typed in) replaces it.
        """
        base = cls.from_env(env)
        url = check_url(url, allow_credentials=False, label="The LLM endpoint") if url else None
        same_place = url is None or _same_url(url, base.url)
        key = api_key or (base.api_key if same_place else None)
        return dataclasses.replace(
            base, url=url or base.url, model=(model or "").strip() or base.model, api_key=key
        )

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


def check_url(url: str, *, label: str = config.LLM_URL_ENV, allow_credentials: bool = True) -> str:
    """``url`` stripped, or a :class:`PageLensError` saying what a good one looks like.

    ``label`` names what was wrong (the variable, or the app's field); a URL carrying a
    user name or password is refused where a key has its own field
    (``allow_credentials=False``), so that a secret is never shown back in a URL.
    """
    text = url.strip()
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PageLensError(
            f"{label} must be an http(s) URL such as http://localhost:11434/v1, not {url!r}."
        )
    if not allow_credentials and (parts.username or parts.password):
        raise PageLensError(
            f"{label} must not carry a user name or password: type the key in the API key "
            "field, where it is never shown again."
        )
    return text


def _same_url(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().rstrip("/") == b.strip().rstrip("/")


def request_body(messages: list[dict], settings: LLMSettings, *, stream: bool) -> dict:
    return {"model": settings.model, "messages": messages, "stream": stream}


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
