"""HTML, Markdown, plain text and the formats MuPDF opens itself (EPUB...), indexed from
real files (tests/data/markup, see tests/data/README.md): true page counts, searchable text,
the original file's SHA-256 as identity, its own name and kind, local images only and no
network, and refusals by name with a reason."""

from __future__ import annotations

import hashlib
import shutil
import socket
from pathlib import Path

import pytest

from indexer.errors import DocumentError
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings, extract_text, inspect_document, render_pages
from indexer.pages.mupdf import pymupdf
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever import Retriever

DATA = Path(__file__).parent / "data" / "markup"
SMALL = RenderSettings(max_pixels=64 * 28 * 28)


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    """A folder of the real files (copied: the HTML's images beside it)."""
    folder = tmp_path / "docs"
    shutil.copytree(DATA, folder)
    return folder


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list:
    attempts: list = []

    def refuse(self, address):
        attempts.append(address)
        raise AssertionError(f"outbound connection to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def test_kinds_page_counts_and_text(docs: Path, no_network: list) -> None:
    epub = docs / "live-manual.en.epub"
    info = inspect_document(epub, settings=SMALL)
    with pymupdf.open(epub) as book:  # the reader's own page count
        assert info.page_count == book.page_count > 100
    assert (info.kind, info.title) == ("epub", "Live Systems Manual")
    html = inspect_document(docs / "libxslt" / "libxslt-templates.html", settings=SMALL)
    assert html.kind == "html" and html.page_count > 1
    assert html.title == "Module templates from libxslt"
    md = inspect_document(docs / "pyyaml-README.md", settings=SMALL)
    txt = inspect_document(docs / "dpkg-triggers.txt", settings=SMALL)
    assert (md.kind, txt.kind) == ("markdown", "text") and txt.page_count > 3
    for described in (info, html, md, txt):
        assert described.sha256 == hashlib.sha256(described.path.read_bytes()).hexdigest()
    pages = list(render_pages(docs / "dpkg-triggers.txt", settings=SMALL))
    assert len(pages) == txt.page_count and "dpkg trigger" in pages[0].text
    assert "```" not in extract_text(docs / "pyyaml-README.md", 1)
    assert "yaml.safe_load" in extract_text(docs / "pyyaml-README.md", 1)
    assert not no_network


def test_html_shows_local_images_only(docs: Path, no_network: list) -> None:
    page = docs / "libxslt" / "libxslt-templates.html"
    remote = docs / "libxslt" / "remote.html"
    remote.write_text(
        '<html><body><p>Quarterly figures</p><img src="http://203.0.113.9/x.png">'
        '<img src="https://203.0.113.9/y.png"><img src="file:///etc/hostname">'
        '<img src="../pyyaml-README.md"><img src="/etc/hostname"><img src="escape.png">'
        '<img src="home.png">'
        '<link rel="stylesheet" href="http://203.0.113.9/s.css"></body></html>'
    )
    (docs / "libxslt" / "escape.png").symlink_to(docs / "outside.png")
    shutil.copy(docs / "libxslt" / "home.png", docs / "outside.png")
    from indexer.pages.markup import layout

    pdf, _ = layout(page, "html", SMALL)
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        images = sum(len(p.get_images()) for p in doc)
    assert images >= 4  # left, up, home, right.png beside it; the ../ logos are not read
    pdf, _ = layout(remote, "html", SMALL)
    with pymupdf.open(stream=pdf, filetype="pdf") as doc:
        assert len(doc[0].get_images()) == 1 and "Quarterly" in doc[0].get_text()
    assert not no_network


def test_index_search_identity_and_listing(docs: Path, tmp_path: Path, no_network: list) -> None:
    store = open_collection(str(tmp_path / "collection"))
    try:
        embedder = FakeEmbedder()
        wanted = [docs / "libxslt" / "libxslt-templates.html", docs / "pyyaml-README.md"]
        wanted += [docs / "dpkg-triggers.txt", docs / "live-manual.en.epub"]
        report = Indexer(store, embedder, settings=SMALL).add(wanted)
        assert [f.status for f in report.files] == ["added"] * 4
        listed = {d.name: d for d in store.documents()}
        assert {n: d.kind for n, d in listed.items()} == {
            "libxslt-templates.html": "html",
            "pyyaml-README.md": "markdown",
            "dpkg-triggers.txt": "text",
            "live-manual.en.epub": "epub",
        }
        for path in wanted:
            doc = listed[path.name]
            assert doc.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
            assert doc.page_count == inspect_document(path, settings=SMALL).page_count
        hits = Retriever(embedder, store).search("interest triggers aggregated", 3, mode="text")
        assert hits and hits[0].document == "dpkg-triggers.txt"
        hits = Retriever(embedder, store).search("CLoader LibYAML bindings", 3, mode="text")
        assert hits[0].document == "pyyaml-README.md"
        copy = tmp_path / "renamed-notes.md"
        copy.write_bytes((docs / "pyyaml-README.md").read_bytes())
        again = Indexer(store, embedder, settings=SMALL).add([copy, docs / "dpkg-triggers.txt"])
        assert [f.status for f in again.files] == ["skipped", "skipped"]
        assert len(store.documents()) == 4
    finally:
        store.close()
    assert not no_network


def test_refusals_by_name(tmp_path: Path) -> None:
    odd = tmp_path / "notes.xyz"
    odd.write_text("plain words")
    with pytest.raises(DocumentError) as refused:
        inspect_document(odd)
    assert refused.value.reason == "unsupported" and "notes.xyz" in str(refused.value)
    fake = tmp_path / "book.epub"
    fake.write_text("<html>404 not found</html>")
    with pytest.raises(DocumentError) as refused:
        inspect_document(fake)
    assert refused.value.reason == "damaged" and "book.epub" in str(refused.value)
    binary = tmp_path / "data.txt"
    binary.write_bytes(b"abc\x00\x01\x02" * 10)
    with pytest.raises(DocumentError) as refused:
        inspect_document(binary)
    assert refused.value.reason == "unsupported"


def test_huge_text_is_refused_by_size_before_layout(tmp_path: Path, monkeypatch) -> None:
    from indexer.pages import markup

    big = tmp_path / "big.txt"
    big.write_text("word " * 1000)
    monkeypatch.setattr(markup, "MAX_MARKUP_BYTES", 1000)
    monkeypatch.setattr(markup, "markdown_html", lambda text: pytest.fail("laid out"))
    monkeypatch.setattr(markup, "text_html", lambda text: pytest.fail("laid out"))
    with pytest.raises(DocumentError) as refused:
        inspect_document(big)
    assert refused.value.reason == "too-large" and "big.txt" in str(refused.value)


def test_text_mentioning_pdf_magic_stays_text(tmp_path: Path) -> None:
    note = tmp_path / "note.txt"
    note.write_text("A PDF file starts with %PDF-1.7 and ends with %%EOF.\n")
    info = inspect_document(note, settings=SMALL)
    assert (info.kind, info.page_count) == ("text", 1)
    assert "%PDF-1.7" in extract_text(note, 1)
