"""Search beyond text: image and image+text queries, hybrid fusion, odd queries, filters,
and searching right after a text-only pass (library and CLI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import DocumentNotFoundError, QueryError
from indexer.model import QUERY_INSTRUCTION, EmbedderBase, FakeEmbedder
from indexer.pages import RenderSettings, fit_image
from indexer.pipeline import Indexer
from retriever.search import Retriever
from tests.support.pdfs import TOPICS, make_image_only_pdf, make_text_pdf

runner = CliRunner()

# Small pages keep the tiny model and FakeEmbedder fast.
SMALL = RenderSettings.for_tokens(64)


def make_visual_pdf(path: Path, texts: list[str]) -> Path:
    """Pages that look different (a dark block in a different place) and read differently."""
    doc = pymupdf.open()
    for i, text in enumerate(texts):
        page = doc.new_page(width=400, height=400)
        x, y = (i % 3) * 130, (i // 3) * 130
        page.draw_rect(pymupdf.Rect(x, y, x + 120, y + 120), color=(0, 0, 0), fill=(0, 0, 0))
        page.insert_textbox(pymupdf.Rect(20, 300, 380, 390), text, fontsize=11)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


class Spy(EmbedderBase):
    """Wraps an embedder and records each call: (method, instruction, texts, image sizes)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.model_id, self.dim = inner.model_id, inner.dim
        self.max_image_tokens = inner.max_image_tokens
        self.calls: list[tuple] = []

    def embed_texts(self, texts, *, instruction=None):
        self.calls.append(("texts", instruction, list(texts), []))
        return self.inner.embed_texts(texts, instruction=instruction)

    def embed_images(self, images, *, instruction=None):
        self.calls.append(("images", instruction, [], [i.size for i in images]))
        return self.inner.embed_images(images, instruction=instruction)

    def embed_fused(self, texts, images, *, instruction=None):
        self.calls.append(("fused", instruction, list(texts), [i.size for i in images]))
        return self.inner.embed_fused(texts, images, instruction=instruction)


@pytest.fixture
def store(open_store):
    """The test's collection, once per engine (a folder, then Milvus: tests/conftest.py)."""
    return open_store()


@pytest.fixture
def fake_indexed(store, tmp_path):
    pdf = make_visual_pdf(tmp_path / "docs" / "shapes.pdf", TOPICS[:6])
    embedder = FakeEmbedder()
    Indexer(store, embedder, settings=SMALL).add([pdf])
    return Retriever(embedder, store)


# -- any-to-any ------------------------------------------------------------------------


def test_page_image_as_query_finds_that_page(fake_indexed, store):
    for page in store.pages():
        image = store.load_image(page)
        hits = fake_indexed.search(image=image, k=3)
        assert hits[0].page == page.number
        assert hits[0].score == pytest.approx(1.0, abs=0.02)
        assert set(hits[0].scores) == {"visual"}
    # a file path works too, and image + text is a fused query that still finds the page
    page = store.pages()[3]
    path = store.image_path(page)
    assert fake_indexed.search(image=path, k=1)[0].page == 4
    fused = fake_indexed.search(TOPICS[3], 3, image=path)
    assert fused[0].page == 4


def test_image_query_in_hybrid_and_text_modes(fake_indexed, store):
    page = store.pages()[2]
    image = store.load_image(page)
    only_image = fake_indexed.search(image=image, k=3, mode="hybrid")
    assert only_image[0].page == 3 and set(only_image[0].scores) == {"visual"}
    both = fake_indexed.search("sourdough starter", 3, image=image, mode="hybrid")
    assert set(both[0].scores) == {"visual", "text"}
    with pytest.raises(QueryError, match="image"):
        fake_indexed.search("sourdough", 3, image=image, mode="text")
    with pytest.raises(QueryError):
        fake_indexed.search(image=image, mode="text")


