"""The Milvus collections' layout: field lists, ids, the words BM25 indexes, and the DDL
(creating ``NAME_meta``, ``NAME_documents`` and ``NAME_pages`` with their indexes), with the
``NAME_meta`` rows that hold a collection's identity (see :mod:`indexer.stores.milvus`)."""

from __future__ import annotations

import hashlib
import re
import threading
from typing import Any

from indexer.errors import CollectionError
from indexer.stores.base import ModelBinding
from indexer.stores.milvus.client import MilvusConnection
from indexer.stores.text_terms import text_terms  # noqa: F401 (the BM25 terms; re-exported)

#: Dense ANN index of page vectors and its parameters (see the package docs).
DENSE_INDEX = {
    "index_type": "HNSW",
    "metric_type": "IP",
    "params": {"M": 16, "efConstruction": 200},
}
TEXT_MAX_BYTES = 60_000  # VARCHAR limit is 65,535 bytes; longer text layers are cut here
#: The BM25 field holds the page's words as the local engine's FTS5 tokenizer makes them
#: (:func:`text_terms`: split, accents folded, Porter-stemmed), space-separated; Milvus's
#: ``standard`` analyser (the one every server has, milvus-lite included) then only splits
#: them on the spaces (for Latin words; a run of CJK characters it splits further, on both
#: sides alike), so both engines match the same word forms.
ANALYZER = {"tokenizer": "standard", "filter": ["lowercase"]}
PAGE_FIELDS = [
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
TEXT_FIELDS = ("text", "terms")
DOC_FIELDS = [
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
#: Milvus wants a vector field in every collection; meta and documents rows carry this one.
DUMMY_VECTOR = [0.0, 0.0]


def document_id_for(sha256: str) -> int:
    """A document's id: the first 60 bits of its content hash (positive INT64)."""
    if not re.fullmatch(r"[0-9a-f]{15,}", sha256):  # not a hex digest (hand-made catalogs)
        sha256 = hashlib.sha256(sha256.encode()).hexdigest()
    return int(sha256[:15], 16)


def page_id_for(document_id: int, number: int) -> int:
    """A page's id, from its document's id (so from the file's SHA-256) and its number."""
    return int(hashlib.sha256(f"{document_id}:{number}".encode()).hexdigest()[:15], 16)


def cut_text(text: str, limit: int = TEXT_MAX_BYTES) -> str:
    data = (text or "").encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


class MilvusSchema(MilvusConnection, ModelBinding):
    """The three Milvus collections of a PageLens collection, and its meta rows."""

    _meta_cache: dict[str, str]
    _mutex: threading.RLock

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
        rows = [{"key": k, "value": str(v), "_v": DUMMY_VECTOR} for k, v in values.items()]
        self._call("writing meta", self.client.upsert, self.meta_name, rows)
        for k in values:
            self._meta_cache.pop(k, None)

    def bind_model(self, model_id: str, dim: int | None, **identity: Any) -> None:
        super().bind_model(model_id, dim, **identity)
        if dim:
            self._ensure_pages()
