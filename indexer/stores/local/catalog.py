"""The local engine's SQLite catalog: schema, numbered migrations, reading rows as types.

The catalog is the source of truth of a collection: documents, pages (with their text layer,
image file and vector), and the collection's identity in ``meta``. Migrations are numbered
and applied in order inside a transaction, so an old collection opens with a new PageLens.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path

from indexer.stores.types import FTS_TOKENIZE, Document, Page

__all__ = [
    "DOCUMENT_COLUMNS",
    "FTS_TOKENIZE",
    "MIGRATIONS",
    "PAGE_COLUMNS",
    "SCHEMA_VERSION",
    "Document",
    "Page",
    "connect",
    "describe_unopenable",
    "migrate",
    "open_read_only_snapshot",
    "page_filter",
    "page_from_row",
]

SCHEMA_VERSION = 4

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
    # 3: each page's words with their boxes on its image (indexer.pages.words.encode_words);
    # no row = none recorded (pages stored before this migration, until check --repair)
    """
    CREATE TABLE IF NOT EXISTS page_words (
        page_id INTEGER PRIMARY KEY REFERENCES pages(id) ON DELETE CASCADE,
        data BLOB NOT NULL
    );
    """,
    # 4: the documents a sync holds hidden (staged, replaced), read before every search: a
    # partial index keeps that read free of a scan of every document row
    """
    CREATE INDEX IF NOT EXISTS documents_hidden ON documents(status)
        WHERE status IN ('staged', 'replaced');
    """,
]


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


def open_read_only_snapshot(path: Path) -> tuple[sqlite3.Connection, str | None]:
    """The catalog ``path`` of a truly read-only folder, where SQLite cannot create the WAL's
    shared-memory file, and the private folder of its copy (None: no copy was made).

    Without a WAL (closing a collection checkpoints it) the file is read as immutable; with
    one (a writer that never closed), catalog and WAL are copied to a private temporary
    folder and read there, so the last commits are seen too."""
    wal = path.with_name(path.name + "-wal")
    if not (wal.is_file() and wal.stat().st_size > 0):
        conn = sqlite3.connect(
            f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False
        )
        return conn, None
    snapshot_dir = tempfile.mkdtemp(prefix="pagelens-ro-")
    for name in (path.name, path.name + "-wal"):
        shutil.copyfile(path.parent / name, Path(snapshot_dir) / name)
    return connect(Path(snapshot_dir) / path.name, read_only=True), snapshot_dir


def describe_unopenable(path: Path) -> str:
    """Why a catalog file that exists could not be opened, in a few words."""
    try:
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute(
            "SELECT COUNT(*) FROM sqlite_master"
        ).fetchone()
        return "the catalog cannot be opened"
    except sqlite3.DatabaseError as exc:
        return f"the catalog cannot be read ({exc})"


def page_filter(
    documents: Iterable[int] | None, first: int | None, last: int | None, *, table: str = ""
) -> tuple[list[str], list]:
    """SQL conditions (to be joined with ``AND``) and their arguments for a page filter:
    document ids and a 1-based inclusive page range; ``table``: the pages table's alias
    (``"p."``) in a join. One place, so that every page query filters alike."""
    where: list[str] = []
    args: list = []
    if documents is not None:
        docs = [int(d) for d in documents]
        where.append(f"{table}document_id IN ({','.join('?' * len(docs)) or 'NULL'})")
        args.extend(docs)
    if first is not None:
        where.append(f"{table}number >= ?")
        args.append(first)
    if last is not None:
        where.append(f"{table}number <= ?")
        args.append(last)
    return where, args