def test_query_image_is_prepared_like_an_image_page(tmp_path):
    settings = RenderSettings.for_tokens(64)
    big = Image.new("RGBA", (3000, 2000), (0, 0, 0, 0))  # transparent: flattened onto white
    out = fit_image(big, settings)
    assert out.mode == "RGB" and out.width * out.height <= settings.max_pixels * 1.05
    assert out.getpixel((10, 10)) == (255, 255, 255)
    small = Image.new("L", (50, 40), 0)
    assert fit_image(small, settings).size == (50, 40)  # never upscaled
    strip = fit_image(Image.new("RGB", (5000, 3), "red"), settings)
    assert max(strip.size) / min(strip.size) <= settings.max_aspect_ratio
    # EXIF orientation 6 (rotate 90 deg clockwise to display) is applied
    photo = Image.new("RGB", (60, 30), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo.save(tmp_path / "photo.jpg", exif=exif)
    with Image.open(tmp_path / "photo.jpg") as im:
        assert fit_image(im, settings).size == (30, 60)


def test_gme_query_recipes(tiny_embedder, store, tmp_path):
    pdf = make_visual_pdf(tmp_path / "docs" / "a.pdf", TOPICS[:3])
    Indexer(store, tiny_embedder, settings=SMALL).add([pdf])
    spy = Spy(tiny_embedder)
    retriever = Retriever(spy, store)
    page = store.pages()[1]
    image = store.load_image(page)

    hits = retriever.search(image=image, k=3)
    assert len(hits) == 3
    method, instruction, texts, sizes = spy.calls[-1]
    assert (method, instruction) == ("images", QUERY_INSTRUCTION)
    assert sizes == [fit_image(image, SMALL).size]

    retriever.search("waggle dance", 3, image=image)
    method, instruction, texts, sizes = spy.calls[-1]
    assert (method, instruction, texts) == ("fused", QUERY_INSTRUCTION, ["waggle dance"])
    assert len(sizes) == 1

    retriever.search("waggle dance", 3)
    assert spy.calls[-1][:3] == ("texts", QUERY_INSTRUCTION, ["waggle dance"])

    # The document side: a page embedded again with the document instruction is the stored
    # vector, so it finds itself with cosine ~1 (the query side differs by instruction).
    again = tiny_embedder.embed_documents([image])[0]
    top = store.search(again, 1)[0]
    assert top[0] == page.id and top[1] == pytest.approx(1.0, abs=1e-3)
    query_vec = retriever.embed_query("", fit_image(image, SMALL))
    assert query_vec.shape == (tiny_embedder.dim,)
    assert np.linalg.norm(query_vec) == pytest.approx(1.0, abs=1e-3)


# -- hybrid and full text --------------------------------------------------------------


def test_fts_follows_adds_and_removes(store, tmp_path):
    a = make_text_pdf(tmp_path / "docs" / "a.pdf", TOPICS[:2])
    b = make_text_pdf(tmp_path / "docs" / "b.pdf", [TOPICS[5], "Zygomorphic flowers bloom."])
    embedder = FakeEmbedder()
    Indexer(store, embedder, settings=SMALL).add([a, b])
    retriever = Retriever(embedder, store)
    hits = retriever.search("zygomorphic", 5, mode="text")
    assert [(h.document, h.page) for h in hits] == [("b.pdf", 2)]
    with store.writing():
        store.remove_document("b.pdf")
    assert retriever.search("zygomorphic", 5, mode="text") == []
    assert all(h.document == "a.pdf" for h in retriever.search("zygomorphic", 5, mode="hybrid"))
    assert store.search_text("zygomorphic Mariana", 5) == []
    Indexer(store, embedder, settings=SMALL).add([b])
    assert retriever.search("zygomorphic", 5, mode="text")[0].document == "b.pdf"


def test_modes_and_scanned_pages_in_hybrid(store, tmp_path):
    text_pdf = make_text_pdf(tmp_path / "docs" / "text.pdf", TOPICS[:3])
    scan = make_image_only_pdf(tmp_path / "docs" / "scan.pdf", 2, texts=TOPICS[3:5])
    embedder = FakeEmbedder()
    Indexer(store, embedder, settings=SMALL).add([text_pdf, scan])
    retriever = Retriever(embedder, store)
    assert retriever.search("Westphalia treaty", 1, mode="text")[0].page == 2
    assert retriever.search("sourdough", 5, mode="text") == []  # scans have no text layer
    hybrid = retriever.search("Westphalia treaty", 5, mode="hybrid")
    assert (hybrid[0].document, hybrid[0].page) == ("text.pdf", 2)
    assert set(hybrid[0].scores) == {"visual", "text"}
    scans = [h for h in hybrid if h.document == "scan.pdf"]
    assert scans and all(set(h.scores) == {"visual"} for h in scans)
    # the scanned page itself as image query ranks first through the visual side
    scan_page = next(p for p in store.pages() if p.number == 1 and not p.text)
    by_image = retriever.search(image=store.load_image(scan_page), k=3, mode="hybrid")
    assert by_image[0].page_id == scan_page.id
    visual = retriever.search("anything", 5, mode="visual")
    assert len(visual) == 5 and all(set(h.scores) == {"visual"} for h in visual)
    with pytest.raises(QueryError, match="mode"):
        retriever.search("x", mode="fuzzy")
    with pytest.raises(QueryError, match="model"):
        Retriever(None, store).search("x", mode="hybrid")


ODD_QUERIES = [
    '"',
    '""',
    "'",
    "NEAR",
    "NEAR(honeybees waggle)",
    "a AND b",
    "OR",
    "NOT x",
    "*",
    "honey*",
    "-",
    "^",
    "((",
    "col:val",
    "text:honeybees",
    "{a b}: c",
    "…",
    "é",
    "日本語の文書",
    "🐝🐝",
    "\x00",
    "a" * 5000,
    "Westphalia" + " OR" * 200,
]


@pytest.mark.parametrize("mode", ["visual", "text", "hybrid"])
def test_odd_queries_never_crash(store, tmp_path, mode):
    pdf = make_text_pdf(tmp_path / "docs" / "a.pdf", [*TOPICS[:2], "Café déjà vu, 日本語の文書"])
    embedder = FakeEmbedder()
    Indexer(store, embedder, settings=SMALL).add([pdf])
    retriever = Retriever(embedder, store)
    for query in ODD_QUERIES:
        hits = retriever.search(query, 3, mode=mode)
        assert isinstance(hits, list)
    assert retriever.search("honey*", 3, mode="text") == []  # operators are plain words
    assert retriever.search("NEAR(honeybees waggle)", 1, mode="text")[0].page == 1
    assert retriever.search("cafe", 1, mode="text")[0].page == 3  # diacritics folded
    # Helvetica has no CJK glyphs, so store a page with such text directly
    with store.writing():
        doc = store.add_document(name="jp", path="jp", sha256="0" * 64, kind="pdf", page_count=1)
        store.add_pages(doc.id, [(1, "日本語の文書 です", Image.new("RGB", (28, 28)))])
    assert retriever.search("日本語の文書", 1, mode="text")[0].document == "jp"
    for blank in ("", "   ", None):
        with pytest.raises(QueryError):
            retriever.search(blank, 3, mode=mode)


# -- filters ---------------------------------------------------------------------------


def test_filters_by_document_and_pages(store, tmp_path):
    a = make_text_pdf(tmp_path / "docs" / "alpha.pdf", [f"common word alpha {i}" for i in range(5)])
    b = make_text_pdf(tmp_path / "docs" / "beta.pdf", [f"common word beta {i}" for i in range(5)])
    embedder = FakeEmbedder()
    Indexer(store, embedder, settings=SMALL).add([a, b])
    retriever = Retriever(embedder, store)
    beta_id = store.document("beta.pdf").id
    for mode in ("visual", "text", "hybrid"):
        hits = retriever.search("common word", 20, mode=mode, documents=["alpha.pdf"])
        assert {h.document for h in hits} == {"alpha.pdf"} and len(hits) == 5
        hits = retriever.search("common word", 20, mode=mode, documents=[beta_id])
        assert {h.document for h in hits} == {"beta.pdf"}
        hits = retriever.search("common word", 20, mode=mode, documents=[str(beta_id)])
        assert {h.document for h in hits} == {"beta.pdf"}
        hits = retriever.search("common word", 20, mode=mode, pages="2-3")
        assert sorted((h.document, h.page) for h in hits) == [
            ("alpha.pdf", 2),
            ("alpha.pdf", 3),
            ("beta.pdf", 2),
            ("beta.pdf", 3),
        ]
        hits = retriever.search("common", 20, mode=mode, documents=["beta.pdf"], pages="4-")
        assert sorted(h.page for h in hits) == [4, 5]
        assert retriever.search("common", 20, mode=mode, pages="9-") == []
        hits = retriever.search("common", 20, mode=mode, documents=["alpha.pdf", "beta.pdf"])
        assert len(hits) == 10
    with pytest.raises(DocumentNotFoundError):
        retriever.search("common", 5, documents=["gamma.pdf"])
    with pytest.raises(QueryError):
        retriever.search("common", 5, pages="3-1")
    with pytest.raises(QueryError):
        retriever.search("common", 5, pages="x")


# -- CLI -------------------------------------------------------------------------------


def run(*args: str):
    return runner.invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def cli_env(tiny_model_dir, monkeypatch, store_spec, reuse_loaded_models):
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")


def test_cli_text_only_then_search_and_pending(cli_env, tmp_path):
    a = make_text_pdf(tmp_path / "docs" / "report.pdf", TOPICS[:3])
    make_text_pdf(tmp_path / "docs" / "other.pdf", TOPICS[3:6])
    result = run("index", "--text-only", str(a.parent))
    assert result.exit_code == 0, result.output
    assert "loading model" not in result.output
    result = run("search", "Westphalia", "--mode", "text", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["hits"][0]["document"], data["hits"][0]["page"]) == ("report.pdf", 2)
    assert data["pending"] == 0 and data["mode"] == "text"
    result = run("search", "Westphalia", "--mode", "text", "--doc", "other.pdf", "--json")
    assert json.loads(result.stdout)["hits"] == []

    # visual: nothing embedded yet -> the pending pages answer through their text layer,
    # marked as such, and are reported
    result = run("search", "Westphalia", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["pending"] == 6
    top = data["hits"][0]
    assert (top["document"], top["page"], top["pending"]) == ("report.pdf", 2, True)
    result = run("search", "Westphalia", "--mode", "hybrid")
    assert result.exit_code == 0, result.output
    assert "6 page(s) still wait for vectors" in result.stderr
    assert "report.pdf  p.2" in result.stdout  # hybrid ranks through the text side

    assert run("index", str(a.parent)).exit_code == 0  # embeds the pending pages
    data = json.loads(run("search", "Westphalia", "--mode", "hybrid", "--json").stdout)
    assert data["pending"] == 0 and len(data["hits"]) == 5


def test_cli_image_with_text_mode_is_a_usage_error_before_anything_loads(tmp_path, monkeypatch):
    """Text search cannot take an image: exit 2 with the way out, before the collection is
    opened or a model loads (the collection named here does not even exist)."""
    from app.cli import common as cli_common

    def must_not_load(*args, **kwargs):
        raise AssertionError("loaded something before checking the usage")

    monkeypatch.setattr(cli_common.Options, "embedder", must_not_load)
    monkeypatch.setattr(cli_common, "open_retriever", must_not_load)
    shot = tmp_path / "shot.png"
    Image.new("RGB", (64, 64), "white").save(shot)
    missing = str(tmp_path / "no-such-collection")
    for args in (["question", "--image", str(shot)], ["--image", str(shot)]):
        result = runner.invoke(
            cli,
            ["--collection", missing, "search", *args, "--mode", "text"],
            catch_exceptions=False,
        )
        assert result.exit_code == 2, result.output
        assert "--mode text" in result.output and "--mode visual" in result.output
        assert "Traceback" not in result.output
    assert not Path(missing).exists()


def test_cli_image_queries_and_filters(cli_env, tmp_path):
    pdf = make_visual_pdf(tmp_path / "docs" / "shapes.pdf", TOPICS[:4])
    make_text_pdf(tmp_path / "docs" / "words.pdf", TOPICS[4:8])
    assert run("index", str(pdf.parent)).exit_code == 0
    shot = tmp_path / "screenshot.png"
    Image.new("RGB", (300, 200), "white").save(shot)

    result = run("search", "--image", str(shot), "-k", "3", "--json")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["hits"]) == 3
    result = run("search", "waggle dance", "--image", str(shot), "--mode", "hybrid", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["hits"]
    result = run("search", "--image", str(shot), "--doc", "shapes.pdf", "--pages", "2-3", "--json")
    hits = json.loads(result.stdout)["hits"]
    assert sorted((h["document"], h["page"]) for h in hits) == [
        ("shapes.pdf", 2),
        ("shapes.pdf", 3),
    ]

    result = run("search", "--image", str(tmp_path / "missing.png"))  # usage: exit 2
    assert result.exit_code == 2 and "does not exist" in result.output
    (tmp_path / "bad.png").write_text("not an image")
    result = run("search", "--image", str(tmp_path / "bad.png"))
    assert result.exit_code == 1 and "cannot be read" in result.output
    result = run("search", "x", "--image", str(shot), "--mode", "text")  # usage: exit 2
    assert result.exit_code == 2 and "--mode text" in result.output
    result = run("search", "x", "--pages", "7-2")
    assert result.exit_code == 2 and "Traceback" not in result.output
    result = run("search", "x", "--doc", "nope.pdf")
    assert result.exit_code == 1 and "nope.pdf" in result.output
