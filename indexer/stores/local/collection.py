"""The embedded local engine: one folder holding the SQLite catalog, the FAISS index and the
page images. The default, with no dependency beyond PageLens's own.

Nothing else in PageLens touches these files. Layout::

    <collection>/catalog.sqlite      documents, pages (text, image path, vector), meta
    <collection>/vectors.faiss       FAISS IndexIDMap2, ids = page ids (a rebuildable cache)
    <collection>/vectors.state       the catalog version the FAISS file reflects
    <collection>/pages/<doc>/<n>.png page images, for display and export
    <collection>/write.lock          held by the one process allowed to write

Why it survives ``kill -9``: page images are written (temp file + ``os.replace``) before the
rows that name them; rows and vectors are committed in SQLite transactions; the FAISS file
is written atomically and is only a cache of the vectors stored in SQLite, brought back in
step on open (:mod:`indexer.stores.local.faiss_cache`). So a crash at any instant leaves a
collection that opens, searches what was committed, and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

import indexer.stores.local.catalog as catalog
from indexer.errors import (
    CollectionError,
    CollectionNotFoundError,
    DocumentNotFoundError,
)
from indexer.stores.base import ModelBinding, atomic_write_bytes, utcnow
from indexer.stores.local.catalog import (
    DOCUMENT_COLUMNS,
    PAGE_COLUMNS,
    page_filter,
    page_from_row,
)
from indexer.stores.local.check import LocalChecks
from indexer.stores.local.faiss_cache import (
    APPROX_THRESHOLD,
    VECTORS,
    VECTORS_STATE,
    FaissCache,
)
from indexer.stores.local.files import (
    CATALOG,
    LOCK,
    PAGES_DIR,
    WriteLock,
    write_failure,
)
from indexer.stores.local.sources import LocalSources
from indexer.stores.local.text import TextSearch, fts_query
from indexer.stores.local.vector_index import VectorIndex
from indexer.stores.local.words import LocalWords
from indexer.stores.types import CollectionStats, Document, EncodedImage, Page, PageInput
from indexer.stores.types import page_input_parts as parts

log = logging.getLogger(__name__)

__all__ = [
    "APPROX_THRESHOLD",
    "CATALOG",
    "LOCK",
    "PAGES_DIR",
    "VECTORS",
    "VECTORS_STATE",
    "LocalCollection",
    "fts_query",
    "write_failure",
]


class LocalCollection(
    ModelBinding, WriteLock, FaissCache, TextSearch, LocalChecks, LocalSources, LocalWords
):
    """The persistent store of one collection (catalog + vectors + page images).

    Reading needs no lock and sees everything committed, even while another process indexes.
    Writing (adding, embedding, removing) happens inside :meth:`writing`, which takes the
    collection's file lock so that two indexing processes are serialised.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        create: bool = True,
        model_id: str | None = None,
        dim: int | None = None,
    ) -> None:
        self.path = Path(path).expanduser()
        if not create and self.path.is_dir() and not (self.path / CATALOG).is_file():
            # A read-only use (docs, search, check) of a folder that is not a collection:
            # say so, and create nothing in it.
            raise CollectionError(
                f"{self.path} is not a PageLens collection (it has no {CATALOG}); "
                "nothing was created."
            )
        if not self.path.exists():
            if not create:
                raise CollectionNotFoundError(f"No collection at {self.path}.")
            try:
                self.path.mkdir(parents=True)
            except OSError as exc:
                raise CollectionError(
                    f"Cannot create collection folder {self.path}: {exc}"
                ) from exc
        elif not self.path.is_dir():
            raise CollectionError(f"{self.path} is not a folder, so it cannot hold a collection.")
        self._mutex = threading.RLock()
        self._index: VectorIndex | None = None
        self._index_version = -1
        self._unsaved = 0
        self._lock_depth = 0
        self._filelock: Any = None  # a filelock.FileLock while writing() holds it
        self._swept: set[int] = set()  # documents whose crash leftovers were deleted
        self._snapshot_dir: str | None = None  # see _open_read_only_snapshot
        self.read_only = not os.access(self.path, os.W_OK)
        try:
            if self.read_only:
                if not (self.path / CATALOG).exists():
                    raise CollectionError(
                        f"Collection folder {self.path} is read-only and holds no catalog."
                    )
                self._db = catalog.connect(self.path / CATALOG, read_only=True)
                try:
                    self._db.execute("SELECT COUNT(*) FROM meta").fetchone()
                except sqlite3.OperationalError:
                    self._db.close()
                    self._db, self._snapshot_dir = catalog.open_read_only_snapshot(
                        self.path / CATALOG
                    )
            else:
                self._db = catalog.connect(self.path / CATALOG)
                catalog.migrate(self._db)
        except sqlite3.DatabaseError as exc:
            raise CollectionError(
                f"The catalog {self.path / CATALOG} cannot be read ({exc}). "
                "Run 'pagelens check --repair' or restore it from a backup."
            ) from exc
        if not self.read_only and self.meta("created_at") is None:
            self._set_meta({"created_at": utcnow(), "schema_version": str(catalog.SCHEMA_VERSION)})
        if model_id is not None:
            self.bind_model(model_id, dim)

    def _query(self, sql: str, args: Sequence = ()) -> list[tuple]:
        with self._mutex:
            return self._db.execute(sql, args).fetchall()

    def _one(self, sql: str, args: Sequence = ()) -> tuple | None:
        with self._mutex:
            return self._db.execute(sql, args).fetchone()

    # -- identity ----------------------------------------------------------------------
    @property
    def location(self) -> str:
        return str(self.path)

    def meta(self, key: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        return row[0] if row else None

    def all_meta(self) -> dict[str, str]:
        return dict(self._query("SELECT key, value FROM meta"))

    def _set_meta(self, values: dict[str, str]) -> None:
        with self._mutex, self._db:
            self._db.executemany(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                list(values.items()),
            )

    # -- documents ---------------------------------------------------------------------
    def documents(self) -> list[Document]:
        rows = self._query(
            f"SELECT {DOCUMENT_COLUMNS}, COUNT(p.id), COUNT(p.vector) FROM documents d "
            "LEFT JOIN pages p ON p.document_id = d.id GROUP BY d.id ORDER BY d.id"
        )
        return [Document(*r) for r in rows]

    def document(self, ref: str | int) -> Document:
        """A document by id, by name, or by path; ambiguous names are an error."""
        text = str(ref)
        docs = self.documents()
        if text.isdigit():
            for d in docs:
                if d.id == int(text):
                    return d
        matches = [d for d in docs if d.name == text or d.path == text]
        if not matches:
            matches = [d for d in docs if d.name.casefold() == text.casefold()]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            ids = ", ".join(str(d.id) for d in matches)
            raise DocumentNotFoundError(
                f"More than one document is named '{text}' (ids {ids}); name it by id."
            )
        raise DocumentNotFoundError(f"No document '{text}' in collection {self.path}.")

    def find_by_sha256(self, sha256: str) -> Document | None:
        row = self._one("SELECT id FROM documents WHERE sha256=?", (sha256,))
        return self.documents_by_id([row[0]])[row[0]] if row else None

    def documents_by_id(self, ids: Iterable[int]) -> dict[int, Document]:
        """Documents by id with their page counts, touching only their own pages."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return {}
        marks = ",".join("?" * len(wanted))
        rows = self._query(
            f"SELECT {DOCUMENT_COLUMNS}, "
            "(SELECT COUNT(*) FROM pages p WHERE p.document_id = d.id), "
            "(SELECT COUNT(p.vector) FROM pages p WHERE p.document_id = d.id) "
            f"FROM documents d WHERE d.id IN ({marks})",
            wanted,
        )
        return {r[0]: Document(*r) for r in rows}

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
        status: str = "indexing",
    ) -> Document:
        self._require_lock()
        with self._mutex, self._db:
            cur = self._db.execute(
                "INSERT INTO documents(name, path, sha256, kind, page_count, title, bytes, "
                "status, added_at) VALUES(?,?,?,?,?,?,?,?,?)",
                (name, path, sha256, kind, page_count, title, size, status, utcnow()),
            )
            doc_id = cur.lastrowid
        assert doc_id is not None  # set by every successful INSERT
        return self.document(doc_id)

    def mark_ready(self, document_id: int) -> None:
        self._set_status(document_id, "ready")

    def add_failed_page(self, document_id: int, number: int, reason: str) -> None:
        """Record page ``number`` as a placeholder that failed to render (no image, no
        vector): the rest of the document stays searchable, and a repair can retry it."""
        self._require_lock()
        with self._mutex, self._db:
            self._db.execute(
                "INSERT OR REPLACE INTO failed_pages(document_id, number, reason, failed_at) "
                "VALUES (?, ?, ?, ?)",
                (document_id, number, reason, utcnow()),
            )

    def clear_failed_page(self, document_id: int, number: int) -> None:
        self._require_lock()
        with self._mutex, self._db:
            self._db.execute(
                "DELETE FROM failed_pages WHERE document_id=? AND number=?", (document_id, number)
            )

    def failed_pages(self, document_id: int | None = None) -> list[dict]:
        """Placeholders of pages that failed to render: ``{document_id, document, page,
        reason, failed_at}``, by document and page."""
        where, args = ("WHERE f.document_id=?", (document_id,)) if document_id else ("", ())
        try:
            rows = self._query(
                "SELECT f.document_id, d.name, f.number, f.reason, f.failed_at FROM failed_pages f "
                f"JOIN documents d ON d.id = f.document_id {where} "
                "ORDER BY f.document_id, f.number",
                args,
            )
        except sqlite3.OperationalError:  # a read-only catalog from before schema 2
            return []
        keys = ("document_id", "document", "page", "reason", "failed_at")
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def mark_incomplete(self, document_id: int) -> None:
        """Mark a document as still indexing (some pages missing); a re-run completes it."""
        self._set_status(document_id, "indexing")

    def _set_status(self, document_id: int, status: str) -> None:
        self._require_lock()
        with self._mutex, self._db:
            self._db.execute("UPDATE documents SET status=? WHERE id=?", (status, document_id))

    def remove_document(self, ref: str | int) -> Document:
        """Remove a document's rows, vectors and images."""
        self._require_lock()
        doc = self.document(ref)
        with self._mutex:
            ids = [
                r[0]
                for r in self._query(
                    "SELECT id FROM pages WHERE document_id=? AND vector IS NOT NULL", (doc.id,)
                )
            ]
            with self._db:
                self._db.execute("DELETE FROM pages WHERE document_id=?", (doc.id,))
                self._db.execute("DELETE FROM documents WHERE id=?", (doc.id,))
                self._bump_version()
            if ids:
                self._drop_from_index(ids)
            shutil.rmtree(self.path / PAGES_DIR / str(doc.id), ignore_errors=True)
        self.flush()
        return doc

    # -- pages -------------------------------------------------------------------------
    def add_pages(self, document_id: int, pages: Sequence[PageInput]) -> list[int]:
        """Store rendered pages (number, text, image[, words]) of a document in one
        transaction. ``image`` is a PIL image or an :class:`EncodedImage` (PNG bytes)."""
        self._require_lock()
        if document_id not in self._swept:  # temp files of a write a crash cut short
            self._swept.add(document_id)
            for stale in (self.path / PAGES_DIR / str(document_id)).glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        rows, words = [], []
        for number, text, image, page_words in map(parts, pages):
            words.append(page_words)
            encoded = image if isinstance(image, EncodedImage) else EncodedImage.of(image)
            data = encoded.data
            rel = f"{PAGES_DIR}/{document_id}/{number:05d}.png"
            atomic_write_bytes(self.path / rel, data)
            rows.append(
                (
                    document_id,
                    number,
                    text,
                    rel,
                    hashlib.sha256(data).hexdigest(),
                    encoded.width,
                    encoded.height,
                )
            )
        with self._mutex, self._db:
            ids = []
            for row in rows:
                cur = self._db.execute(
                    "INSERT INTO pages(document_id, number, text, image, image_sha256, width, "
                    "height) VALUES(?,?,?,?,?,?,?) ON CONFLICT(document_id, number) DO UPDATE "
                    "SET text=excluded.text, image=excluded.image, "
                    "image_sha256=excluded.image_sha256, width=excluded.width, "
                    "height=excluded.height RETURNING id",
                    row,
                )
                ids.append(cur.fetchone()[0])
            self._write_words(list(zip(ids, words, strict=True)))
        return ids

    def stored_page_numbers(self, document_id: int) -> set[int]:
        return {
            r[0]
            for r in self._query("SELECT number FROM pages WHERE document_id=?", (document_id,))
        }

    def pages(self, document_id: int | None = None, *, with_text: bool = True) -> list[Page]:
        """Pages in document and page order. ``with_text=False`` leaves ``text`` empty: a
        whole collection's text layer need not fit in memory to walk its pages."""
        columns = PAGE_COLUMNS if with_text else PAGE_COLUMNS.replace("p.text", "''", 1)
        sql = f"SELECT {columns} FROM pages p"
        args: tuple = ()
        if document_id is not None:
            sql += " WHERE p.document_id=?"
            args = (document_id,)
        return [
            page_from_row(r) for r in self._query(sql + " ORDER BY p.document_id, p.number", args)
        ]

    def page(self, page_id: int) -> Page:
        row = self._one(f"SELECT {PAGE_COLUMNS} FROM pages p WHERE p.id=?", (page_id,))
        if row is None:
            raise DocumentNotFoundError(f"No page {page_id} in collection {self.path}.")
        return page_from_row(row)

    def pages_by_id(self, page_ids: Iterable[int]) -> dict[int, Page]:
        ids = [int(i) for i in page_ids]
        out: dict[int, Page] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for r in self._query(
                f"SELECT {PAGE_COLUMNS} FROM pages p WHERE p.id IN ({marks})", chunk
            ):
                page = page_from_row(r)
                out[page.id] = page
        return out

    def page_ids(
        self,
        *,
        documents: Iterable[int] | None = None,
        first: int | None = None,
        last: int | None = None,
        embedded: bool | None = None,
    ) -> list[int]:
        """Page ids matching filters: document ids, a 1-based page range, embedded or not."""
        where, args = page_filter(documents, first, last)
        if embedded is True:
            where.append("vector IS NOT NULL")
        elif embedded is False:
            where.append("vector IS NULL")
        sql = "SELECT id FROM pages" + (" WHERE " + " AND ".join(where) if where else "")
        return [r[0] for r in self._query(sql + " ORDER BY id", args)]

    def image_path(self, page: Page) -> Path:
        return self.path / page.image

    def image_bytes(self, page: Page) -> bytes:
        return self.image_path(page).read_bytes()

    def load_image(self, page: Page) -> Image.Image:
        with Image.open(self.image_path(page)) as im:
            return im.convert("RGB")

    def pending_pages(self, limit: int | None = None) -> list[Page]:
        sql = f"SELECT {PAGE_COLUMNS} FROM pages p WHERE p.vector IS NULL ORDER BY p.id"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [page_from_row(r) for r in self._query(sql)]

    def vector_for_image_sha(self, image_sha256: str) -> np.ndarray | None:
        """A stored vector of a byte-identical page image, so it need not be embedded again."""
        row = self._one(
            "SELECT vector FROM pages WHERE image_sha256=? AND vector IS NOT NULL LIMIT 1",
            (image_sha256,),
        )
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def sqlite_cache_bytes(self) -> int:
        """The most memory SQLite's page cache of this catalog may hold, in bytes (from
        ``PRAGMA cache_size``: negative is KiB, positive a number of pages of
        ``PRAGMA page_size`` bytes). Fixed, whatever the collection's size."""
        cache = self._one("PRAGMA cache_size")
        page_size = self._one("PRAGMA page_size")
        assert cache is not None and page_size is not None  # pragmas always return a row
        return -cache[0] * 1024 if cache[0] < 0 else cache[0] * page_size[0]

    def stats(self) -> CollectionStats:
        docs = self._one("SELECT COUNT(*) FROM documents")
        pages = self._one("SELECT COUNT(*), COUNT(vector) FROM pages")
        assert docs is not None and pages is not None  # aggregates always return a row
        return CollectionStats(documents=docs[0], pages=pages[0], embedded=pages[1])

    # -- vectors -----------------------------------------------------------------------
    def remove_pages(self, page_ids: Sequence[int]) -> None:
        """Delete page rows, their vectors and image files (``pagelens check --repair``)."""
        self._require_lock()
        ids = [int(i) for i in page_ids]
        if not ids:
            return
        pages = self.pages_by_id(ids)
        with self._mutex:
            with self._db:
                self._db.executemany("DELETE FROM pages WHERE id=?", [(i,) for i in ids])
                self._bump_version()
            self._drop_from_index(ids)
        for page in pages.values():
            (self.path / page.image).unlink(missing_ok=True)

    # -- housekeeping ------------------------------------------------------------------

    def close(self) -> None:
        with self._mutex:
            if self._lock_depth:
                self.flush()
            if not self.read_only:
                # Fold the WAL into the catalog, so that a read-only copy of the folder
                # (or a read-only mount) sees every commit even without the WAL.
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._db.close()
            if self._snapshot_dir is not None:
                shutil.rmtree(self._snapshot_dir, ignore_errors=True)
                self._snapshot_dir = None

    def __enter__(self) -> LocalCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
