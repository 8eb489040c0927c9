"""``pagelens check [--repair] [--json]``: finds each kind of damage, repairs what can be
repaired, says what cannot, and exits 0 only when the collection is healthy."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.embedder import FakeEmbedder
from indexer.integrity import check, repair
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.store import VECTORS, Collection
from indexer.vectors import VectorIndex
from tests.pdfs import TOPICS, make_text_pdf

SMALL = RenderSettings(max_pixels=64 * 28 * 28)
runner = CliRunner()


@pytest.fixture
def coll(tmp_path, monkeypatch) -> Path:
    """A healthy collection of two documents (4 + 3 pages); the CLI points at it and its
    model loader gives the fake embedder."""
    from app import cli_common

    path = tmp_path / "coll"
    store = Collection(path)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(
        [
            make_text_pdf(tmp_path / "src" / "keep.pdf", TOPICS[:4]),
            make_text_pdf(tmp_path / "src" / "gone.pdf", TOPICS[4:7]),
        ]
    )
    store.close()
    monkeypatch.setenv("PAGELENS_COLLECTION", str(path))
    monkeypatch.setattr(cli_common.Options, "embedder", lambda self: FakeEmbedder())
    return path


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


def test_every_kind_of_damage_is_found_and_repaired(coll, tmp_path):
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
    store = Collection(coll)
    page = store.pages(2)[1]
    store.close()
    (coll / page.image).unlink()
    code, data = run_check("--repair")
    assert code == 4  # the document is now incomplete, and that is said
    dropped = [r for r in data["repaired"] if r["kind"] == "image-missing"]
    assert dropped and "dropped 1 page" in dropped[0]["detail"]
    assert "no longer exists" in dropped[0]["detail"]
    assert {p["kind"] for p in data["problems"]} == {"document-stuck"}
    assert any(r["kind"] == "not-repaired" for r in data["repaired"])
    store = Collection(coll)
    assert store.stats().pages == 6 and check(store).kinds() == {"document-stuck"}
    store.close()
    # indexing the file again (restored) resumes the document
    make_text_pdf(tmp_path / "src" / "gone.pdf", TOPICS[4:7])
    result = runner.invoke(
        cli, ["index", str(tmp_path / "src" / "gone.pdf")], catch_exceptions=False
    )
    assert result.exit_code == 0 and "resumed" in result.output
    assert run_check()[0] == 0


def test_unreadable_faiss_file_is_rebuilt(coll):
    (coll / VECTORS).write_bytes(b"not a faiss index")
    code, data = run_check()
    assert code == 4 and [p["kind"] for p in data["problems"]] == ["faiss-unreadable"]
    code, data = run_check("--repair")
    assert code == 0 and "rebuilt" in data["repaired"][0]["detail"]
    assert len(VectorIndex.load(coll / VECTORS)) == 7


def test_pending_pages_without_a_model_are_reported(coll, monkeypatch, tmp_path):
    from app import cli_common

    monkeypatch.undo()
    monkeypatch.setenv("PAGELENS_COLLECTION", str(coll))
    monkeypatch.setattr(cli_common.Options, "embedder", lambda self: _no_model())
    _sql(coll, "UPDATE pages SET vector=NULL WHERE document_id=2")
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


def test_corrupt_catalog_is_reported_not_crashed(coll):
    for extra in coll.glob("catalog.sqlite-*"):
        extra.unlink()
    (coll / "catalog.sqlite").write_bytes(b"SQLite format 3\0" + b"\x07" * 4000)
    code, data = run_check("--repair")
    assert code == 4 and data["ok"] is False
    assert data["problems"][0]["kind"] == "catalog-corrupt"


def test_no_collection_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PAGELENS_COLLECTION", str(tmp_path / "nothing"))
    result = runner.invoke(cli, ["check"], catch_exceptions=False)
    assert result.exit_code == 1 and "No collection" in result.output
    assert not (tmp_path / "nothing").exists()


def test_repair_in_the_library(coll, tmp_path):
    """The same through the library: extra page rows beyond the page count are dropped."""
    store = Collection(coll)
    with store.writing():
        img = store.load_image(store.pages(1)[0])
        store.add_pages(1, [(9, "stray", img)])
    assert check(store).kinds() == {"page-count", "vectors-pending"}
    report = repair(store, embedder=FakeEmbedder())
    assert report.ok, report.as_dict()
    assert store.stored_page_numbers(1) == {1, 2, 3, 4}
    store.close()
