"""The local engine's side of ``pagelens sync``: where each document's file is (moves keep
pages and vectors), the modification time it had, and the one-transaction swap of a changed
file's new version for its old one."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from indexer.errors import DocumentNotFoundError
from indexer.stores.local.catalog import page_filter
from indexer.stores.types import HIDDEN_STATUSES

#: Meta keys of the recorded modification times: ``source:<sha256>`` -> nanoseconds. Keyed
#: by content, so a stale one (its document removed) can never describe another file.
STAMP_PREFIX = "source:"

T = TypeVar("T")

_HIDDEN_SQL = "(" + ", ".join(f"'{s}'" for s in HIDDEN_STATUSES) + ")"


class LocalSources:
    """Mixin of :class:`~indexer.stores.local.collection.LocalCollection` (it relies on the
    engine's catalog connection, mutex and write lock)."""

    if TYPE_CHECKING:  # provided by LocalCollection
        _db: sqlite3.Connection
        _mutex: threading.RLock

        def _require_lock(self) -> None: ...

        def _query(self, sql: str, args: Sequence = ()) -> list[tuple]: ...

        def _one(self, sql: str, args: Sequence = ()) -> tuple | None: ...

    def replace_document(self, old_id: int, new_id: int) -> None:
        self._require_lock()
        with self._mutex, self._db:
            found = self._db.execute(
                "SELECT COUNT(*) FROM documents WHERE id IN (?, ?)", (old_id, new_id)
            ).fetchone()[0]
            if found != 2:
                raise DocumentNotFoundError(f"No documents {old_id} and {new_id} to swap.")
            self._db.execute("UPDATE documents SET status='ready' WHERE id=?", (new_id,))
            self._db.execute("UPDATE documents SET status='replaced' WHERE id=?", (old_id,))

    def set_document_source(
        self, document_id: int, *, path: str, name: str, size: int, mtime_ns: int
    ) -> None:
        self._require_lock()
        row = self._one("SELECT sha256 FROM documents WHERE id=?", (document_id,))
        if row is None:
            raise DocumentNotFoundError(f"No document {document_id}.")
        with self._mutex, self._db:
            self._db.execute(
                "UPDATE documents SET path=?, name=?, bytes=? WHERE id=?",
                (path, name, int(size), document_id),
            )
            self._db.execute(
                "INSERT INTO meta(key, value) VALUES(?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value=excluded.value",
                (STAMP_PREFIX + row[0], str(int(mtime_ns))),
            )

    def source_stamps(self) -> dict[str, int]:
        rows = self._query("SELECT key, value FROM meta WHERE key LIKE ?", (STAMP_PREFIX + "%",))
        return {k[len(STAMP_PREFIX) :]: int(v) for k, v in rows if k.startswith(STAMP_PREFIX)}

    def _without_hidden(self, run: Callable[[], T]) -> T:
        """``run()`` (a search), again if the documents a sync holds hidden changed while it
        ran: one that read them before a swap and searched after it would miss both
        versions of the file (or, as a version is staged, see both)."""
        before = self._hidden_documents()
        out = run()
        for _ in range(3):
            now = self._hidden_documents()
            if now == before:
                break
            before, out = now, run()
        return out

    def _hidden_documents(self) -> list[int]:
        """Documents no search returns (a sync's staged or replaced versions)."""
        # Literals, not parameters: SQLite uses the partial index (catalog migration 4) only
        # when it can see that the query's condition is the index's.
        rows = self._query(f"SELECT id FROM documents WHERE status IN {_HIDDEN_SQL} ORDER BY id")
        return [r[0] for r in rows]

    def _visible_page_ids(
        self, documents: list[int] | None, first: int | None, last: int | None
    ) -> list[int]:
        """Pages of documents no sync holds hidden, within a filter, read in one statement
        (a snapshot: a swap committed meanwhile is seen whole or not at all)."""
        where, args = page_filter(documents, first, last, table="p.")
        where.insert(0, f"d.status NOT IN ({','.join('?' * len(HIDDEN_STATUSES))})")
        args[:0] = HIDDEN_STATUSES
        sql = (
            "SELECT p.id FROM pages p JOIN documents d ON d.id = p.document_id WHERE "
            + " AND ".join(where)
            + " ORDER BY p.id"
        )
        return [r[0] for r in self._query(sql, args)]
