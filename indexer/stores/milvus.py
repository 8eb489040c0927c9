"""The Milvus engine: a collection whose documents and pages live in Milvus.

``milvus://HOST:PORT/NAME`` (``milvuss://`` for TLS, verified against gRPC's public roots
or the CA file ``PAGELENS_MILVUS_CA``; token from ``PAGELENS_MILVUS_TOKEN``, sent as gRPC
``authorization`` metadata and never put in a message or stored) names three Milvus
collections:

``NAME_pages``
    one row per page: ``id`` (INT64 primary key), ``document_id``, ``number``, ``text`` (the
    text layer, analysed for BM25), ``sparse`` (its BM25 vector, computed by Milvus's BM25
    function), ``image`` (key in the image store), ``image_sha256``, ``width``, ``height``,
    ``embedded`` (bool), ``embedded_at`` and ``vector`` (FLOAT_VECTOR, the model's dim; zeros
    while pending). Dense index: **HNSW, metric IP** (``M=16``, ``efConstruction=200``;
    search ``ef = max(64, k)``); page vectors are unit length, so IP is the cosine the local
    engine reports. Text index: ``SPARSE_INVERTED_INDEX`` with metric ``BM25``.
``NAME_documents``
    one row per document (the local catalog's columns).
``NAME_meta``
    the collection's identity: model, dim, fingerprint, render settings, image store.

Ids are deterministic: a document's id is the first 60 bits of its SHA-256, a page's id the
first 60 bits of SHA-256 of ``"<document id>:<number>"``. Two processes indexing the same
file, or a re-run after a crash, write the same rows again (upsert) and can never duplicate
them; that is why :meth:`MilvusCollection.writing` holds no lock and any number of
processes on any number of machines may index into one collection at once.

Visibility: an image is written (image store) before the page row that names it, and a
page row carries its vector in the same upsert that sets ``embedded = true``; visual search
filters on ``embedded == true``. So a page is found only once its row, image (and for visual
search its vector) are all stored. All reads use Strong consistency.

Every filter (documents, page range) becomes a Milvus boolean expression applied inside the
search, never a post-filter of a top-k. Hybrid search is ``hybrid_search`` with
``RRFRanker(RRF_K)``, the constant of the local engine, so both rank the same way.

Every call has a bounded timeout (``PAGELENS_MILVUS_TIMEOUT``, default 10 s) and any failure
of the server becomes one :class:`~indexer.errors.CollectionError` line.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from indexer.errors import CollectionError, CollectionNotFoundError, DocumentNotFoundError
from indexer.stores.base import (
    RRF_K,
    CollectionStats,
    EncodedImage,
    ModelBinding,
    PageFilter,
    PageInput,
    query_words,
    reciprocal_rank_fusion,
    utcnow,
    vectors_to_store,
)
from indexer.stores.milvus_images import (
    ImageStore,
    open_images,
    redact_userinfo,
    refuse_credentials,
)
from indexer.stores.types import Document, Page

log = logging.getLogger(__name__)

DEFAULT_PORT = 19530
TOKEN_ENV = "PAGELENS_MILVUS_TOKEN"
CA_ENV = "PAGELENS_MILVUS_CA"
TIMEOUT_ENV = "PAGELENS_MILVUS_TIMEOUT"
IMAGES_ENV = "PAGELENS_MILVUS_IMAGES"
ORPHAN_GRACE_ENV = "PAGELENS_MILVUS_ORPHAN_GRACE"
DEFAULT_ORPHAN_GRACE = 3600.0
#: An atomic write's temporary file (``.NAME.<random>.tmp``) lives for milliseconds; one this
#: old is the leftover of a killed process, never another writer's work in progress.
TEMP_FILE_GRACE = 300.0
DEFAULT_TIMEOUT = 10.0
UPSERT_ROWS = 128  # rows per upsert call (~0.8 MB of vectors): each call fits the timeout

#: Dense ANN index of page vectors and its parameters (see module docs).
DENSE_INDEX = {
    "index_type": "HNSW",
    "metric_type": "IP",
    "params": {"M": 16, "efConstruction": 200},
}
TEXT_MAX_BYTES = 60_000  # VARCHAR limit is 65,535 bytes; longer text layers are cut here
_FRACTION = re.compile(r"\.\d+(?=[+-]\d\d:\d\d$|Z$)")  # an ISO time's fraction of a second
#: Milvus allows 255 characters per collection name; PageLens adds up to 10 (``_documents``)
#: and keeps headroom, so a PageLens name has at most ``NAME_MAX`` characters.
NAME_MAX = 181
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: The BM25 field holds the page's words as the local engine's FTS5 tokenizer makes them
#: (:func:`text_terms`: split, accents folded, Porter-stemmed), space-separated; Milvus's
#: ``standard`` analyser (the one every server has, milvus-lite included) then only splits
#: them on the spaces (for Latin words; a run of CJK characters it splits further, on both
#: sides alike), so both engines match the same word forms.
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}
_PAGE_FIELDS = [
    "id",
    "document_id",
    "number",
    "text",
    "terms",
    "image",
    "image_sha256",
    "width",
    "height",
    "embedded",
]
_TEXT = ("text", "terms")
_DOC_FIELDS = [
    "id",
    "name",
    "path",
    "sha256",
    "kind",
    "page_count",
    "title",
    "bytes",
    "status",
    "added_at",
]
_DUMMY = [0.0, 0.0]  # Milvus wants a vector field in every collection; meta/documents use this


@dataclass(frozen=True)
class MilvusAddress:
    """A parsed ``milvus://HOST:PORT/NAME[?images=LOCATION]`` (``milvuss://``: TLS)."""

    host: str
    port: int
    name: str
    secure: bool = False
    images: str | None = None

    @property
    def uri(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.host}:{self.port}"

    @property
    def spec(self) -> str:
        return f"{'milvuss' if self.secure else 'milvus'}://{self.host}:{self.port}/{self.name}"

    @classmethod
    def parse(cls, spec: str) -> MilvusAddress:
        parts = urlsplit(spec)
        shown = redact_address(spec)  # errors never echo credentials
        scheme = parts.scheme.lower()
        if scheme not in ("milvus", "milvuss"):
            raise CollectionError(f"'{shown}' is not a Milvus address (milvus://HOST:PORT/NAME).")
        if "@" in parts.netloc:
            raise CollectionError(
                f"Milvus address '{shown}' carries credentials: put the token in {TOKEN_ENV} "
                "instead (an address is shown in logs, output and shell history)."
            )
        name = parts.path.strip("/")
        try:
            port = parts.port or DEFAULT_PORT
        except ValueError as exc:
            raise CollectionError(f"Bad port in Milvus address '{shown}'.") from exc
        if not parts.hostname:
            raise CollectionError(
                f"Milvus address '{shown}' names no host (milvus://HOST:PORT/NAME)."
            )
        if len(name) > NAME_MAX:  # its own message: "only letters, digits" would mislead
            raise CollectionError(
                f"Milvus collection name in '{shown[:80]}...' is {len(name)} characters long; "
                f"at most {NAME_MAX} (Milvus's limit, less PageLens's suffixes)."
            )
        if not _NAME.fullmatch(name):
            raise CollectionError(
                f"Milvus collection name '{name}' in '{shown}' must start with a letter or '_' "
                "and hold only letters, digits and '_' (Milvus's rule)."
            )
        images = parse_qs(parts.query).get("images", [None])[0]
        if images:
            refuse_credentials(images)
        return cls(parts.hostname, port, name, scheme == "milvuss", images)


