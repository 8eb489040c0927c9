"""The library's front door: PageLens owns a collection and its (lazily loaded) model."""

from __future__ import annotations

import pytest

import indexer
from indexer.errors import CollectionError
from indexer.model import FakeEmbedder
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


def test_names_and_paths_follow_the_cli_rule(tmp_path, monkeypatch, _isolated_home):
    """A bare name is a named collection even beside a same-named folder in the current
    folder; text that looks like a path, and any Path object, is that folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "papers").mkdir()  # a folder that happens to share the name
    (tmp_path / "papers" / "notes.txt").write_text("not a collection")

    with PageLens("papers", embedder=FakeEmbedder()) as named:
        assert named.store.path == _isolated_home / "papers"
    assert sorted(p.name for p in (tmp_path / "papers").iterdir()) == ["notes.txt"]

    for spelled in ("./mine", str(tmp_path / "abs"), "sub/dir"):
        with PageLens(spelled, embedder=FakeEmbedder()) as lens:
            assert lens.store.path.resolve() == (tmp_path / spelled).resolve()
            assert _isolated_home not in lens.store.path.resolve().parents

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with PageLens("~/c", embedder=FakeEmbedder()) as lens:
        assert lens.store.path == tmp_path / "home" / "c"

    from pathlib import Path

    with PageLens(Path("odd"), embedder=FakeEmbedder()) as lens:  # a Path is a path
        assert lens.store.path == tmp_path / "odd"
    monkeypatch.chdir(tmp_path / "papers")  # made absolute: a later chdir does not move it
    assert lens.store.path.is_absolute() and (tmp_path / "odd" / "catalog.sqlite").is_file()
    assert not (_isolated_home / "odd").exists()
