"""The formats MuPDF opens itself (SVG, FB2, CBZ) from real files (tests/data/native, see
tests/data/README.md), and one file of each family (Office, HTML with a local image, EPUB)
through both engines: the same page counts, names, kinds and searchable text on the local
folder and on Milvus."""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings, extract_text, inspect_document, render_pages
from indexer.pages.mupdf import pymupdf
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever import Retriever

DATA = Path(__file__).parent / "data"
NATIVE = DATA / "native"
SMALL = RenderSettings(max_pixels=64 * 28 * 28)
#: The real images a comic-book archive is made of here, in page order.
COMIC = ["youtube-stream-share.png", "full-white-stripe.jpg", "youtube-stream-status.png"]


@pytest.fixture
def comic(tmp_path: Path) -> Path:
    """A CBZ: what a comic-book archive is, a zip of real images (stored, as tools write)."""
    path = tmp_path / "nodejs-screens.cbz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for number, name in enumerate(COMIC, 1):
            archive.write(NATIVE / name, f"{number:03d}-{name}")
    return path


def _reader_pages(path: Path, filetype: str) -> int:
    """The page count MuPDF's own reader gives the file, opened as it comes."""
    with pymupdf.open(path, filetype=filetype) as doc:
        return doc.page_count


def test_svg_fb2_and_cbz_from_real_files(comic: Path) -> None:
    svg, fb2 = NATIVE / "postgresql-dependencies.svg", NATIVE / "nodejs-dgram.fb2"
    described = {p: inspect_document(p, settings=SMALL) for p in (svg, fb2, comic)}
    assert [d.kind for d in described.values()] == ["svg", "fb2", "cbz"]
    assert described[svg].page_count == _reader_pages(svg, "svg") == 1
    assert described[fb2].page_count == _reader_pages(fb2, "fb2") > 5
    assert described[comic].page_count == _reader_pages(comic, "cbz") == len(COMIC)
    for path, info in described.items():
        assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "postgresql-client:all" in extract_text(svg, 1, settings=SMALL)
    assert "UDP/datagram sockets" in extract_text(fb2, 1, settings=SMALL)
    last = extract_text(fb2, described[fb2].page_count, settings=SMALL)
    assert last and last != extract_text(fb2, 1, settings=SMALL)
    pages = list(render_pages(comic, settings=SMALL))
    assert [p.number for p in pages] == [1, 2, 3] and all(p.text == "" for p in pages)
    for page, name in zip(pages, COMIC, strict=True):  # each page is its own image's shape
        with pymupdf.open(NATIVE / name) as image:
            rect = image[0].rect
        assert page.width_pt / page.height_pt == pytest.approx(rect.width / rect.height, 0.02)
        assert page.image.getextrema() != ((255, 255),) * 3  # something drawn


def test_native_files_index_and_search(comic: Path, tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("postgresql-dependencies.svg", "nodejs-dgram.fb2"):
        shutil.copy(NATIVE / name, folder / name)
    shutil.copy(comic, folder / comic.name)
    store = open_collection(str(tmp_path / "c"))
    try:
        embedder = FakeEmbedder()
        report = Indexer(store, embedder, settings=SMALL).add([folder])
        assert sorted(f.status for f in report.files) == ["added"] * 3
        listed = {d.name: (d.kind, d.page_count) for d in store.documents()}
        assert listed == {
            "postgresql-dependencies.svg": ("svg", 1),
            "nodejs-dgram.fb2": ("fb2", _reader_pages(folder / "nodejs-dgram.fb2", "fb2")),
            "nodejs-screens.cbz": ("cbz", 3),
        }
        retriever = Retriever(embedder, store)
        hits = retriever.search("postgresql-client M-A:foreign", 3, mode="text")
        assert hits[0].document == "postgresql-dependencies.svg"
        hits = retriever.search("UDP datagram sockets node:dgram", 3, mode="text")
        assert (hits[0].document, hits[0].page) == ("nodejs-dgram.fb2", 1)
        again = Indexer(store, embedder, settings=SMALL).add([folder / "nodejs-dgram.fb2"])
        assert [f.status for f in again.files] == ["skipped"]
    finally:
        store.close()


def test_office_html_and_epub_are_the_same_on_both_engines(
    open_store, engine: str, tmp_path: Path
) -> None:
    """One file of each family through a whole index and a text search, on the local
    engine and on Milvus: both must give the truth computed without any store."""
    folder = tmp_path / "docs"
    folder.mkdir()
    shutil.copy(DATA / "office" / "example.docx", folder / "example.docx")
    shutil.copytree(DATA / "markup" / "libxslt", folder / "libxslt")
    shutil.copy(DATA / "markup" / "live-manual.en.epub", folder / "live-manual.en.epub")
    files = {
        "example.docx": ("docx", folder / "example.docx"),
        "libxslt-templates.html": ("html", folder / "libxslt" / "libxslt-templates.html"),
        "live-manual.en.epub": ("epub", folder / "live-manual.en.epub"),
    }
    truth = {n: (k, inspect_document(p, settings=SMALL).page_count) for n, (k, p) in files.items()}
    store = open_store()
    embedder = FakeEmbedder()
    report = Indexer(store, embedder, settings=SMALL).add([p for _k, p in files.values()])
    assert [f.status for f in report.files] == ["added"] * 3, report.files
    docs = {d.name: d for d in store.documents()}
    assert {n: (d.kind, d.page_count) for n, d in docs.items()} == truth, engine
    for name, (_kind, path) in files.items():
        assert docs[name].sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert docs[name].ready and docs[name].pages_stored == truth[name][1]
    html_page = store.pages(docs["libxslt-templates.html"].id)[0]
    with store.load_image(html_page) as image:  # the local logos are drawn: not all white
        assert image.getextrema() != ((255, 255),) * 3
    retriever = Retriever(embedder, store)
    for query, name in [
        ("Lorem ipsum", "example.docx"),
        ("xsltEvalXPathPredicate", "libxslt-templates.html"),
        ("live-build lb config", "live-manual.en.epub"),
    ]:
        hits = retriever.search(query, 3, mode="text")
        assert hits and hits[0].document == name, (engine, query, hits)
        page_text = extract_text(files[name][1], hits[0].page, settings=SMALL).lower()
        assert query.split()[0].lower() in page_text, (engine, query, hits[0].page)
    again = Indexer(store, embedder, settings=SMALL).add([folder / "example.docx"])
    assert [f.status for f in again.files] == ["skipped"]
    assert len(store.documents()) == 3
