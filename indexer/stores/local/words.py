"""The local engine's word boxes: one row of ``page_words`` (catalog migration 3) per page,
holding :func:`indexer.pages.words.encode_words`'s bytes. Rows go with their page (``ON
DELETE CASCADE``); a page without a row has none recorded (made before word boxes).
A mixin of :class:`indexer.stores.local.collection.LocalCollection`."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable, Sequence

from indexer.errors import DocumentNotFoundError
from indexer.pages.words import Word, decode_words, encode_words


class LocalWords:
    """Word boxes in the catalog; uses the collection's connection and mutex."""

    _db: sqlite3.Connection
    _mutex: threading.RLock

    def _require_lock(self) -> None:
        raise NotImplementedError  # WriteLock's, earlier in the collection's bases

    def _write_words(self, rows: Sequence[tuple[int, Sequence[Word] | None]]) -> None:
        """Inside the caller's transaction: each page's words replaced (None: dropped, for
        a page re-stored without words must not keep boxes of its old image)."""
        for page_id, words in rows:
            if words is None:
                self._db.execute("DELETE FROM page_words WHERE page_id=?", (page_id,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO page_words(page_id, data) VALUES(?, ?)",
                    (page_id, encode_words(words)),
                )

    def page_words(self, page_id: int) -> list[Word] | None:
        return self.page_words_many([page_id]).get(int(page_id))

    def page_words_many(self, page_ids: Iterable[int]) -> dict[int, list[Word]]:
        ids = [int(i) for i in page_ids]
        out: dict[int, list[Word]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            try:
                with self._mutex:
                    rows = self._db.execute(
                        f"SELECT page_id, data FROM page_words WHERE page_id IN ({marks})", chunk
                    ).fetchall()
            except sqlite3.OperationalError as exc:
                if "no such table" in str(exc):
                    return {}  # an old collection opened read-only: never migrated
                raise
            for page_id, data in rows:
                out[int(page_id)] = decode_words(bytes(data))
        return out

    def set_page_words(self, page_id: int, words: Sequence[Word]) -> None:
        self._require_lock()
        with self._mutex, self._db:
            if not self._db.execute("SELECT 1 FROM pages WHERE id=?", (int(page_id),)).fetchone():
                raise DocumentNotFoundError(f"No page {page_id} to record words of.")
            self._write_words([(int(page_id), list(words))])