def redact_address(spec: str) -> str:
    """A collection address fit to show: any ``user:secret@`` part replaced by ``***@``
    (the address's own, and that of an ``?images=`` location in it)."""
    return redact_userinfo(spec)


def document_id_for(sha256: str) -> int:
    """A document's id: the first 60 bits of its content hash (positive INT64)."""
    if not re.fullmatch(r"[0-9a-f]{15,}", sha256):  # not a hex digest (hand-made catalogs)
        sha256 = hashlib.sha256(sha256.encode()).hexdigest()
    return int(sha256[:15], 16)


def _is_temp_file(key: str) -> bool:
    """Whether an image-store key is an atomic write's temporary file (``.NAME.<rand>.tmp``,
    see :func:`indexer.stores.base.atomic_write_bytes`)."""
    name = key.rsplit("/", 1)[-1]
    return name.startswith(".") and name.endswith(".tmp")


def page_id_for(document_id: int, number: int) -> int:
    """A page's id, from its document's id (so from the file's SHA-256) and its number."""
    return int(hashlib.sha256(f"{document_id}:{number}".encode()).hexdigest()[:15], 16)


def _quote(text: str) -> str:
    """A string literal for a Milvus boolean expression."""
    return json.dumps(str(text), ensure_ascii=False)


def text_terms(text: str) -> str:
    """The words BM25 indexes and queries, made by the local engine's own FTS5 tokenizer
    (:data:`indexer.stores.types.FTS_TOKENIZE`: lower case, accents folded, split on non-word
    characters, Porter-stemmed), so both engines match the same word forms: ``churned``
    finds ``churn``, ``b.pdf`` is ``b pdf``. The words are read back from an in-memory FTS5
    table through its ``fts5vocab`` view, in text order."""
    if not text or not text.strip():
        return ""
    con = getattr(_TOKENIZER, "con", None)
    if con is None:
        from indexer.stores.types import FTS_TOKENIZE

        con = sqlite3.connect(":memory:", check_same_thread=False)
        con.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{FTS_TOKENIZE}')")
        con.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        _TOKENIZER.con = con
    with con:
        con.execute("INSERT INTO t(rowid, x) VALUES (1, ?)", (text.replace("\x00", " "),))
        terms = [row[0] for row in con.execute("SELECT term FROM v ORDER BY offset")]
        con.execute("DELETE FROM t")
    return " ".join(terms)


_TOKENIZER = threading.local()  # one in-memory FTS5 table per thread (text_terms)


def _cut(text: str, limit: int = TEXT_MAX_BYTES) -> str:
    data = (text or "").encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


