"""A collection written by the last release (before the restructuring) opens and searches
unchanged.

``tests/data/release-2-collection/col`` was built by that release's code (commit 2ee9d37,
``make_fixture.py`` beside it) with the fake embedder: two small PDFs, four pages. Its
``expected.json`` holds what that code listed and ranked; today's code must read the same
catalog, FAISS index and page images and give the same documents, hits and scores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.search import Retriever

FIXTURE = Path(__file__).parent / "data" / "release-2-collection"


@pytest.fixture()
def old_collection(tmp_path: Path) -> Path:
    folder = tmp_path / "col"
    shutil.copytree(FIXTURE / "col", folder)
    return folder


def _expected() -> dict:
    return json.loads((FIXTURE / "expected.json").read_text())


def test_old_collection_lists_the_same_documents(old_collection: Path) -> None:
    store = open_collection(old_collection)
    got = [
        {"id": d.id, "name": d.name, "sha256": d.sha256, "pages": d.page_count}
        for d in store.documents()
    ]
    assert got == _expected()["documents"]
    for d in store.documents():
        for page in store.pages(d.id):
            assert Path(store.image_path(page)).is_file()


@pytest.mark.parametrize("case", _expected()["searches"], ids=lambda c: f"{c['mode']}-{c['query']}")
def test_old_collection_searches_the_same(old_collection: Path, case: dict) -> None:
    retriever = Retriever(FakeEmbedder(), open_collection(old_collection))
    hits = retriever.search(case["query"], k=3, mode=case["mode"])
    got = [[h.document, h.page] for h in hits]
    assert got == [[doc, page] for doc, page, _ in case["hits"]]
    for hit, (_, _, score) in zip(hits, case["hits"], strict=True):
        assert hit.score == pytest.approx(score, abs=1e-4)


def test_old_collection_takes_new_documents(old_collection: Path, make_pdf) -> None:
    store = open_collection(old_collection)
    pdf = make_pdf("volcanoes.pdf", ["Basalt lava flows from shield volcanoes."])
    Indexer(store, FakeEmbedder()).add([pdf])
    names = [d.name for d in store.documents()]
    assert names == ["engines.pdf", "gardens.pdf", "volcanoes.pdf"]
    hits = Retriever(FakeEmbedder(), store).search("basalt lava", k=1, mode="text")
    assert [(h.document, h.page) for h in hits] == [("volcanoes.pdf", 1)]
