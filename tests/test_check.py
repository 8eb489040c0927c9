"""``pagelens check [--repair] [--json]``: finds each kind of damage, repairs what can be
repaired, says what cannot, and exits 0 only when the collection is healthy.

The tests that take ``coll`` run on both engines (a folder, then Milvus); damage only a
folder can suffer (SQLite, FAISS files) is tested on local collections alone."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.maintenance.check import check
from indexer.maintenance.repair import repair
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.store import VECTORS, Collection
from indexer.stores import open_collection
from indexer.stores.local.vector_index import VectorIndex
from tests.support.pdfs import TOPICS, make_text_pdf

SMALL = RenderSettings(max_pixels=64 * 28 * 28)
runner = CliRunner()


def _healthy(spec: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A healthy collection of two documents (4 + 3 pages) at ``spec``; the CLI points at
    it and its model loader gives the fake embedder."""
    from app.cli import common as cli_common

    store = open_collection(spec)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(
        [
            make_text_pdf(tmp_path / "src" / "keep.pdf", TOPICS[:4]),
            make_text_pdf(tmp_path / "src" / "gone.pdf", TOPICS[4:7]),
        ]
    )
    store.close()
    monkeypatch.setenv("PAGELENS_COLLECTION", spec)
    monkeypatch.setattr(cli_common.Options, "embedder", lambda self: FakeEmbedder())
    return spec


@pytest.fixture
def coll(store_spec, tmp_path, monkeypatch) -> str:
    """:func:`_healthy` on the test's engine (a folder, then Milvus)."""
    return _healthy(store_spec, tmp_path, monkeypatch)


@pytest.fixture
def local_coll(tmp_path, monkeypatch) -> Path:
    """:func:`_healthy` in a folder, for damage only a folder can suffer (its SQLite
    catalog, its FAISS file); a Milvus collection has neither."""
    return Path(_healthy(str(tmp_path / "coll"), tmp_path, monkeypatch))


def _pages(spec: str) -> dict[tuple[str, int], object]:
    store = open_collection(spec)
    names = {d.id: d.name for d in store.documents()}
    pages = {(names[p.document_id], p.number): p for p in store.pages()}
    store.close()
    return pages


def _orphan_image(store, key: str, data: bytes) -> None:
    """A page image that no row names (as a crash between image and row leaves)."""
    if isinstance(store, Collection):
        (store.path / key).parent.mkdir(parents=True, exist_ok=True)
        (store.path / key).write_bytes(data)
    else:
        store.images.put(key, data)
        old = time.time() - 7200  # older than the grace that spares other writers' work
        os.utime(store.images.local_path(key), (old, old))


