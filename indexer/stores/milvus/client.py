"""Talking to a Milvus server: the connection (token, TLS, keepalive), every call bounded
by the timeout and retried once after a server restart, a failure said in one line
(:class:`~indexer.errors.CollectionError`) with the token scrubbed from it, and pymilvus's
own log records quieted for the duration of PageLens's calls only."""

from __future__ import annotations

import base64
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from indexer import config
from indexer.config import MILVUS_CA_ENV as CA_ENV
from indexer.config import MILVUS_LOG_ENV as LOG_ENV
from indexer.config import MILVUS_TIMEOUT_ENV as TIMEOUT_ENV
from indexer.config import MILVUS_TOKEN_ENV as TOKEN_ENV
from indexer.errors import CollectionError
from indexer.stores.milvus.address import MilvusAddress

DEFAULT_TIMEOUT = 10.0
UPSERT_ROWS = 128  # rows per upsert call (~0.8 MB of vectors): each call fits the timeout


class _Quieting:
    """pymilvus's log records off while at least one PageLens call is in flight.

    pymilvus logs every failed RPC with a traceback on stderr (through its own handler);
    PageLens says each failure once, in one line (CollectionError). ``PAGELENS_MILVUS_LOG``
    set keeps them. The ``pymilvus`` logger's level is raised when the first call (of any
    thread) starts and put back as it was when the last one ends, so a library user's
    logging is as they left it between calls (a program may quiet pymilvus for good: the
    CLI does, in its logging setup).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._level = logging.NOTSET

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        if config.get(LOG_ENV):
            yield
            return
        logger = logging.getLogger("pymilvus")
        with self._lock:
            if self._depth == 0:
                self._level = logger.level
                logger.setLevel(logging.CRITICAL)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    logger.setLevel(self._level)


#: ``with quiet_pymilvus(): <one pymilvus call>`` (see :class:`_Quieting`).
quiet_pymilvus = _Quieting()


class MilvusConnection:
    """A pymilvus client and the calls made through it (the base of the engine's layers)."""

    address: MilvusAddress
    timeout: float
    client: Any
    pages_name: str
    docs_name: str
    meta_name: str
    _pages_ready: bool

    def _connect(self) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise CollectionError(
                "Milvus collections need pymilvus: pip install 'pagelens[milvus]'."
            ) from exc
        token = config.get(TOKEN_ENV) or ""
        tls: dict[str, str] = {}
        ca = (config.get(CA_ENV) or "").strip()
        if ca and self.address.secure:
            ca_path = Path(ca).expanduser()
            if not ca_path.is_file():
                raise CollectionError(
                    f"{CA_ENV} names {ca_path}, which is not a file: it should be the PEM file "
                    "of the certificate authority that signed the Milvus server's certificate."
                )
            tls["server_pem_path"] = str(ca_path)  # pymilvus: the roots to trust
        try:
            with quiet_pymilvus():
                return MilvusClient(
                    uri=self.address.uri,
                    token=token,
                    timeout=self.timeout,
                    dedicated=True,  # this store's own channel: never a stale shared one
                    # gRPC servers refuse keepalive pings more often than every 5 minutes by
                    # default ("too many pings": milvus-lite does); pymilvus pings every 10 s.
                    grpc_options={
                        "grpc.keepalive_time_ms": 300_000,
                        "grpc.keepalive_permit_without_calls": 0,
                    },
                    **tls,
                )
        except Exception as exc:  # grpc / MilvusException: say it in one line
            problem = _tls_problem(exc) if self.address.secure else None
            if problem:
                raise CollectionError(
                    f"TLS with Milvus at {self.address.host}:{self.address.port} failed: {problem}"
                ) from exc
            raise CollectionError(
                f"Cannot reach Milvus at {self.address.host}:{self.address.port} within "
                f"{self.timeout:g} s ({_reason(exc)}). Is the server running and the address "
                f"(milvus:// plaintext, milvuss:// TLS) right? ({TIMEOUT_ENV} sets the wait; "
                f"{TOKEN_ENV} the token)"
            ) from exc

    def _call(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Milvus call with the bounded timeout; a failure becomes one clear line."""
        kwargs.setdefault("timeout", self.timeout)
        for attempt in (1, 2):
            try:
                with quiet_pymilvus():
                    return fn(*args, **kwargs)
            except CollectionError:
                raise
            except Exception as exc:
                if not _is_server_error(exc):
                    raise
                if attempt == 1 and _not_loaded(exc):
                    # A restarted server comes back with every collection released: a
                    # long-lived process (the app, `pagelens serve`) loads ours again once.
                    self._reload()
                    continue
                raise CollectionError(
                    f"Milvus at {self.address.host}:{self.address.port} failed while {what} "
                    f"({_reason(exc)}). What was stored before is intact; run the same "
                    "command again when the server is back."
                ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _reload(self) -> None:
        """Load this collection's Milvus collections into memory again (after a restart)."""
        names = [self.meta_name, self.docs_name] + ([self.pages_name] if self._pages_ready else [])
        for name in names:
            with contextlib.suppress(Exception), quiet_pymilvus():  # the retried call says
                self.client.load_collection(name, timeout=self.timeout)  # what failed

    def _upsert(self, what: str, name: str, rows: Sequence[dict]) -> None:
        """Upsert ``rows`` in chunks of :data:`UPSERT_ROWS`.

        Why chunks: every call has the same bounded timeout, so one call must carry a bounded
        amount of work. A bulk write (migration, a large batch) of thousands of 1536-d rows in
        one RPC can exceed it on a busy server although nothing is wrong. Each row is atomic on
        its own (its vector and ``embedded`` travel together), so chunking keeps the promise
        that a page is searchable only when it is whole.
        """
        for start in range(0, len(rows), UPSERT_ROWS):
            self._call(what, self.client.upsert, name, list(rows[start : start + UPSERT_ROWS]))

    @property
    def location(self) -> str:
        return self.address.spec

    def _iter(self, name: str, expr: str, fields: list[str]) -> Iterator[dict]:
        it = self._call(
            f"reading {name}",
            self.client.query_iterator,
            name,
            batch_size=4096,
            filter=expr,
            output_fields=fields,
        )
        try:
            while True:
                batch = self._call(f"reading {name}", lambda timeout=None: it.next())
                if not batch:
                    return
                yield from batch
        finally:
            with contextlib.suppress(Exception), quiet_pymilvus():
                it.close()

    def _query(self, name: str, what: str, **kwargs: Any) -> list[dict]:
        return list(self._call(what, self.client.query, name, **kwargs))

    def _count(self, expr: str, name: str | None = None) -> int:
        rows = self._query(
            name or self.pages_name, "counting", filter=expr, output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0


def _is_server_error(exc: BaseException) -> bool:
    try:
        from pymilvus.exceptions import MilvusException
    except ImportError:  # pragma: no cover
        return False
    if isinstance(exc, MilvusException):
        return True
    mod = type(exc).__module__
    return mod.startswith("grpc") or isinstance(exc, ConnectionError | TimeoutError)


def _not_loaded(exc: BaseException) -> bool:
    """Whether Milvus refused a call because the collection is not loaded (released)."""
    text = str(getattr(exc, "message", None) or exc).lower()
    return "released" in text or "not loaded" in text


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    text = " ".join(scrub(str(text)).split())
    return text[:200]


def scrub(text: str) -> str:
    """``text`` without the Milvus token (as given, or base64 as sent in gRPC metadata).

    PageLens never puts the token in a message itself; this keeps a server's or client
    library's error text from carrying it into PageLens's output."""
    token = config.get(TOKEN_ENV) or ""
    if len(token) < 4:  # nothing (or too little to tell apart from ordinary text)
        return text
    for secret in (token, base64.b64encode(token.encode()).decode()):
        text = text.replace(secret, "***")
    return text


def _error_texts(exc: BaseException) -> Iterator[str]:
    """The messages of an exception and of those that caused it (gRPC's ``details()``)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        details = getattr(current, "details", None)
        if callable(details):
            with contextlib.suppress(Exception):
                yield str(details() or "")
        yield str(current)
        current = current.__cause__ or current.__context__


def _tls_problem(exc: BaseException) -> str | None:
    """What went wrong with TLS, in words, when a connection failed because of it."""
    text = " ".join(_error_texts(exc))
    verify = re.search(r"CERTIFICATE_VERIFY_FAILED:?\s*([^:\n\"]*)", text)
    if verify:
        why = verify.group(1).strip() or "certificate verify failed"
        return (
            f"the server's certificate is not trusted ({why}). If a private CA signed it, "
            f"set {CA_ENV} to that CA's PEM file."
        )
    lower = text.lower()
    if "hostname verification" in lower or "peer name" in lower:
        return (
            "the server's certificate does not name this host; use the host name (or IP "
            "address) the certificate was issued for."
        )
    if "wrong_version_number" in lower or "handshake failed" in lower:
        return (
            "the server did not answer with TLS. Is this a plaintext port? (milvus:// is "
            "plaintext, milvuss:// TLS)"
        )
    return None
