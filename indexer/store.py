"""A collection: one folder holding the SQLite catalog, the FAISS index and the page images.

Nothing else in PageLens touches these files. Layout::

    <collection>/catalog.sqlite      documents, pages (text, image path, vector), meta
    <collection>/vectors.faiss       FAISS IndexIDMap2, ids = page ids (a rebuildable cache)
    <collection>/vectors.state       the catalog version the FAISS file reflects
    <collection>/pages/<doc>/<n>.png page images, for display and export
    <collection>/write.lock          held by the one process allowed to write

Why it survives ``kill -9``: page images are written (temp file + ``os.replace``) before the
rows that name them; rows and vectors are committed in SQLite transactions; the FAISS file
is written atomically and is only a cache of the vectors stored in SQLite, brought back in
step on open. So a crash at any instant leaves a collection that opens, searches what was
committed, and resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer import catalog
from indexer.catalog import DOCUMENT_COLUMNS, PAGE_COLUMNS, Document, Page, page_from_row
from indexer.errors import (
    CollectionError,
    CollectionLockedError,
    DocumentNotFoundError,
    ModelMismatchError,
)
from indexer.identity import ModelIdentity
from indexer.vectors import VectorIndex

log = logging.getLogger(__name__)

CATALOG = "catalog.sqlite"
VECTORS = "vectors.faiss"
VECTORS_STATE = "vectors.state"
PAGES_DIR = "pages"
LOCK = "write.lock"
UPLOADS_DIR = "uploads"

#: Collections up to this many vectors use exact search; larger ones IVF-SQ8 with an exact
#: re-rank from the catalog (see indexer/vectors.py).
#: Chosen from the benchmark (bench/): exact flat search stays under ~20 ms to here on 2 cores.
APPROX_THRESHOLD = 50_000


def utcnow() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class EncodedImage:
    """A page image already encoded as PNG (by :func:`encode_png`, e.g. in a Ray render task),
    so that the single writer stores the bytes as they are instead of decoding and re-encoding
    them; the bytes are exactly what :meth:`Collection.add_pages` would have written."""

    data: bytes
    width: int
    height: int

    @classmethod
    def of(cls, image: Image.Image) -> EncodedImage:
        return cls(encode_png(image), image.width, image.height)


@dataclass(frozen=True)
class CollectionStats:
    documents: int
    pages: int
    embedded: int

    @property
    def pending(self) -> int:
        return self.pages - self.embedded


class Collection:
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
                raise CollectionError(f"No collection at {self.path}.")
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
                    self._db = self._open_read_only_snapshot()
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

    @property
    def model_id(self) -> str | None:
        return self.meta("model_id")

    @property
    def dim(self) -> int | None:
        value = self.meta("dim")
        return int(value) if value else None

    @property
    def model_fingerprint(self) -> str | None:
        """The recorded weights fingerprint (see :mod:`indexer.identity`); None in
        collections made before fingerprints, or by a model that has none."""
        return self.meta("model_fingerprint") or None

    def model_identity(self) -> ModelIdentity | None:
        """The model this collection records, or None before anything was embedded."""
        if self.model_id is None:
            return None
        return ModelIdentity(
            name=self.model_id,
            dim=self.dim,
            fingerprint=self.model_fingerprint,
            revision=self.meta("model_revision") or None,
        )

    def bind_model(
        self,
        model_id: str,
        dim: int | None,
        *,
        fingerprint: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Record the model that embeds this collection, or fail if another one did.

        Vectors of two models live in different spaces: mixing them would return nonsense,
        so the first model to embed a page owns the collection. A collection recorded before
        fingerprints existed adopts the fingerprint of the first matching model (by name).
        """
        stored = self.model_identity()
        if stored is None:
            if not self.read_only:
                values = {"model_id": model_id, "dim": str(dim or "")}
                if fingerprint:
                    values["model_fingerprint"] = fingerprint
                if revision:
                    values["model_revision"] = revision
                self._set_meta(values)
            return
        if not self.same_model(model_id, dim, fingerprint=fingerprint):
            raise ModelMismatchError(
                mismatch_message(self.path, stored, model_id, dim, fingerprint)
            )
        if fingerprint and not stored.fingerprint and not self.read_only:
            self._set_meta({"model_fingerprint": fingerprint})

    def bind_embedder(self, embedder: object) -> None:
        """:meth:`bind_model` with an embedder's identity (name, dim, fingerprint)."""
        ident = ModelIdentity.of(embedder)
        self.bind_model(
            ident.name, ident.dim, fingerprint=ident.fingerprint, revision=ident.revision
        )

    def same_model(self, model_id: str, dim: int | None, *, fingerprint: str | None = None) -> bool:
        """Whether the given model is the one this collection records (True when none is).

        When both sides have a weights fingerprint, it decides alone: the same weights match
        from any folder or hub id, different weights never do. Otherwise (an old collection,
        or a model that cannot fingerprint itself) models compare by name.
        """
        stored = self.model_identity()
        if stored is None:
            return True
        if dim is not None and stored.dim is not None and stored.dim != dim:
            return False
        if fingerprint and stored.fingerprint:
            return fingerprint == stored.fingerprint
        return _model_key(stored.name) == _model_key(model_id)

    def render_settings(self) -> dict | None:
        value = self.meta("render_settings")
        return json.loads(value) if value else None

    def set_render_settings(self, settings: dict) -> None:
        self._set_meta({"render_settings": json.dumps(settings, sort_keys=True)})

    # -- locking -----------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(
        self, *, timeout: float = -1, on_wait: Callable[[str], None] | None = None
    ) -> Iterator[Collection]:
        """Hold the collection's write lock (re-entrant within this object).

        ``on_wait`` is told once, with a readable message, when another process holds the
        lock and we start waiting; ``timeout`` < 0 waits for ever.
        """
        if self.read_only:
            raise CollectionError(f"Collection folder {self.path} is read-only.")
        from filelock import FileLock, Timeout

        with self._mutex:
            if self._lock_depth == 0:
                lock = FileLock(str(self.path / LOCK))
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    if on_wait:
                        on_wait(f"waiting for another process indexing into {self.path} ...")
                    try:
                        lock.acquire(timeout=timeout)
                    except Timeout as exc:
                        raise CollectionLockedError(
                            f"Collection {self.path} is busy: another process is writing to it."
                        ) from exc
                self._filelock = lock
            self._lock_depth += 1
        try:
            yield self
        except (OSError, sqlite3.OperationalError) as exc:
            failure = write_failure(self.path, exc)
            if failure is None:
                raise
            raise failure from exc
        finally:
            with self._mutex:
                if self._lock_depth == 1:
                    try:
                        self.flush()  # while the lock is still ours: flush() needs it
                    finally:
                        self._lock_depth = 0
                        self._filelock.release()
                        self._filelock = None
                else:
                    self._lock_depth -= 1

    @contextlib.contextmanager
    def lock_if_free(self) -> Iterator[bool]:
        """Hold the write lock if no other process does, without waiting; yields whether the
        view is now free of concurrent writers.

        For readers that want a consistent view but write nothing (``pagelens check``): none
        of :meth:`writing`'s side effects (no flush, no write-failure mapping). A read-only
        folder, or one where the lock file cannot be created, has no writers: True.
        """
        from filelock import FileLock, Timeout

        if self.read_only or self._lock_depth:  # no one can write / we already hold it
            yield True
            return
        lock = FileLock(str(self.path / LOCK))
        held = free = False
        try:
            lock.acquire(timeout=0)
            held = free = True
        except Timeout:
            pass
        except OSError:  # cannot even create the lock file, so nobody writes here either
            free = True
        try:
            yield free
        finally:
            if held:
                lock.release()

    def _require_lock(self) -> None:
        if self._lock_depth == 0:
            raise RuntimeError("write outside Collection.writing()")

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
    ) -> Document:
        self._require_lock()
        with self._mutex, self._db:
            cur = self._db.execute(
                "INSERT INTO documents(name, path, sha256, kind, page_count, title, bytes, "
                "status, added_at) VALUES(?,?,?,?,?,?,?, 'indexing', ?)",
                (name, path, sha256, kind, page_count, title, size, utcnow()),
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
            index = self.index()  # loaded, so the saved file drops the ids too
            if index is not None and ids:
                index.remove(ids)
                self._index_version = self._version()
                self._unsaved += 1
            shutil.rmtree(self.path / PAGES_DIR / str(doc.id), ignore_errors=True)
        self.flush()
        return doc

    # -- pages -------------------------------------------------------------------------
    def add_pages(
        self, document_id: int, pages: Sequence[tuple[int, str, Image.Image | EncodedImage]]
    ) -> list[int]:
        """Store rendered pages (number, text, image) of a document in one transaction.

        ``image`` is a PIL image or an :class:`EncodedImage` (PNG bytes encoded elsewhere)."""
        self._require_lock()
        if document_id not in self._swept:  # temp files of a write a crash cut short
            self._swept.add(document_id)
            for stale in (self.path / PAGES_DIR / str(document_id)).glob(".*.tmp"):
                stale.unlink(missing_ok=True)
        rows = []
        for number, text, image in pages:
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
        where, args = [], []
        if documents is not None:
            docs = [int(d) for d in documents]
            where.append(f"document_id IN ({','.join('?' * len(docs)) or 'NULL'})")
            args.extend(docs)
        if first is not None:
            where.append("number >= ?")
            args.append(first)
        if last is not None:
            where.append("number <= ?")
            args.append(last)
        if embedded is True:
            where.append("vector IS NOT NULL")
        elif embedded is False:
            where.append("vector IS NULL")
        sql = "SELECT id FROM pages" + (" WHERE " + " AND ".join(where) if where else "")
        return [r[0] for r in self._query(sql + " ORDER BY id", args)]

    def image_path(self, page: Page) -> Path:
        return self.path / page.image

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

    def stats(self) -> CollectionStats:
        docs = self._one("SELECT COUNT(*) FROM documents")
        pages = self._one("SELECT COUNT(*), COUNT(vector) FROM pages")
        assert docs is not None and pages is not None  # aggregates always return a row
        return CollectionStats(documents=docs[0], pages=pages[0], embedded=pages[1])

    # -- vectors -----------------------------------------------------------------------
    def set_vectors(self, page_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store the vectors of pages (one transaction), then add them to the index."""
        self._require_lock()
        vecs = np.ascontiguousarray(vectors, dtype=np.float32)
        dim = self.dim
        if dim and vecs.shape[1] != dim:
            raise ModelMismatchError(
                f"Vectors of dim {vecs.shape[1]} do not fit collection dim {dim}."
            )
        now = utcnow()
        with self._mutex:
            self.index()  # load (and sync) the cache first, so it is saved as we go
            with self._db:
                present = self.pages_by_id(page_ids)
                rows = [
                    (vecs[i].tobytes(), now, int(pid))
                    for i, pid in enumerate(page_ids)
                    if int(pid) in present
                ]
                self._db.executemany("UPDATE pages SET vector=?, embedded_at=? WHERE id=?", rows)
                self._bump_version()
            index = self._loaded_index()
            if index is not None:
                keep = [i for i, pid in enumerate(page_ids) if int(pid) in present]
                ids = [int(page_ids[i]) for i in keep]
                existing = np.isin(np.asarray(ids, np.int64), index.ids())
                if len(ids) and np.any(existing):
                    index.remove([i for i, e in zip(ids, existing, strict=True) if e])
                index.add(ids, vecs[keep])
                self._index_version = self._version()
                self._unsaved += len(ids)
                if index.kind == "flat" and len(index) > APPROX_THRESHOLD:
                    self._rebuild_as("ivf")
        if self._unsaved >= 256:
            self.flush()

    def clear_vectors(self, page_ids: Sequence[int]) -> None:
        """Mark pages as not embedded (they will be embedded again)."""
        self._require_lock()
        with self._mutex:
            with self._db:
                self._db.executemany(
                    "UPDATE pages SET vector=NULL, embedded_at=NULL WHERE id=?",
                    [(int(i),) for i in page_ids],
                )
                self._bump_version()
            index = self.index()  # loaded, so the saved file drops the ids too
            if index is not None:
                index.remove(page_ids)
                self._index_version = self._version()
                self._unsaved += 1

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
            index = self.index()  # loaded, so the saved file drops the ids too
            if index is not None:
                index.remove(ids)
                self._index_version = self._version()
                self._unsaved += 1
        for page in pages.values():
            (self.path / page.image).unlink(missing_ok=True)

    def rebuild_index(self) -> int:
        """Rebuild the FAISS cache from the catalog's vectors and save it; returns its size."""
        self._require_lock()
        with self._mutex:
            self._index = VectorIndex(self.dim or 1, kind="flat")
            self._sync_index()
            self._index_version = self._version()
            self._unsaved += 1
            self.flush()
            return len(self._index)

    def vector(self, page_id: int) -> np.ndarray | None:
        row = self._one("SELECT vector FROM pages WHERE id=?", (page_id,))
        if row is None or row[0] is None:
            return None
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def vectors(self, page_ids: Iterable[int]) -> dict[int, np.ndarray]:
        """The stored vectors of these pages (those that have one), as the catalog holds them
        (whatever their length: checks compare them with the FAISS file and the dim)."""
        ids = [int(i) for i in page_ids]
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for pid, blob in self._query(
                f"SELECT id, vector FROM pages WHERE id IN ({marks}) AND vector IS NOT NULL",
                chunk,
            ):
                out[int(pid)] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def pages_with_vector_not_of_dim(self, dim: int) -> list[int]:
        """Ids of pages whose stored vector does not have ``dim`` float32 values."""
        return [
            r[0]
            for r in self._query(
                "SELECT id FROM pages WHERE vector IS NOT NULL AND length(vector) != ? ORDER BY id",
                (int(dim) * 4,),
            )
        ]

    def quick_check(self) -> list[str]:
        """SQLite's ``PRAGMA quick_check`` of the catalog: ``["ok"]`` when it is sound."""
        return [str(r[0]) for r in self._query("PRAGMA quick_check")]

    def _version(self) -> int:
        value = self.meta("vectors_version")
        return int(value) if value else 0

    def _bump_version(self) -> None:
        # Called inside an open transaction: the version moves with the vectors it counts.
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES('vectors_version', '1') ON CONFLICT(key) "
            "DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def _loaded_index(self) -> VectorIndex | None:
        return self._index

    def index(self) -> VectorIndex:
        """The FAISS index, in step with every vector committed to the catalog."""
        with self._mutex:
            version = self._version()
            dim = self.dim
            if self._index is not None and dim and self._index.dim != dim:
                self._index = None  # built before a model was bound (text-only start)
            if self._index is not None and self._index_version == version:
                return self._index
            if self._index is None:
                self._index = self._read_index_file(version)
            self._sync_index()
            self._index_version = version
            return self._index

    def _read_index_file(self, version: int) -> VectorIndex:
        dim = self.dim
        path = self.path / VECTORS
        if path.exists():
            try:
                index = VectorIndex.load(path)
                if dim is None or index.dim == dim:
                    return index
                log.warning(
                    "vector file %s has dim %s, catalog %s: rebuilding", path, index.dim, dim
                )
            except Exception as exc:  # unreadable cache: rebuild from the catalog
                log.warning("cannot read %s (%s): rebuilding from the catalog", path, exc)
        # A fresh cache starts exact; a writer turns it approximate once it is large enough.
        return VectorIndex(dim or 1, kind="flat")

    def _sync_index(self) -> None:
        """Add vectors the index lacks and drop ids the catalog no longer has."""
        index = self._index
        assert index is not None
        dim = self.dim
        if dim and index.dim != dim:
            index = self._index = VectorIndex(dim, kind="flat")
        have = index.ids()
        want = np.array(
            [r[0] for r in self._query("SELECT id FROM pages WHERE vector IS NOT NULL")],
            dtype=np.int64,
        )
        stale = np.setdiff1d(have, want)
        missing = np.setdiff1d(want, have)
        if len(stale):
            index.remove(stale.tolist())
        for start in range(0, len(missing), 2048):
            chunk = [int(i) for i in missing[start : start + 2048]]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT id, vector FROM pages WHERE id IN ({marks})", chunk)
            index.add(
                [r[0] for r in rows], np.stack([np.frombuffer(r[1], np.float32) for r in rows])
            )
        if len(stale) or len(missing):
            log.info("vector index synced: %d added, %d removed", len(missing), len(stale))
            self._unsaved += len(stale) + len(missing)
        if index.kind == "flat" and len(index) > APPROX_THRESHOLD and self._lock_depth > 0:
            self._rebuild_as("ivf")

    def _catalog_vectors(self, ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Exact vectors of pages, from the catalog (the source of truth), in ``ids`` order."""
        out = np.zeros((len(ids), self.dim or 1), np.float32)
        where = {int(pid): i for i, pid in enumerate(ids)}
        for start in range(0, len(ids), 2048):
            chunk = [int(i) for i in ids[start : start + 2048]]
            marks = ",".join("?" * len(chunk))
            for pid, blob in self._query(
                f"SELECT id, vector FROM pages WHERE id IN ({marks}) AND vector IS NOT NULL",
                chunk,
            ):
                out[where[pid]] = np.frombuffer(blob, np.float32)
        return out

    def _rebuild_as(self, kind: str) -> None:
        """Rebuild the cache as ``kind`` from the catalog's exact vectors."""
        dim, index = self.dim, self._index
        if dim is None or index is None:  # vectors exist only once a model is bound
            raise CollectionError(f"Collection {self.path} has no vector dimension yet.")
        fresh = VectorIndex(dim, kind=kind)
        ids = np.sort(index.ids())
        if kind == "ivf":
            rng = np.random.default_rng(0)
            sample = np.sort(rng.choice(ids, size=min(len(ids), 100_000), replace=False))
            fresh.train(self._catalog_vectors(sample))
        for start in range(0, len(ids), 4096):
            chunk = ids[start : start + 4096]
            fresh.add(chunk, self._catalog_vectors(chunk))
        log.info("vector index rebuilt as %s over %d vectors", kind, len(ids))
        self._index = fresh
        self._unsaved += 1

    def flush(self) -> None:
        """Persist the FAISS cache if it changed (only the lock holder writes files)."""
        with self._mutex:
            if self._lock_depth == 0 or self.dim is None:  # no model yet, so no vectors
                return
            if self._index is None and self._version() not in (0, self._saved_version()):
                # The file lags the catalog (a crash before it was saved): bring it in step.
                self.index()
                self._unsaved += 1
            if self._index is None or self._unsaved == 0:
                return
            for stale in self.path.glob(VECTORS + ".*.tmp"):  # a crash mid-save left it
                stale.unlink(missing_ok=True)
            try:
                self._index.save(self.path / VECTORS)
                atomic_write_bytes(self.path / VECTORS_STATE, str(self._index_version).encode())
            except OSError as exc:  # the catalog holds every vector: nothing is lost
                raise (write_failure(self.path, exc) or exc) from exc
            self._unsaved = 0

    def _saved_version(self) -> int:
        """The catalog version the FAISS file reflects (-1: unknown or no file)."""
        try:
            if not (self.path / VECTORS).exists():
                return -1
            return int((self.path / VECTORS_STATE).read_text().strip())
        except (OSError, ValueError):
            return -1

    def search(
        self, query: np.ndarray, k: int, *, page_ids: Iterable[int] | None = None
    ) -> list[tuple[int, float]]:
        """Nearest pages to a unit query vector: ``[(page_id, cosine), ...]`` best first."""
        index = self.index()
        q = np.asarray(query, np.float32)
        if index.kind == "flat":
            scores, ids = index.search(q[None], k, allowed_ids=page_ids)
            return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        # Approximate index: take more candidates than asked, then score them exactly with
        # the catalog's vectors, so scores are true cosines and near-misses are recovered.
        _, ids = index.search(q[None], max(4 * k, 50), allowed_ids=page_ids)
        candidates = [int(i) for i in ids[0] if i >= 0]
        if not candidates:
            return []
        exact = self._catalog_vectors(candidates) @ q
        order = np.argsort(-exact, kind="stable")[:k]
        return [(candidates[i], float(exact[i])) for i in order]

    def search_text(
        self, query: str, k: int, *, page_ids: Iterable[int] | None = None
    ) -> list[tuple[int, float]]:
        """BM25 over the pages' text layer (SQLite FTS5): ``[(page_id, score), ...]``."""
        match = fts_query(query)
        if not match:
            return []
        sql = "SELECT rowid, -bm25(pages_fts) FROM pages_fts WHERE pages_fts MATCH ?"
        args: list = [match]
        if page_ids is not None:
            allowed = [int(i) for i in page_ids]
            if not allowed:
                return []
            sql += f" AND rowid IN ({','.join('?' * len(allowed))})"
            args.extend(allowed)
        sql += " ORDER BY bm25(pages_fts) LIMIT ?"
        args.append(int(k))
        try:
            return [(int(r[0]), float(r[1])) for r in self._query(sql, args)]
        except sqlite3.OperationalError as exc:
            log.warning("full-text query %r failed: %s", match, exc)
            return []

    # -- housekeeping ------------------------------------------------------------------
    def _open_read_only_snapshot(self) -> sqlite3.Connection:
        """The catalog of a truly read-only folder, where SQLite cannot create the WAL's
        shared-memory file. Without a WAL (closing a collection checkpoints it) the file is
        read as immutable; with one (a writer that never closed), catalog and WAL are copied
        to a private temporary folder and read there, so the last commits are seen too."""
        wal = self.path / (CATALOG + "-wal")
        if not (wal.is_file() and wal.stat().st_size > 0):
            return sqlite3.connect(
                f"file:{self.path / CATALOG}?mode=ro&immutable=1",
                uri=True,
                check_same_thread=False,
            )
        self._snapshot_dir = tempfile.mkdtemp(prefix="pagelens-ro-")
        for name in (CATALOG, CATALOG + "-wal"):
            shutil.copyfile(self.path / name, Path(self._snapshot_dir) / name)
        return catalog.connect(Path(self._snapshot_dir) / CATALOG, read_only=True)

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

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_WRITE_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO, errno.EFBIG}
)


def write_failure(path: Path, exc: BaseException) -> CollectionError | None:
    """A readable error for a write that the collection's disk refused (full, read-only...),
    or None when ``exc`` is not such a failure (then it is a bug, and stays as it is)."""
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        if not any(s in text.lower() for s in ("full", "readonly", "read-only", "disk i/o")):
            return None
        reason = text
    elif isinstance(exc, OSError) and exc.errno in _WRITE_ERRNOS:
        reason = exc.strerror or str(exc)
        if exc.filename:
            reason += f" ({exc.filename})"
    else:
        return None
    return CollectionError(
        f"Cannot write to collection {path}: {reason}. Everything committed before is intact; "
        "free some space (or make the folder writable) and run the same command again to resume."
    )


def fts_query(text: str) -> str:
    """Turn free text into a safe FTS5 query: every word quoted, joined by OR.

    Quoting makes user input (quotes, colons, hyphens) harmless; OR with BM25 ranking lets
    pages that contain more of the words rank first.
    """
    import re

    words = re.findall(r"\w+", text.lower())
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return " OR ".join(f'"{w}"' for w in seen[:64])


def encode_png(image: Image.Image) -> bytes:
    """The PNG bytes a collection stores for a page image (lossless, fast compression)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def mismatch_message(
    path: Path, stored: ModelIdentity, model_id: str, dim: int | None, fingerprint: str | None
) -> str:
    """One sentence naming both models (by weights when both have a fingerprint)."""
    given = f"'{model_id}' (dim {dim}" + (f", weights {fingerprint})" if fingerprint else ")")
    had = f"'{stored.display}' (dim {stored.dim}" + (
        f", weights {stored.fingerprint})" if stored.fingerprint else ")"
    )
    return (
        f"Collection {path} was built with model {had}, but {given} was given. Use the same "
        "model (--model / PAGELENS_MODEL), or index into another collection (--collection)."
    )


def _model_key(model_id: str) -> str:
    """Name rule, only for models without a fingerprint: compare the last path component."""
    text = str(model_id).rstrip("/\\")
    return os.path.basename(text).lower()
