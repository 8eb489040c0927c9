"""The words text search indexes and queries, engine-neutral.

Both engines match the word forms SQLite FTS5's tokenizer makes
(:data:`indexer.stores.types.FTS_TOKENIZE`: lower case, accents folded, split on non-word
characters, Porter-stemmed): the local engine indexes with it, the Milvus engine feeds its
BM25 field the terms :func:`text_terms` makes, and the highlights above the store
(:mod:`retriever.evidence`) stem query and page words with :func:`word_terms`, so a box is
drawn exactly where text search would have matched. Imports only :mod:`indexer.stores.types`,
so every layer may use it without naming an engine.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from indexer.stores.types import FTS_TOKENIZE

_TOKENIZER = threading.local()  # one in-memory FTS5 table per thread


def _connection() -> sqlite3.Connection:
    con = getattr(_TOKENIZER, "con", None)
    if con is None:
        con = sqlite3.connect(":memory:", check_same_thread=False)
        con.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{FTS_TOKENIZE}')")
        con.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, 'instance')")
        _TOKENIZER.con = con
    return con


def text_terms(text: str) -> str:
    """The terms of ``text``, space-separated, in text order: ``churned`` is ``churn``,
    ``b.pdf`` is ``b pdf``. Read back from an in-memory FTS5 table through its
    ``fts5vocab`` view, so they are exactly what the local engine's index holds."""
    if not text or not text.strip():
        return ""
    return " ".join(word_terms([text])[0])


def word_terms(words: Sequence[str]) -> list[list[str]]:
    """Each string's terms (a word may make none, as ``--``, or several, as ``b.pdf``), in
    one round trip: one FTS5 row per string, read back by row and offset. Callers stemming
    many page words at once (highlights for 50 hits) pay one insert, not one per word."""
    out: list[list[str]] = [[] for _ in words]
    rows = [(i + 1, w.replace("\x00", " ")) for i, w in enumerate(words) if w and w.strip()]
    if not rows:
        return out
    con = _connection()
    with con:
        con.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", rows)
        found = con.execute("SELECT doc, term FROM v ORDER BY doc, offset").fetchall()
        con.execute("DELETE FROM t")
    for doc, term in found:
        out[doc - 1].append(term)
    return out
