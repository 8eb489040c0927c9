"""The local engine's vector side: the FAISS cache kept in step with the SQLite catalog.

SQLite holds every vector (``pages.vector``, float32 BLOB); ``vectors.faiss`` is a cache of
them, saved atomically with the catalog version it reflects (``vectors.state``) and synced on
open. Collections use exact search up to :data:`APPROX_THRESHOLD` vectors, then IVF-SQ8 with
an exact re-rank from the catalog (see :mod:`indexer.stores.local.vector_index`).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from indexer.stores.base import atomic_write_bytes, utcnow, vectors_to_store
from indexer.stores.local.vector_index import VectorIndex
from indexer.stores.types import Page, PageFilter

log = logging.getLogger(__name__)

VECTORS = "vectors.faiss"
VECTORS_STATE = "vectors.state"

#: Collections up to this many vectors use exact search; larger ones IVF-SQ8 + exact re-rank.
#: Chosen from the benchmark (bench/): exact flat search stays under ~20 ms to here on 2 cores.
APPROX_THRESHOLD = 50_000


T = TypeVar("T")


class FaissCache:
    """Mixin of :class:`~indexer.stores.local.collection.LocalCollection`: vectors, FAISS
    sync, search.

    It relies on the engine's catalog helpers (``_query``, ``_one``, ``meta``, ``dim``,
    ``pages_by_id``, ``_require_lock``, ``_filter_ids``), which ``LocalCollection`` provides.
    """

    if TYPE_CHECKING:  # provided by LocalCollection (catalog side)

        @property
        def dim(self) -> int | None: ...

        def meta(self, key: str) -> str | None: ...

        def _require_lock(self) -> None: ...

        def _query(self, sql: str, args: Sequence = ()) -> list[tuple]: ...

        def _one(self, sql: str, args: Sequence = ()) -> tuple | None: ...

        def pages_by_id(self, page_ids: Iterable[int]) -> dict[int, Page]: ...

        def _filter_ids(
            self, page_ids: Iterable[int] | None, where: PageFilter | None
        ) -> list[int] | None: ...

        def _without_hidden(self, run: Callable[[], T]) -> T: ...

    path: Path
    _db: sqlite3.Connection
    _mutex: threading.RLock
    _index: VectorIndex | None
    _index_version: int
    _unsaved: int
    _lock_depth: int

    def set_vectors(self, page_ids: Sequence[int], vectors: np.ndarray) -> None:
        """Store the vectors of pages (one transaction), then add them to the index."""
        self._require_lock()
        vecs = vectors_to_store(vectors, self.dim)
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
                if len(index) + len(ids) > index.room:
                    self._make_room(index, len(ids))
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

    def _make_room(self, index: VectorIndex, adding: int) -> None:
        """Grow the FAISS cache once to hold every page of the catalog (embedded or still
        pending, up to where it turns approximate), instead of batch by batch.

        Why: a flat index growing by itself doubles its buffer, holding the old and the new
        one at once while it copies (see :meth:`VectorIndex.reserve`); growing it to the
        size the vectors phase will reach takes their memory once, so indexing a long PDF
        peaks at one batch of pages plus the vectors, never plus a second copy of them."""
        row = self._one("SELECT COUNT(*) FROM pages")
        pages = int(row[0]) if row else 0
        index.reserve(max(len(index) + adding, min(pages, APPROX_THRESHOLD + 1)))

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
            self._drop_from_index(page_ids)

    def _drop_from_index(self, page_ids: Sequence[int]) -> None:
        """Remove pages from the FAISS cache after the catalog dropped them (under the mutex).

        The cache is loaded first, so that the file saved next drops the ids too."""
        index = self.index()
        if index is not None:
            index.remove(page_ids)
            self._index_version = self._version()
            self._unsaved += 1

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

    def vectors(self, page_ids: Sequence[int]) -> dict[int, np.ndarray]:
        """Stored vectors of embedded pages, by id (missing or pending ids left out)."""
        out: dict[int, np.ndarray] = {}
        ids = [int(i) for i in page_ids]
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for pid, blob in self._query(
                f"SELECT id, vector FROM pages WHERE id IN ({marks}) AND vector IS NOT NULL",
                chunk,
            ):
                out[int(pid)] = np.frombuffer(blob, np.float32).copy()
        return out

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
            from indexer.errors import CollectionError

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
                from indexer.stores.local.files import write_failure

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
        self,
        query: np.ndarray,
        k: int,
        *,
        page_ids: Iterable[int] | None = None,
        where: PageFilter | None = None,
    ) -> list[tuple[int, float]]:
        """Nearest pages to a unit query vector: ``[(page_id, cosine), ...]`` best first."""
        return self._without_hidden(lambda: self._search_once(query, k, page_ids, where))

    def _search_once(
        self,
        query: np.ndarray,
        k: int,
        page_ids: Iterable[int] | None,
        where: PageFilter | None,
    ) -> list[tuple[int, float]]:
        page_ids = self._filter_ids(page_ids, where)
        if page_ids is not None and not page_ids:
            return []
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
