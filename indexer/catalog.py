"""The SQLite catalog: schema, numbered migrations and the row types read from it.

The catalog is the source of truth of a collection: documents, pages (with their text layer,
image file and vector), and the collection's identity in ``meta``. Migrations are numbered
and applied in order inside a transaction, so an old collection opens with a new PageLens.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2

#: How the full-text index splits and stems words (migration 1 created ``pages_fts`` with
#: it). The Milvus engine feeds its BM25 field the words this tokenizer makes, so both
#: engines match the same word forms (``churned`` finds ``churn``).
FTS_TOKENIZE = "porter unicode61 remove_diacritics 2"

MIGRATIONS: list[str] = [
    # 1: documents, pages (vector NULL = not embedded yet), meta, full-text index
    """
    CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS documents (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        page_count INTEGER NOT NULL,
        title TEXT,
        bytes INTEGER NOT NULL DEFAULT 0,
        status TEXT NOT NULL DEFAULT 'indexing',
        added_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS documents_name ON documents(name);
    CREATE TABLE IF NOT EXISTS pages (
        id INTEGER PRIMARY KEY,
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        text TEXT NOT NULL DEFAULT '',
        image TEXT NOT NULL,
        image_sha256 TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        vector BLOB,
        embedded_at TEXT,
        UNIQUE(document_id, number)
    );
    CREATE INDEX IF NOT EXISTS pages_pending ON pages(id) WHERE vector IS NULL;
    CREATE INDEX IF NOT EXISTS pages_image_sha ON pages(image_sha256);
    CREATE VIRTUAL TABLE IF NOT EXISTS pages_fts USING fts5(
        text, content='pages', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER IF NOT EXISTS pages_ai AFTER INSERT ON pages BEGIN
        INSERT INTO pages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER IF NOT EXISTS pages_ad AFTER DELETE ON pages BEGIN
        INSERT INTO pages_fts(pages_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER IF NOT EXISTS pages_au AFTER UPDATE OF text ON pages BEGIN
        INSERT INTO pages_fts(pages_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO pages_fts(rowid, text) VALUES (new.id, new.text);
    END;
    """,
    # 2: placeholders of pages that failed to render (no image, no vector; the reason kept),
    # so one bad page does not refuse a whole document and 'check --repair' can retry it
    """
    CREATE TABLE IF NOT EXISTS failed_pages (
        document_id INTEGER NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
        number INTEGER NOT NULL,
        reason TEXT NOT NULL,
        failed_at TEXT NOT NULL,
        PRIMARY KEY(document_id, number)
    );
    """,
]


@dataclass(frozen=True)
class Document:
    """A file in a collection. ``status`` is ``indexing`` until every page is stored."""

    id: int
    name: str
    path: str
    sha256: str
    kind: str
    page_count: int
    title: str | None
    bytes: int
    status: str
    added_at: str
    pages_stored: int = 0
    pages_embedded: int = 0

    @property
    def ready(self) -> bool:
        return self.status == "ready"

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "path": self.path,
            "pages": self.page_count,
            "pages_embedded": self.pages_embedded,
            "sha256": self.sha256,
            "kind": self.kind,
            "title": self.title,
            "bytes": self.bytes,
            "status": self.status,
            "added_at": self.added_at,
        }


@dataclass(frozen=True)
class Page:
    """One stored page; ``image`` is a path relative to the collection folder."""

    id: int
    document_id: int
    number: int
    text: str
    image: str
    image_sha256: str
    width: int
    height: int
    embedded: bool


DOCUMENT_COLUMNS = (
    "d.id, d.name, d.path, d.sha256, d.kind, d.page_count, d.title, d.bytes, d.status, d.added_at"
)
PAGE_COLUMNS = (
    "p.id, p.document_id, p.number, p.text, p.image, p.image_sha256, p.width, p.height, "
    "p.vector IS NOT NULL"
)


def page_from_row(row: tuple) -> Page:
    id_, document_id, number, text, image, sha256, width, height, embedded = row[:9]
    return Page(id_, document_id, number, text, image, sha256, width, height, bool(embedded))


def connect(path: Path, *, read_only: bool = False) -> sqlite3.Connection:
    """Open the catalog with the settings every connection needs (WAL, foreign keys)."""
    if read_only:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=30
        )
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Apply the migrations this catalog has not seen yet."""
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    for number, script in enumerate(MIGRATIONS, start=1):
        if number <= current:
            continue
        with conn:
            conn.executescript("BEGIN;" + script + f"PRAGMA user_version={number};COMMIT;")