class MilvusCollection(ModelBinding):
    """A PageLens collection stored in Milvus (see the module docs for the layout)."""

    read_only = False

    @classmethod
    def from_spec(
        cls,
        spec: str,
        *,
        create: bool = True,
        model_id: str | None = None,
        dim: int | None = None,
    ) -> MilvusCollection:
        return cls(MilvusAddress.parse(spec), create=create, model_id=model_id, dim=dim)

    def __init__(
        self,
        address: MilvusAddress,
        *,
        create: bool = True,
        model_id: str | None = None,
        dim: int | None = None,
        timeout: float | None = None,
    ) -> None:
        self.address = address
        self.timeout = float(timeout or os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)
        self._mutex = threading.RLock()
        self._meta_cache: dict[str, str] = {}
        self._pages_ready = False
        self.client = self._connect()
        try:
            self._open(create=create, model_id=model_id, dim=dim)
        except BaseException:
            # A failure after connecting (server gone, no such collection, a bad image
            # store) must not leave the dedicated channel open: a long-lived process (the
            # app, `pagelens serve`) tries again on every request.
            self.close()
            raise

    def _open(self, *, create: bool, model_id: str | None, dim: int | None) -> None:
        """Find (or create) the three Milvus collections and the image store."""
        address = self.address
        name = address.name
        self.pages_name, self.docs_name, self.meta_name = (
            f"{name}_pages",
            f"{name}_documents",
            f"{name}_meta",
        )
        has = self.client.has_collection
        exists = self._call("listing collections", has, self.meta_name)
        if not exists and not create:
            raise CollectionNotFoundError(f"No collection {address.spec}.")
        # Documents first, meta last: a meta collection means the rest exists (another
        # process may be creating it this very moment; creation tolerates that race).
        if not self._call("listing collections", has, self.docs_name):
            self._create_documents()
        if not exists:
            self._create_meta()
            if self.meta("created_at") is None:
                self._set_meta({"created_at": utcnow(), "engine": "milvus"})
        for coll in (self.meta_name, self.docs_name):
            self._call("loading", self.client.load_collection, coll)
        from indexer.config import home

        self.work_dir = home() / "milvus" / f"{address.host}_{address.port}" / name
        self.images = self._open_images()
        if model_id is not None:
            self.bind_model(model_id, dim)

    # -- connection ----------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as exc:
            raise CollectionError(
                "Milvus collections need pymilvus: pip install 'pagelens[milvus]'."
            ) from exc
        token = os.environ.get(TOKEN_ENV, "")
        tls: dict[str, str] = {}
        ca = os.environ.get(CA_ENV, "").strip()
        if ca and self.address.secure:
            ca_path = Path(ca).expanduser()
            if not ca_path.is_file():
                raise CollectionError(
                    f"{CA_ENV} names {ca_path}, which is not a file: it should be the PEM file "
                    "of the certificate authority that signed the Milvus server's certificate."
                )
            tls["server_pem_path"] = str(ca_path)  # pymilvus: the roots to trust
        if not os.environ.get("PAGELENS_MILVUS_LOG"):
            # pymilvus logs every failed RPC with a traceback on stderr; PageLens says each
            # failure once, in one line (CollectionError). PAGELENS_MILVUS_LOG=1 keeps them.
            logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
        try:
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
            with contextlib.suppress(Exception):  # the retried call says what failed
                self.client.load_collection(name, timeout=self.timeout)

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

    # -- schema --------------------------------------------------------------------------
    def _create_meta(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, max_length=256, is_primary=True)
        schema.add_field("value", DataType.VARCHAR, max_length=65535)
        self._create_small_collection(self.meta_name, schema)

    def _create_collection(self, name: str, schema: Any, index: list[tuple[str, dict]]) -> None:
        params = self.client.prepare_index_params()
        for field_name, spec in index:
            params.add_index(field_name, **spec)
        try:
            self._call(
                f"creating {name}",
                self.client.create_collection,
                name,
                schema=schema,
                consistency_level="Strong",
            )
        except CollectionError:
            if not self._call("listing collections", self.client.has_collection, name):
                raise  # else: another process created it at the same moment
            return
        # The indexes of a new, empty collection are ready at once: not waiting for them
        # (pymilvus polls every 0.5 s per index) makes a new collection ~2 s quicker.
        self._call(f"indexing {name}", self.client.create_index, name, params, sync=False)
        self._call("loading", self.client.load_collection, name)

    def _create_small_collection(
        self, name: str, schema: Any
    ) -> None:  # meta and documents: a dummy 2-d vector field, exact index
        from pymilvus import DataType

        schema.add_field("_v", DataType.FLOAT_VECTOR, dim=2)
        self._create_collection(name, schema, [("_v", {"index_type": "FLAT", "metric_type": "L2"})])

    def _create_documents(self) -> None:
        from pymilvus import DataType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        for field_name, length in (
            ("name", 2048),
            ("path", 8192),
            ("sha256", 64),
            ("kind", 32),
            ("title", 4096),
            ("status", 16),
            ("added_at", 40),
        ):
            schema.add_field(field_name, DataType.VARCHAR, max_length=length)
        schema.add_field("page_count", DataType.INT64)
        schema.add_field("bytes", DataType.INT64)
        self._create_small_collection(self.docs_name, schema)

    def _ensure_pages(self, *, create: bool = True) -> bool:
        """Make sure the pages collection exists (it needs the model's dim); False if absent."""
        if self._pages_ready:
            return True
        with self._mutex:
            if self._call("listing collections", self.client.has_collection, self.pages_name):
                self._call("loading", self.client.load_collection, self.pages_name)
                self._pages_ready = True
                return True
            if not create:
                return False
            dim = self.dim
            if not dim:
                raise CollectionError(
                    f"Collection {self.location} has no model yet: a Milvus collection stores "
                    "pages with their vectors, so index once with the model (not --text-only) "
                    "before anything else."
                )
            self._create_pages(dim)
            self._pages_ready = True
            return True

    def _create_pages(self, dim: int) -> None:
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("document_id", DataType.INT64)
        schema.add_field("number", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=65535)
        schema.add_field(
            "terms",
            DataType.VARCHAR,
            max_length=65535,
            enable_analyzer=True,
            analyzer_params=ANALYZER,
        )
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
        schema.add_field("image", DataType.VARCHAR, max_length=512)
        schema.add_field("image_sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("width", DataType.INT64)
        schema.add_field("height", DataType.INT64)
        schema.add_field("embedded", DataType.BOOL)
        schema.add_field("embedded_at", DataType.VARCHAR, max_length=40)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=int(dim))
        schema.add_function(
            Function(
                name="terms_bm25",
                function_type=FunctionType.BM25,
                input_field_names=["terms"],
                output_field_names=["sparse"],
            )
        )
        self._create_collection(
            self.pages_name,
            schema,
            [
                ("vector", dict(DENSE_INDEX)),
                ("sparse", {"index_type": "SPARSE_INVERTED_INDEX", "metric_type": "BM25"}),
            ],
        )

    def _open_images(self) -> ImageStore:
        explicit = self.address.images or os.environ.get(IMAGES_ENV)
        recorded = self.meta("image_store")
        location = explicit or recorded or str(self.work_dir / "images")
        images = open_images(location, self.work_dir, timeout=self.timeout)
        if recorded is None:  # only a location that opens: every later process reads it
            self._set_meta({"image_store": location})
        return images

    # -- meta ----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        if key in self._meta_cache:
            return self._meta_cache[key]
        rows = self._call(
            "reading meta", self.client.query, self.meta_name, ids=[key], output_fields=["value"]
        )
        value = rows[0]["value"] if rows else None
        if value is not None and key in ("model_id", "dim", "image_store", "created_at"):
            self._meta_cache[key] = value  # written once, never changed
        return value

    def all_meta(self) -> dict[str, str]:
        rows = self._call(
            "reading meta",
            self.client.query,
            self.meta_name,
            filter='key != ""',
            output_fields=["key", "value"],
        )
        return {r["key"]: r["value"] for r in rows}

    def _set_meta(self, values: dict[str, str]) -> None:
        rows = [{"key": k, "value": str(v), "_v": _DUMMY} for k, v in values.items()]
        self._call("writing meta", self.client.upsert, self.meta_name, rows)
        for k in values:
            self._meta_cache.pop(k, None)

    def bind_model(self, model_id: str, dim: int | None, **identity: Any) -> None:
        super().bind_model(model_id, dim, **identity)
        if dim:
            self._ensure_pages()

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(
        self, *, timeout: float = -1, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[MilvusCollection]:
        """Nothing to hold: deterministic ids make concurrent writers harmless (module docs)."""
        yield self

    def flush(self) -> None:
        """Seal what was written into indexed segments (Milvus's ``flush``). Not needed for
        visibility (every write is committed, and read with Strong consistency, when the
        call returns); bulk loaders call it once at the end so searches use the index."""
        if self._ensure_pages(create=False):
            self._call("flushing", self.client.flush, self.pages_name)

    # -- documents -----------------------------------------------------------------------
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
            with contextlib.suppress(Exception):
                it.close()

    def _query(self, name: str, what: str, **kwargs: Any) -> list[dict]:
        return list(self._call(what, self.client.query, name, **kwargs))

    def _counts(self, doc_ids: Iterable[int] | None = None) -> dict[int, tuple[int, int]]:
        """Stored and embedded page counts per document."""
        if not self._ensure_pages(create=False):
            return {}
        wanted = None if doc_ids is None else sorted({int(d) for d in doc_ids})
        out: dict[int, list[int]] = {}
        if wanted is not None and len(wanted) <= 16:
            for d in wanted:
                total = self._count(f"document_id == {d}")
                done = self._count(f"document_id == {d} and embedded == true") if total else 0
                out[d] = [total, done]
            return {k: (v[0], v[1]) for k, v in out.items()}
        expr = "id >= 0" if wanted is None else f"document_id in {wanted}"
        for row in self._iter(self.pages_name, expr, ["document_id", "embedded"]):
            c = out.setdefault(int(row["document_id"]), [0, 0])
            c[0] += 1
            c[1] += bool(row["embedded"])
        return {k: (v[0], v[1]) for k, v in out.items()}

    def _count(self, expr: str, name: str | None = None) -> int:
        rows = self._query(
            name or self.pages_name, "counting", filter=expr, output_fields=["count(*)"]
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def _document(self, row: dict, counts: dict[int, tuple[int, int]]) -> Document:
        stored, embedded = counts.get(int(row["id"]), (0, 0))
        return Document(
            id=int(row["id"]),
            name=row["name"],
            path=row["path"],
            sha256=row["sha256"],
            kind=row["kind"],
            page_count=int(row["page_count"]),
            title=row["title"] or None,
            bytes=int(row["bytes"]),
            status=row["status"],
            added_at=_FRACTION.sub("", row["added_at"]),  # shown to the second, as local
            pages_stored=stored,
            pages_embedded=embedded,
        )

    def documents(self) -> list[Document]:
        """In the order they were added (``added_at`` to the microsecond), as local lists
        them (by its increasing ids)."""
        rows = list(self._iter(self.docs_name, "id >= 0", _DOC_FIELDS))
        counts = self._counts(None) if rows else {}
        rows.sort(key=lambda r: (r["added_at"], r["id"]))
        return [self._document(r, counts) for r in rows]

    def document(self, ref: str | int) -> Document:
        text = str(ref)
        if text.isdigit():
            found = self.documents_by_id([int(text)])
            if found:
                return found[int(text)]
        rows = self._query(
            self.docs_name,
            "finding a document",
            filter=f"name == {_quote(text)} or path == {_quote(text)}",
            output_fields=_DOC_FIELDS,
        )
        if not rows:
            folded = text.casefold()
            rows = [
                r
                for r in self._iter(self.docs_name, "id >= 0", _DOC_FIELDS)
                if r["name"].casefold() == folded
            ]
        if len(rows) == 1:
            return self._document(rows[0], self._counts([rows[0]["id"]]))
        if len(rows) > 1:
            ids = ", ".join(str(r["id"]) for r in sorted(rows, key=lambda r: r["id"]))
            raise DocumentNotFoundError(
                f"More than one document is named '{text}' (ids {ids}); name it by id."
            )
        raise DocumentNotFoundError(f"No document '{text}' in collection {self.location}.")

    def find_by_sha256(self, sha256: str) -> Document | None:
        doc = self.documents_by_id([document_id_for(sha256)]).get(document_id_for(sha256))
        return doc if doc is not None and doc.sha256 == sha256 else None

    def documents_by_id(self, ids: Iterable[int]) -> dict[int, Document]:
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        rows = self._query(
            self.docs_name, "reading documents", ids=wanted, output_fields=_DOC_FIELDS
        )
        counts = self._counts([r["id"] for r in rows]) if rows else {}
        return {int(r["id"]): self._document(r, counts) for r in rows}

    def add_document(
        self,
        *,
        name: str,
        path: str,
        sha256: str,
        kind: str,
        page_count: int,
        title: str | None = None,
        size: int = 0,
    ) -> Document:
        doc_id = document_id_for(sha256)
        existing = self.documents_by_id([doc_id]).get(doc_id)
        if existing is not None:  # another process added the same file a moment ago
            return existing
        row = {
            "id": doc_id,
            "name": name[:2000],
            "path": path[:8000],
            "sha256": sha256,
            "kind": kind,
            "page_count": int(page_count),
            "title": (title or "")[:4000],
            "bytes": int(size),
            "status": "indexing",
            # to the microsecond: documents() lists them in the order they were added
            "added_at": datetime.now(timezone.utc).isoformat(),
            "_v": _DUMMY,
        }
        self._call("adding a document", self.client.upsert, self.docs_name, [row])
        return self.document(doc_id)

    def _set_status(self, document_id: int, status: str) -> None:
        rows = self._query(
            self.docs_name, "reading documents", ids=[int(document_id)], output_fields=_DOC_FIELDS
        )
        if not rows:
            return
        row = dict(rows[0], status=status, _v=_DUMMY)
        self._call("updating a document", self.client.upsert, self.docs_name, [row])

    def mark_ready(self, document_id: int) -> None:
        self._set_status(document_id, "ready")

    def mark_incomplete(self, document_id: int) -> None:
        self._set_status(document_id, "indexing")

    # Placeholders of pages that failed to render live in meta as ``failed:<doc>:<page>``.
    def add_failed_page(self, document_id: int, number: int, reason: str) -> None:
        value = json.dumps({"reason": reason, "failed_at": utcnow()})
        self._set_meta({f"failed:{int(document_id)}:{int(number)}": value})

    def clear_failed_page(self, document_id: int, number: int) -> None:
        self._call(
            "writing meta",
            self.client.delete,
            self.meta_name,
            ids=[f"failed:{int(document_id)}:{int(number)}"],
        )

    def failed_pages(self, document_id: int | None = None) -> list[dict]:
        prefix = "failed:" if document_id is None else f"failed:{int(document_id)}:"
        rows = self._query(
            self.meta_name,
            "reading meta",
            filter=f"key like {_quote(prefix + '%')}",
            output_fields=["key", "value"],
        )
        out = []
        docs = self.documents_by_id({int(r["key"].split(":")[1]) for r in rows}) if rows else {}
        for r in rows:
            _, doc_id, number = r["key"].split(":")
            doc = docs.get(int(doc_id))
            if doc is None:
                continue
            info = json.loads(r["value"])
            out.append(
                {
                    "document_id": doc.id,
                    "document": doc.name,
                    "page": int(number),
                    "reason": info["reason"],
                    "failed_at": info["failed_at"],
                }
            )
        return sorted(out, key=lambda f: (f["document_id"], f["page"]))

    def remove_document(self, ref: str | int) -> Document:
        """Pages first (they stop being searchable), then the document row, then images."""
        doc = self.document(ref)
        if self._ensure_pages(create=False):
            self._call(
                "removing pages",
                self.client.delete,
                self.pages_name,
                filter=f"document_id == {doc.id}",
            )
        self._call("removing a document", self.client.delete, self.docs_name, ids=[doc.id])
        self.images.delete_prefix(f"pages/{doc.id}")
        return doc

    # -- pages ---------------------------------------------------------------------------
    def add_pages(self, document_id: int, pages: Sequence[PageInput]) -> list[int]:
        """Images first, then one upsert of the rows (pending: no vector yet).

        A page already stored with the same image keeps its vector, so a second indexer
        racing on the same file does not undo the first one's embedding.
        """
        self._ensure_pages()
        dim = self.dim or 1
        ids = [page_id_for(document_id, int(number)) for number, _, _ in pages]
        before = (
            {
                int(r["id"]): r
                for r in self._query(
                    self.pages_name,
                    "reading pages",
                    ids=ids,
                    output_fields=["id", "image_sha256", "embedded", "embedded_at", "vector"],
                )
            }
            if ids
            else {}
        )
        rows = []
        for pid, (number, text, image) in zip(ids, pages, strict=True):
            encoded = image if isinstance(image, EncodedImage) else EncodedImage.of(image)
            key = f"pages/{document_id}/{int(number):05d}.png"
            self.images.put(key, encoded.data)
            sha = hashlib.sha256(encoded.data).hexdigest()
            old = before.get(pid)
            keep = old is not None and old["embedded"] and old["image_sha256"] == sha
            rows.append(
                {
                    "id": pid,
                    "document_id": int(document_id),
                    "number": int(number),
                    "text": _cut(text),
                    "terms": _cut(text_terms(text)),
                    "image": key,
                    "image_sha256": sha,
                    "width": int(encoded.width),
                    "height": int(encoded.height),
                    "embedded": bool(keep),
                    "embedded_at": old["embedded_at"] if keep and old else "",
                    "vector": list(old["vector"]) if keep and old else [0.0] * dim,
                }
            )
        if rows:
            self._upsert("storing pages", self.pages_name, rows)
        return ids

    def stored_page_numbers(self, document_id: int) -> set[int]:
        if not self._ensure_pages(create=False):
            return set()
        return {
            int(r["number"])
            for r in self._iter(self.pages_name, f"document_id == {int(document_id)}", ["number"])
        }

    def _page(self, row: dict) -> Page:
        return Page(
            id=int(row["id"]),
            document_id=int(row["document_id"]),
            number=int(row["number"]),
            text=row.get("text", ""),
            image=row["image"],
            image_sha256=row["image_sha256"],
            width=int(row["width"]),
            height=int(row["height"]),
            embedded=bool(row["embedded"]),
        )

    def pages(self, document_id: int | None = None, *, with_text: bool = True) -> list[Page]:
        if not self._ensure_pages(create=False):
            return []
        expr = "id >= 0" if document_id is None else f"document_id == {int(document_id)}"
        fields = _PAGE_FIELDS if with_text else [f for f in _PAGE_FIELDS if f not in _TEXT]
        pages = [self._page(r) for r in self._iter(self.pages_name, expr, fields)]
        return sorted(pages, key=lambda p: (p.document_id, p.number))

    def page(self, page_id: int) -> Page:
        page = self.pages_by_id([page_id]).get(int(page_id))
        if page is None:
            raise DocumentNotFoundError(f"No page {page_id} in collection {self.location}.")
        return page

    def pages_by_id(self, page_ids: Iterable[int]) -> dict[int, Page]:
        ids = sorted({int(i) for i in page_ids})
        if not ids or not self._ensure_pages(create=False):
            return {}
        out: dict[int, Page] = {}
        for start in range(0, len(ids), 1000):
            for r in self._query(
                self.pages_name,
                "reading pages",
                ids=ids[start : start + 1000],
                output_fields=_PAGE_FIELDS,
            ):
                out[int(r["id"])] = self._page(r)
        return out

    def page_ids(
        self,
        *,
        documents: Iterable[int] | None = None,
        first: int | None = None,
        last: int | None = None,
        embedded: bool | None = None,
    ) -> list[int]:
        if not self._ensure_pages(create=False):
            return []
        where = PageFilter(
            tuple(int(d) for d in documents) if documents is not None else None, first, last
        )
        expr = _expression(where, None, embedded) or "id >= 0"
        return sorted(int(r["id"]) for r in self._iter(self.pages_name, expr, ["id"]))

    def image_path(self, page: Page) -> Path:
        return self.images.local_path(page.image, page.image_sha256)

    def image_bytes(self, page: Page) -> bytes:
        return self.images.get(page.image)

    def load_image(self, page: Page) -> Image.Image:
        with Image.open(io.BytesIO(self.image_bytes(page))) as im:
            return im.convert("RGB")

    @property
    def image_location(self) -> str:
        return self.images.url

    def image_sizes(self) -> dict[str, int]:
        """Every page image in the image store, ``{key: size}`` (``pagelens check``)."""
        return self.images.sizes("pages")

    def delete_images(self, keys: list[str]) -> int:
        """Delete images no page row names (``pagelens check --repair``); returns how many.

        Only those written more than ``PAGELENS_MILVUS_ORPHAN_GRACE`` seconds ago (3600):
        nothing locks a Milvus collection, and another machine's indexer writes each image
        a moment before the row that names it, so a young image without a row is most
        likely work in progress, whose deletion would leave a row without its image.
        Temporary files of interrupted atomic writes (a killed indexer or migration) go
        after :data:`TEMP_FILE_GRACE` (300 s): such a file only ever lives for the moment of
        one write, so a re-run's ``check --repair`` comes back clean without waiting an hour."""
        grace = float(os.environ.get(ORPHAN_GRACE_ENV) or DEFAULT_ORPHAN_GRACE)
        old = []
        for key in keys:
            age = self.images.age(key)
            limit = min(grace, TEMP_FILE_GRACE) if _is_temp_file(key) else grace
            if age is not None and age >= limit:
                old.append(key)
        self.images.delete(old)
        return len(old)

    def pending_pages(self, limit: int | None = None) -> list[Page]:
        if not self._ensure_pages(create=False):
            return []
        rows = []
        for row in self._iter(self.pages_name, "embedded == false", _PAGE_FIELDS):
            rows.append(self._page(row))
        rows.sort(key=lambda p: p.id)
        return rows[: int(limit)] if limit else rows

    def vector_for_image_sha(self, image_sha256: str) -> np.ndarray | None:
        if not self._ensure_pages(create=False):
            return None
        rows = self._query(
            self.pages_name,
            "reading vectors",
            filter=f"image_sha256 == {_quote(image_sha256)} and embedded == true",
            output_fields=["vector"],
            limit=1,
        )
        return np.asarray(rows[0]["vector"], np.float32) if rows else None

    def stats(self) -> CollectionStats:
        docs = self._count("id >= 0", self.docs_name)
        if not self._ensure_pages(create=False):
            return CollectionStats(documents=docs, pages=0, embedded=0)
        return CollectionStats(
            documents=docs,
            pages=self._count("id >= 0"),
            embedded=self._count("embedded == true"),
        )

    # -- vectors -------------------------------------------------------------------------
    def _rewrite(self, page_ids: Sequence[int], make: Callable[[dict, int], dict]) -> None:
        ids = [int(i) for i in page_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            rows = self._query(
                self.pages_name,
                "reading pages",
                ids=chunk,
                output_fields=[*_PAGE_FIELDS, "embedded_at"],
            )
            order = {pid: i for i, pid in enumerate(ids)}
            new = [make(dict(r), order[int(r["id"])]) for r in rows]
            if new:
                self._upsert("storing vectors", self.pages_name, new)

    def set_vectors(self, page_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Each page's vector and ``embedded = true`` in one row upsert (atomic per page)."""
        self._ensure_pages()
        vecs = vectors_to_store(vectors, self.dim)
        now = utcnow()

        def make(row: dict, i: int) -> dict:
            row.update(embedded=True, embedded_at=now, vector=vecs[i].tolist())
            return row

        self._rewrite(page_ids, make)

    def clear_vectors(self, page_ids: Sequence[int]) -> None:
        if not self._ensure_pages(create=False):
            return
        zeros = [0.0] * (self.dim or 1)

        def make(row: dict, i: int) -> dict:
            row.update(embedded=False, embedded_at="", vector=zeros)
            return row

        self._rewrite(page_ids, make)

    def remove_pages(self, page_ids: Sequence[int]) -> None:
        ids = [int(i) for i in page_ids]
        if not ids or not self._ensure_pages(create=False):
            return
        pages = self.pages_by_id(ids)
        self._call("removing pages", self.client.delete, self.pages_name, ids=ids)
        self.images.delete([p.image for p in pages.values()])

    def rebuild_index(self) -> int:
        """Milvus maintains its own index; returns the number of embedded pages."""
        return self.stats().embedded

    def vector(self, page_id: int) -> np.ndarray | None:
        return self.vectors([page_id]).get(int(page_id))

    def vectors(self, page_ids: Sequence[int]) -> dict[int, np.ndarray]:
        ids = [int(i) for i in page_ids]
        if not ids or not self._ensure_pages(create=False):
            return {}
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), 1000):
            for r in self._query(
                self.pages_name,
                "reading vectors",
                ids=ids[start : start + 1000],
                output_fields=["id", "vector", "embedded"],
            ):
                if r["embedded"]:
                    out[int(r["id"])] = np.asarray(r["vector"], np.float32)
        return out

    # -- search --------------------------------------------------------------------------
    def _dense_params(self, k: int) -> dict:
        return {"metric_type": "IP", "params": {"ef": max(64, int(k))}}

    def search(
        self,
        query: np.ndarray,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """HNSW (IP = cosine on unit vectors) with the filter inside the search."""
        if not self._ensure_pages(create=False):
            return []
        expr = _expression(where, page_ids, True)
        res = self._call(
            "searching",
            self.client.search,
            self.pages_name,
            data=[np.asarray(query, np.float32).tolist()],
            anns_field="vector",
            limit=int(k),
            filter=expr,
            search_params=self._dense_params(k),
            output_fields=["id"],
        )
        return _ranked(res)

    def search_text(
        self,
        query: str,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """Milvus's BM25 function over the text layer, with the filter inside the search."""
        words = query_words(query)
        if not words or not self._ensure_pages(create=False):
            return []
        res = self._call(
            "searching text",
            self.client.search,
            self.pages_name,
            data=[text_terms(" ".join(words))],
            anns_field="sparse",
            limit=int(k),
            filter=_expression(where, page_ids, None),
            search_params={"metric_type": "BM25"},
            output_fields=["id"],
        )
        return _ranked(res, bm25=True)

    def search_hybrid(
        self,
        query: np.ndarray | None,
        text: str,
        k: int,
        *,
        depth: int,
        where: PageFilter | None = None,
    ) -> tuple[list[tuple[int, float]], dict[int, dict[str, float]]]:
        """``hybrid_search`` of the dense and BM25 requests, fused by ``RRFRanker(RRF_K)``.

        Per-ranking scores: the visual cosine of each returned page that has a vector (the
        local engine: of those within the visual ranking's ``depth``) and its BM25 score
        when it is in the text ranking to ``depth``, as the local engine reports.
        """
        if not self._ensure_pages(create=False):
            return [], {}
        words = query_words(text)
        if query is None or not words:  # one ranking only: RRF of it, as the local engine
            vis = self.search(query, depth, where=where) if query is not None else []
            txt = self.search_text(text, depth, where=where) if words else []
            return reciprocal_rank_fusion({"visual": vis, "text": txt}, k)
        from pymilvus import AnnSearchRequest, RRFRanker

        q = np.asarray(query, np.float32)
        dense = AnnSearchRequest(
            data=[q.tolist()],
            anns_field="vector",
            param=self._dense_params(depth),
            limit=int(depth),
            expr=_expression(where, None, True),
        )
        sparse = AnnSearchRequest(
            data=[text_terms(" ".join(words))],
            anns_field="sparse",
            param={"metric_type": "BM25"},
            limit=int(depth),
            expr=_expression(where, None, None),
        )
        res = self._call(
            "searching (hybrid)",
            self.client.hybrid_search,
            self.pages_name,
            [dense, sparse],
            RRFRanker(RRF_K),
            limit=int(k),
            output_fields=["id"],
        )
        ranked = _ranked(res)
        ids = [pid for pid, _ in ranked]
        vectors = self.vectors(ids)
        parts: dict[int, dict[str, float]] = {
            pid: {"visual": float(vectors[pid] @ q)} for pid in ids if pid in vectors
        }
        # The fused result carries only RRF scores: each page's BM25 score comes from the
        # text ranking to ``depth`` (the one fused; a page outside it has none, as local).
        # (A search limited to the returned ids would score with other statistics.)
        if ids:
            wanted = set(ids)
            for pid, score in self.search_text(text, depth, where=where):
                if pid in wanted:
                    parts.setdefault(pid, {})["text"] = score
        return ranked, parts

    # -- housekeeping --------------------------------------------------------------------
    def server_collections(self) -> list[str]:
        """The addresses of every PageLens collection on this collection's server (a
        ``NAME_meta`` collection marks one), this one included: what a picker offers."""
        names = set(self._call("listing collections", self.client.list_collections))
        a = self.address
        return sorted(
            MilvusAddress(a.host, a.port, n[: -len("_meta")], a.secure).spec
            for n in names
            if n.endswith("_meta") and f"{n[: -len('_meta')]}_documents" in names
        )

    def drop(self) -> None:
        """Delete the collection from Milvus (its three Milvus collections) and its images."""
        for name in (self.pages_name, self.docs_name, self.meta_name):
            if self._call("listing collections", self.client.has_collection, name):
                self._call("dropping", self.client.drop_collection, name)
        self.images.delete_prefix("pages")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()

    def __enter__(self) -> MilvusCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _expression(
    where: PageFilter | None, page_ids: Iterable[int] | None, embedded: bool | None
) -> str:
    """A filter as a Milvus boolean expression (applied inside the search)."""
    parts = []
    if embedded is True:
        parts.append("embedded == true")
    elif embedded is False:
        parts.append("embedded == false")
    if where is not None:
        if where.documents is not None:
            parts.append(f"document_id in {[int(d) for d in where.documents]}")
        if where.first is not None:
            parts.append(f"number >= {int(where.first)}")
        if where.last is not None:
            parts.append(f"number <= {int(where.last)}")
    if page_ids is not None:
        parts.append(f"id in {[int(i) for i in page_ids]}")
    return " and ".join(parts)


def _ranked(res: Any, *, bm25: bool = False) -> list[tuple[int, float]]:
    """Hits as ``[(page_id, score)]``, best first, ties by id (as the local RRF breaks them).

    BM25 scores are reported positive (Milvus gives the score; milvus-lite its negation as
    a distance, in the same order), so both servers give the local engine's sign."""
    hits = [(int(h["id"]), float(h["distance"])) for h in (res[0] if res else [])]
    if bm25 and hits and all(score <= 0 for _, score in hits):
        hits = [(pid, -score) for pid, score in hits]
    return sorted(hits, key=lambda item: (-item[1], item[0]))


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
    token = os.environ.get(TOKEN_ENV, "")
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
