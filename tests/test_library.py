"""The library's front door: PageLens owns a collection and its (lazily loaded) model."""

from __future__ import annotations

import pytest

import indexer
from indexer.embedder import FakeEmbedder
from indexer.errors import CollectionError
from pagelens import PageLens


@pytest.fixture
def papers(make_pdf, tmp_path):
    folder = tmp_path / "papers"
    make_pdf("bees.pdf", ["Honey bees perform a waggle dance.", "Hive temperature"], folder)
    make_pdf("rust.pdf", ["The borrow checker rejects aliasing.", "Lifetimes"], folder)
    return folder


def test_three_line_happy_path_with_an_injected_model(papers, _isolated_home):
    fake = FakeEmbedder(dim=32)
    lens = PageLens("papers", embedder=fake)
    report = lens.index(papers)  # one path, not only a list
    assert report.pages_stored == 4 and report.pages_embedded == 4 and not report.refused
    assert lens.store.path == _isolated_home / "papers"
    # visual (the default) embeds the question on the query side; the fake's text and image
    # spaces are unrelated, so only the shape of the answer is checked here
    assert len(lens.search("waggle dance of honey bees", k=2)) == 2
    assert fake.calls[-1] == ("texts", 1)
    hits = lens.search("waggle dance of honey bees", k=2, mode="text")
    assert [(h.document, h.page) for h in hits][0] == ("bees.pdf", 1)
    assert [d.name for d in lens.documents()] == ["bees.pdf", "rust.pdf"]
    messages = lens.prompt("waggle?", hits)
    assert messages[-1]["role"] == "user" and "bees.pdf, p. 1" in str(messages)
    assert "waggle" in lens.prompt("waggle?", hits, format="markdown")
    lens.remove("rust.pdf")
    assert [d.name for d in lens.documents()] == ["bees.pdf"]
    lens.close()


def test_model_loads_on_first_need_only(papers, monkeypatch):
    loads: list[dict] = []

    def fake_load(**kwargs):
        loads.append(kwargs)
        return FakeEmbedder(dim=16)

    monkeypatch.setattr(indexer, "load_embedder", fake_load)
    with PageLens("lazy", model="some/model", device="cpu", max_image_tokens=256) as lens:
        lens.index([papers], text_only=True)
        assert lens.search("borrow checker", mode="text")[0].document == "rust.pdf"
        assert loads == []  # text-only indexing and text search never load the model
        assert lens.store.stats().pending == 4
        assert lens.embed_pending() == 4
        assert loads == [
            {"model": "some/model", "device": "cpu", "dtype": None, "max_image_tokens": 256}
        ]
        assert lens.search("borrow checker", mode="hybrid")[0].document == "rust.pdf"
        assert len(loads) == 1


def test_bad_arguments_are_refused_clearly(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        PageLens(embedder=FakeEmbedder(), model="x")
    lens = PageLens(tmp_path / "c", embedder=FakeEmbedder())
    with pytest.raises(ValueError, match="unknown prompt format"):
        lens.prompt("q", [], format="pdf")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CollectionError, match="not a folder"):
        PageLens(tmp_path / "file")