def run_check(*args: str) -> tuple[int, dict]:
    result = runner.invoke(cli, ["check", "--json", *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.stdout)


def _sql(path: Path, sql: str, args=()) -> None:
    db = sqlite3.connect(path / "catalog.sqlite")
    with db:
        db.execute(sql, args)
    db.close()


def test_healthy_collection(coll):
    code, data = run_check()
    assert code == 0
    assert data["ok"] is True and data["problems"] == [] and data["repaired"] == []
    assert data["meta"]["model_id"] == "pagelens/fake-embedder" and data["meta"]["dim"] == "64"
    assert data["stats"] == {"documents": 2, "pages": 7, "embedded": 7}
    text = runner.invoke(cli, ["check"], catch_exceptions=False)
    assert text.exit_code == 0 and text.output.strip().endswith("ok")


def test_damage_through_the_store_is_found_and_repaired(coll, engine):
    """What any engine can suffer: an image gone (its row stays), an image without a row,
    pages that lost their vector, a document interrupted with its last page missing, and
    (Milvus, where rows are not tied to documents by a foreign key) rows of no document."""
    pages = _pages(coll)
    store = open_collection(coll)
    keep, gone = store.document("keep.pdf"), store.document("gone.pdf")
    with store.writing():
        store.image_path(pages[("keep.pdf", 2)]).unlink()
        _orphan_image(store, "pages/77/00001.png", b"png?")
        store.clear_vectors([pages[("keep.pdf", 1)].id, pages[("gone.pdf", 1)].id])
        store.remove_pages([pages[("gone.pdf", 3)].id])
        store.mark_incomplete(gone.id)
        if engine == "milvus":
            img = store.load_image(pages[("keep.pdf", 1)])
            store.add_pages(12345, [(1, "stray", img)])
    store.close()
    expected = {
        "image-missing",
        "orphan-files",
        "vectors-pending",
        "document-stuck",
    } | ({"page-orphan-rows"} if engine == "milvus" else set())

    code, data = run_check()
    assert code == 4 and data["ok"] is False
    assert {p["kind"] for p in data["problems"]} == expected
    assert all(set(p) >= {"kind", "detail"} for p in data["problems"])
    orphans = next(p for p in data["problems"] if p["kind"] == "orphan-files")
    assert "pages/77/00001.png" in orphans["files"]
    pending = next(p for p in data["problems"] if p["kind"] == "vectors-pending")
    assert pending["count"] == 2 + (engine == "milvus")

    code, data = run_check("--repair")
    assert code == 0, data
    assert data["ok"] is True and data["problems"] == []
    done = {r["kind"] for r in data["repaired"]}
    assert {"orphan-files", "image-missing", "document-stuck", "vectors-pending"} <= done
    store = open_collection(coll)
    assert store.stats().pages == 7 and store.stats().pending == 0
    assert all(d.ready for d in store.documents())
    assert store.image_path(store.page(pages[("keep.pdf", 2)].id)).is_file()
    assert {p.document_id for p in store.pages()} == {keep.id, gone.id}
    assert check(store).ok
    assert store.search_text("Westphalia", 1)[0][0] == pages[("keep.pdf", 2)].id
    store.close()


def test_every_kind_of_local_damage_is_found_and_repaired(local_coll, tmp_path):
    coll = local_coll
    store = Collection(coll)
    pages = {(p.document_id, p.number): p for p in store.pages()}
    store.close()
    # 1. a page image deleted (its source file still exists: it is rendered again)
    (coll / pages[(1, 2)].image).unlink()
    # 2. an orphan image and temp files left by a crash
    (coll / "pages" / "77").mkdir()
    (coll / "pages" / "77" / "00001.png").write_bytes(b"png?")
    (coll / "pages" / "1" / ".00009.png.abc.tmp").write_bytes(b"half")
    (coll / f"{VECTORS}.xyz.tmp").write_bytes(b"half")
    # 3. a vector of the wrong size, and pages that lost their vector
    _sql(coll, "UPDATE pages SET vector=? WHERE id=?", (b"\0" * 12, pages[(1, 1)].id))
    _sql(coll, "UPDATE pages SET vector=NULL WHERE id=?", (pages[(2, 1)].id,))
    # 4. a document stuck in 'indexing' with its last page missing
    _sql(coll, "DELETE FROM pages WHERE id=?", (pages[(2, 3)].id,))
    _sql(coll, "UPDATE documents SET status='indexing' WHERE id=2")
    # 5. a FAISS file that lies: a wrong vector, an id that does not exist
    index = VectorIndex.load(coll / VECTORS)
    index.remove([pages[(1, 3)].id])
    index.add([pages[(1, 3)].id, 999], np.eye(2, 64, dtype=np.float32))
    index.save(coll / VECTORS)

    code, data = run_check()
    assert code == 4 and data["ok"] is False
    kinds = {p["kind"] for p in data["problems"]}
    assert kinds == {
        "image-missing",
        "orphan-files",
        "vector-bad",
        "vectors-pending",
        "document-stuck",
        "faiss-orphan-ids",
        "faiss-stale-vectors",
    }
    assert all(set(p) >= {"kind", "detail"} for p in data["problems"])
    orphans = next(p for p in data["problems"] if p["kind"] == "orphan-files")
    assert orphans["count"] == 4  # the three above, and the deleted row's image

    code, data = run_check("--repair")
    assert code == 0, data
    assert data["ok"] is True and data["problems"] == []
    done = {r["kind"] for r in data["repaired"]}
    assert {
        "orphan-files",
        "vector-bad",
        "image-missing",
        "document-stuck",
        "faiss",
        "vectors-pending",
    } <= done
    store = Collection(coll)
    assert store.stats().pages == 7 and store.stats().pending == 0
    assert all(d.ready for d in store.documents())
    assert (coll / pages[(1, 2)].image).exists()
    assert not (coll / "pages" / "77").exists()
    assert check(store).ok
    store.close()


def test_missing_images_without_source_are_dropped_and_said(coll, tmp_path):
    (tmp_path / "src" / "gone.pdf").unlink()
    store = open_collection(coll)
    page = store.pages(store.document("gone.pdf").id)[1]
    store.image_path(page).unlink()
    store.close()
    code, data = run_check("--repair")
    assert code == 4  # the document is now incomplete, and that is said
    dropped = [r for r in data["repaired"] if r["kind"] == "image-missing"]
    assert dropped and "dropped 1 page" in dropped[0]["detail"]
    assert "no longer exists" in dropped[0]["detail"]
    assert {p["kind"] for p in data["problems"]} == {"document-stuck"}
    assert any(r["kind"] == "not-repaired" for r in data["repaired"])
    store = open_collection(coll)
    assert store.stats().pages == 6 and check(store).kinds() == {"document-stuck"}
    store.close()
    # indexing the file again (restored) resumes the document
    make_text_pdf(tmp_path / "src" / "gone.pdf", TOPICS[4:7])
    result = runner.invoke(
        cli, ["index", str(tmp_path / "src" / "gone.pdf")], catch_exceptions=False
    )
    assert result.exit_code == 0 and "resumed" in result.output
    assert run_check()[0] == 0


def test_unreadable_faiss_file_is_rebuilt(local_coll):
    coll = local_coll
    (coll / VECTORS).write_bytes(b"not a faiss index")
    code, data = run_check()
    assert code == 4 and [p["kind"] for p in data["problems"]] == ["faiss-unreadable"]
    code, data = run_check("--repair")
    assert code == 0 and "rebuilt" in data["repaired"][0]["detail"]
    assert len(VectorIndex.load(coll / VECTORS)) == 7


def test_pending_pages_without_a_model_are_reported(coll, monkeypatch, tmp_path):
    from app.cli import common as cli_common

    monkeypatch.setattr(cli_common.Options, "embedder", lambda self: _no_model())
    store = open_collection(coll)
    with store.writing():
        store.clear_vectors(store.page_ids(documents=[store.document("gone.pdf").id]))
    store.close()
    code, data = run_check("--repair")
    assert code == 4
    assert [p["kind"] for p in data["problems"]] == ["vectors-pending"]
    note = next(r for r in data["repaired"] if r["kind"] == "not-repaired")
    assert "3 page(s) still need vectors" in note["detail"] and "no model" in note["detail"]
    assert "huggingface" in note["detail"].lower() or "cannot load" in note["detail"].lower()


def _no_model():
    from indexer.errors import ModelNotAvailableError

    raise ModelNotAvailableError("Cannot load the GME model 'x': not found (huggingface-cli).")


def test_model_mismatch_is_a_problem(coll):
    code, data = run_check()
    assert code == 0
    result = runner.invoke(
        cli, ["--model", "other/model", "check", "--json"], catch_exceptions=False
    )
    assert result.exit_code == 4
    problems = json.loads(result.stdout)["problems"]
    assert [p["kind"] for p in problems] == ["model-mismatch"]
    assert "pagelens/fake-embedder" in problems[0]["detail"]


def test_corrupt_catalog_is_reported_not_crashed(local_coll):
    coll = local_coll
    for extra in coll.glob("catalog.sqlite-*"):
        extra.unlink()
    (coll / "catalog.sqlite").write_bytes(b"SQLite format 3\0" + b"\x07" * 4000)
    code, data = run_check("--repair")
    assert code == 4 and data["ok"] is False
    assert data["problems"][0]["kind"] == "catalog-corrupt"


def test_repair_of_a_damaged_catalog_deletes_nothing(local_coll):
    """A catalog SQLite calls damaged (here a NOT NULL column holding a NULL, which
    ``quick_check`` reports while every row still reads) is not the truth any more: the
    files it does not name may be named by the backup the user restores, so --repair
    deletes no file and changes no row."""
    coll = local_coll
    db = sqlite3.connect(coll / "catalog.sqlite")
    with db:
        db.execute("UPDATE documents SET title = NULL")
    (sql,) = db.execute("SELECT sql FROM sqlite_master WHERE name = 'documents'").fetchone()
    with db:
        db.execute("PRAGMA writable_schema = ON")
        db.execute(
            "UPDATE sqlite_master SET sql = ? WHERE name = 'documents'",
            (sql.replace("title TEXT,", "title TEXT NOT NULL,"),),
        )
    db.close()
    unnamed = coll / "pages" / "77" / "00001.png"  # no row of the damaged catalog names it
    unnamed.parent.mkdir()
    unnamed.write_bytes(b"png?")
    store = Collection(coll)
    image = coll / store.pages()[0].image
    store.close()
    image.unlink()  # a missing image whose page repair would otherwise re-render or drop

    code, data = run_check("--repair")
    assert code == 4
    assert "catalog-corrupt" in {p["kind"] for p in data["problems"]}
    assert [r["kind"] for r in data["repaired"]] == ["catalog-corrupt"]
    assert "nothing was changed" in data["repaired"][0]["detail"]
    assert unnamed.read_bytes() == b"png?"
    assert not image.exists()
    store = Collection(coll)
    assert store.stats().pages == 7
    store.close()


@pytest.mark.parametrize("engine", ["milvus"], indirect=True)  # Milvus-only behaviour
def test_repair_keeps_the_rows_of_a_document_another_writer_adds_meanwhile(coll, engine):
    """Nothing locks a Milvus collection: another machine may add a document and its pages
    between repair's listing of the documents and its listing of the pages. Those rows are
    not orphans (their document row was written first): repair must not delete them, nor
    trip over the document's failed-page placeholder."""
    from PIL import Image

    store, other = open_collection(coll), open_collection(coll)
    listed_first = store.documents
    state = {"added": None}

    def documents():
        docs = listed_first()
        if state["added"] is None:  # the other writer, right after this listing
            doc = other.add_document(
                name="new.pdf",
                path="/elsewhere/new.pdf",
                sha256="ab" * 32,
                kind="pdf",
                page_count=2,
            )
            other.add_pages(doc.id, [(1, "arrived meanwhile", Image.new("RGB", (28, 28)))])
            other.add_failed_page(doc.id, 2, "damaged page")
            state["added"] = doc.id
        return docs

    store.documents = documents  # type: ignore[method-assign]
    report = repair(store, embedder=FakeEmbedder())
    store.close()
    doc_id = state["added"]
    assert doc_id is not None
    assert "page-orphan-rows" not in {r["kind"] for r in report.repaired}
    assert other.stored_page_numbers(doc_id) == {1}
    assert other.document(doc_id).pages_stored == 1
    assert [f["page"] for f in other.failed_pages(doc_id)] == [2]
    other.close()


@pytest.mark.parametrize("engine", ["milvus"], indirect=True)  # Milvus-only behaviour
def test_repair_through_the_wrong_image_location_drops_and_deletes_nothing(
    coll, engine, tmp_path, monkeypatch
):
    """PAGELENS_MILVUS_IMAGES overrides the recorded image location (a shared mount at
    another path on this machine). Left set for another collection, it shows this one
    none of its images: repair must not take that for loss, dropping the pages whose source
    is gone, nor delete the images it finds there (another collection's)."""
    elsewhere = tmp_path / "other-collections-images"
    theirs = elsewhere / "pages" / "55" / "00001.png"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b"another collection's page")
    old = time.time() - 7200  # past the grace that spares young images
    os.utime(theirs, (old, old))
    (tmp_path / "src" / "gone.pdf").unlink()
    monkeypatch.setenv("PAGELENS_MILVUS_IMAGES", str(elsewhere))

    code, data = run_check()
    missing = next(p for p in data["problems"] if p["kind"] == "image-missing")
    assert missing["count"] == 7 and "none of the collection's images" in missing["detail"]
    code, data = run_check("--repair")
    assert code == 4
    assert theirs.read_bytes() == b"another collection's page"
    assert not any("dropped" in r["detail"] for r in data["repaired"]), data["repaired"]
    monkeypatch.delenv("PAGELENS_MILVUS_IMAGES")
    store = open_collection(coll)
    assert store.stats().pages == 7
    store.close()


def test_no_collection_is_an_error(store_spec, monkeypatch):
    from indexer.stores import spec_exists

    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    for args in (["check"], ["check", "--repair"]):
        result = runner.invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 1 and "No collection" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not spec_exists(store_spec)


def test_repair_in_the_library(coll, tmp_path):
    """The same through the library: extra page rows beyond the page count are dropped."""
    store = open_collection(coll)
    keep = store.document("keep.pdf").id
    with store.writing():
        img = store.load_image(store.pages(keep)[0])
        store.add_pages(keep, [(9, "stray", img)])
    assert check(store).kinds() == {"page-count", "vectors-pending"}
    report = repair(store, embedder=FakeEmbedder())
    assert report.ok, report.as_dict()
    assert store.stored_page_numbers(keep) == {1, 2, 3, 4}
    store.close()
