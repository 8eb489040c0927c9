"""The Milvus engine: :class:`MilvusCollection`, a PageLens collection stored in Milvus
(the layout, ids and guarantees are in :mod:`indexer.stores.milvus`). Its pages, vectors,
images and housekeeping are here; the connection, schema, documents and search are the
layers it is built from (``client``, ``schema``, ``documents``, ``query``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from indexer import config
from indexer.config import MILVUS_IMAGES_ENV as IMAGES_ENV
from indexer.config import MILVUS_ORPHAN_GRACE_ENV as ORPHAN_GRACE_ENV
from indexer.config import MILVUS_TIMEOUT_ENV as TIMEOUT_ENV
from indexer.errors import CollectionNotFoundError, DocumentNotFoundError
from indexer.stores.base import (
    CollectionStats,
    EncodedImage,
    PageFilter,
    PageInput,
    utcnow,
    vectors_to_store,
)
from indexer.stores.milvus.address import MilvusAddress
from indexer.stores.milvus.client import DEFAULT_TIMEOUT, quiet_pymilvus
from indexer.stores.milvus.documents import MilvusDocuments
from indexer.stores.milvus.images import (
    TEMP_FILE_GRACE,
    ImageStore,
    is_temp_file,
    open_images,
)
from indexer.stores.milvus.query import MilvusSearch, expression, quote
from indexer.stores.milvus.schema import (
    PAGE_FIELDS,
    TEXT_FIELDS,
    cut_text,
    page_id_for,
    text_terms,
)
from indexer.stores.milvus.sources import MilvusSources
from indexer.stores.milvus.words import WORDS_PREFIX, MilvusWords, words_key
from indexer.stores.types import Page, page_input_parts

DEFAULT_ORPHAN_GRACE = 3600.0


class MilvusCollection(MilvusDocuments, MilvusSearch, MilvusSources, MilvusWords):
    """A PageLens collection stored in Milvus (its layout: :mod:`indexer.stores.milvus`)."""

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
        self.timeout = float(timeout or config.get_float(TIMEOUT_ENV, DEFAULT_TIMEOUT))
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

    def _open_images(self) -> ImageStore:
        explicit = self.address.images or config.get(IMAGES_ENV)
        recorded = self.meta("image_store")
        location = explicit or recorded or str(self.work_dir / "images")
        images = open_images(location, self.work_dir, timeout=self.timeout)
        if recorded is None:  # only a location that opens: every later process reads it
            self._set_meta({"image_store": location})
        return images

    # -- writing -------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(
        self, *, timeout: float = -1, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[MilvusCollection]:
        """Nothing to hold: deterministic ids make concurrent writers harmless (package docs)."""
        yield self

    def flush(self) -> None:
        """Seal what was written into indexed segments (Milvus's ``flush``). Not needed for
        visibility (every write is committed, and read with Strong consistency, when the
        call returns); bulk loaders call it once at the end so searches use the index."""
        if self._ensure_pages(create=False):
            self._call("flushing", self.client.flush, self.pages_name)

    # -- pages ---------------------------------------------------------------------------
    def add_pages(self, document_id: int, pages: Sequence[PageInput]) -> list[int]:
        """Images first, then one upsert of the rows (pending: no vector yet).

        A page already stored with the same image keeps its vector, so a second indexer
        racing on the same file does not undo the first one's embedding.
        """
        self._ensure_pages()
        dim = self.dim or 1
        items = [page_input_parts(p) for p in pages]
        ids = [page_id_for(document_id, item[0]) for item in items]
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
        for pid, (number, text, image, words) in zip(ids, items, strict=True):
            encoded = image if isinstance(image, EncodedImage) else EncodedImage.of(image)
            key = f"pages/{document_id}/{int(number):05d}.png"
            self.images.put(key, encoded.data)
            self._put_words(document_id, number, words)
            sha = hashlib.sha256(encoded.data).hexdigest()
            old = before.get(pid)
            keep = old is not None and old["embedded"] and old["image_sha256"] == sha
            rows.append(
                {
                    "id": pid,
                    "document_id": int(document_id),
                    "number": int(number),
                    "text": cut_text(text),
                    "terms": cut_text(text_terms(text)),
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
        fields = PAGE_FIELDS if with_text else [f for f in PAGE_FIELDS if f not in TEXT_FIELDS]
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
                output_fields=PAGE_FIELDS,
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
        expr = expression(where, None, embedded) or "id >= 0"
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
        grace = config.get_float(ORPHAN_GRACE_ENV, DEFAULT_ORPHAN_GRACE)
        old = []
        for key in keys:
            age = self.images.age(key)
            limit = min(grace, TEMP_FILE_GRACE) if is_temp_file(key) else grace
            if age is not None and age >= limit:
                old.append(key)
        self.images.delete(old)
        return len(old)

    def pending_pages(self, limit: int | None = None) -> list[Page]:
        if not self._ensure_pages(create=False):
            return []
        rows = []
        for row in self._iter(self.pages_name, "embedded == false", PAGE_FIELDS):
            rows.append(self._page(row))
        rows.sort(key=lambda p: p.id)
        return rows[: int(limit)] if limit else rows

    def vector_for_image_sha(self, image_sha256: str) -> np.ndarray | None:
        if not self._ensure_pages(create=False):
            return None
        rows = self._query(
            self.pages_name,
            "reading vectors",
            filter=f"image_sha256 == {quote(image_sha256)} and embedded == true",
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
                output_fields=[*PAGE_FIELDS, "embedded_at"],
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
        self.images.delete([words_key(p.document_id, p.number) for p in pages.values()])

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
        self.images.delete_prefix(WORDS_PREFIX)

    def close(self) -> None:
        with contextlib.suppress(Exception), quiet_pymilvus():
            self.client.close()

    def __enter__(self) -> MilvusCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
