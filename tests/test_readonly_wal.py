"""A collection read from a read-only copy sees its last commits (issue #15).

SQLite keeps recent commits in ``catalog.sqlite-wal`` until a checkpoint. In a truly
read-only folder it cannot create the WAL's shared-memory file, and reading the catalog as
immutable would silently miss those commits. Closing a collection now folds the WAL in,
and a read-only open of a folder whose WAL was never folded reads a private copy of both.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.store import CATALOG, Collection
from indexer.stores.local import catalog


class _NoShm:
    """A read-only connection as SQLite gives it in a read-only folder: the first query
    fails, since the WAL's ``-shm`` file cannot be created."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def execute(self, *args, **kwargs):
        raise sqlite3.OperationalError("unable to open database file")

    def close(self) -> None:
        self.conn.close()


def _read_only(folder: Path, monkeypatch) -> None:
    real_access, real_connect = os.access, catalog.connect

    def access(path, mode, *args, **kwargs):
        if Path(path) == folder and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    def connect(path, *, read_only=False):
        conn = real_connect(path, read_only=read_only)
        return _NoShm(conn) if read_only and Path(path).parent == folder else conn

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(catalog, "connect", connect)


@pytest.fixture
def writer(tmp_path, make_pdf):
    store = Collection(tmp_path / "live")
    Indexer(store, FakeEmbedder()).add([make_pdf("a.pdf", ["alpha", "beta", "gamma"])])
    Indexer(store, FakeEmbedder()).add([make_pdf("b.pdf", ["delta"])])
    yield store
    store.close()


def test_read_only_copy_with_an_unfolded_wal_shows_the_last_commits(writer, tmp_path, monkeypatch):
    wal = writer.path / (CATALOG + "-wal")
    assert wal.is_file() and wal.stat().st_size > 0  # the writer is still open
    copy = tmp_path / "copy"
    shutil.copytree(writer.path, copy, ignore=shutil.ignore_patterns("*-shm"))
    before = sorted(os.listdir(copy))
    _read_only(copy, monkeypatch)
    reader = Collection(copy)
    try:
        assert reader.read_only
        assert sorted(d.name for d in reader.documents()) == ["a.pdf", "b.pdf"]
        assert reader.stats().pages == 4 and reader.stats().pending == 0
        assert reader.search_text("delta", 1)
    finally:
        reader.close()
    assert sorted(os.listdir(copy)) == before  # nothing written into the read-only copy


def test_closing_folds_the_wal_into_the_catalog(writer, tmp_path):
    writer.close()
    wal = writer.path / (CATALOG + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copyfile(writer.path / CATALOG, bare / CATALOG)  # the catalog file alone
    conn = sqlite3.connect(f"file:{bare / CATALOG}?mode=ro&immutable=1", uri=True)
    assert conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0] == 2
    conn.close()
