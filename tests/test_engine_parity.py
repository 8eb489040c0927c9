"""The same files in a local folder and in Milvus answer every query the same way.

The parametrized tests check that each engine behaves; this one puts the two side by side:
the same pages and vectors (the deterministic fake embedder) must give the same ranking in
every mode (visual: same vectors, exact neighbours; text: the same stemmed words, BM25;
hybrid: RRF with the same constant), with and without filters, for text, image and
image+text queries, and the same errors.

Two documented differences, asserted rather than hidden:

* BM25 *score values* differ: SQLite FTS5 uses ``idf = log((N - n + 0.5) / (n + 0.5))``,
  Milvus ``log(1 + (N - n + 0.5) / (n + 0.5))`` with per-segment statistics. The text
  ranking is the same for queries of distinctive words (hybrid fuses ranks only, so its
  scores agree too); a word in more than half of the pages weighs ~0 locally and a little
  in Milvus, so queries full of such words may rank differently
  (``test_common_words_weigh_differently``).
* Exact ties (identical pages, e.g. one slide in two decks) are ordered by page id, and
  the engines' ids differ (local: insertion order; Milvus: hashes of content), so the
  corpus below has no identical pages.
"""

from __future__ import annotations

import pytest

from indexer.errors import DocumentNotFoundError, QueryError
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.search import Retriever
from tests.support.pdfs import TOPICS

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

SMALL = RenderSettings.for_tokens(16)

QUERIES = [
    "waggle dance of honeybees",
    "Westphalia treaty 1648",
    "revenue subscriptions",
    "deepest ocean trench",
    "bacteria",  # in two documents
    "nothing matches this",
]
FILTERS = [
    {},
    {"documents": ["b.pdf"]},
    {"pages": "2-3"},
    {"documents": ["a.pdf", "c.pdf"], "pages": "2-"},
]


@pytest.fixture(scope="module")
def both(milvus_server, tmp_path_factory):
    """One set of files indexed into a folder and into a Milvus collection."""
    import uuid

    root = tmp_path_factory.mktemp("parity")
    texts = {
        "a.pdf": TOPICS[0:4],
        "b.pdf": TOPICS[4:8],
        "c.pdf": [TOPICS[9], "Lactic acid bacteria sour the dough.", TOPICS[10]],
    }
    files, start = [], 0
    for name, pages in texts.items():
        files.append(_distinct_pdf(root / "src" / name, pages, start))
        start += len(pages)
    spec = f"milvus://{milvus_server.address}/t_{uuid.uuid4().hex[:12]}"
    stores = {"local": open_collection(str(root / "local")), "milvus": open_collection(spec)}
    embedder = FakeEmbedder()
    for store in stores.values():
        Indexer(store, embedder, settings=SMALL).add(files)
    yield {name: Retriever(embedder, store) for name, store in stores.items()}
    stores["milvus"].drop()  # type: ignore[attr-defined]
    for store in stores.values():
        store.close()


def _distinct_pdf(path, texts: list[str], start: int):
    """Pages that look different at any size (a dark block at a place of its own, so that
    no two page images tie) and read differently."""
    import pymupdf

    doc = pymupdf.open()
    for i, text in enumerate(texts, start=start):
        page = doc.new_page(width=400, height=400)
        x, y = (i % 4) * 100, (i // 4) * 100
        page.draw_rect(pymupdf.Rect(x, y, x + 90, y + 90), color=(0, 0, 0), fill=(0, 0, 0))
        page.insert_textbox(pymupdf.Rect(10, 330, 390, 395), text, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc.save(path)
    doc.close()
    return path


def _answers(retriever: Retriever, query, mode: str, **kwargs):
    hits = retriever.search(query, 8, mode=mode, **kwargs)
    if mode == "text":  # BM25 values differ by the IDF variant (module docs): ranks only
        assert all(h.score > 0 for h in hits)
        return [(h.document, h.page) for h in hits]
    return [(h.document, h.page, round(h.score, 4), sorted(h.scores)) for h in hits]


@pytest.mark.parametrize("mode", ["visual", "text", "hybrid"])
def test_same_rankings_and_scores_in_every_mode(both, mode):
    for query in QUERIES:
        for where in FILTERS:
            local = _answers(both["local"], query, mode, **where)
            milvus = _answers(both["milvus"], query, mode, **where)
            assert milvus == local, (query, where)
            assert local or mode == "text"


def test_same_answers_to_image_and_image_text_queries(both):
    local_store = both["local"].store
    for page in local_store.pages():
        image = local_store.load_image(page)
        for mode in ("visual", "hybrid"):
            for text in (None, "sourdough starter yeast", "Westphalia"):
                local = _answers(both["local"], text, mode, image=image)
                milvus = _answers(both["milvus"], text, mode, image=image)
                assert milvus == local, (page.number, mode, text)
                if text is None:
                    name = local_store.document(page.document_id).name
                    assert local[0][:2] == (name, page.number)


def test_same_errors(both):
    for retriever in both.values():
        with pytest.raises(DocumentNotFoundError, match="No document 'gamma.pdf'"):
            retriever.search("x", 3, documents=["gamma.pdf"])
        with pytest.raises(QueryError, match="Page range '3-1'"):
            retriever.search("x", 3, pages="3-1")
        with pytest.raises(QueryError):
            retriever.search("   ", 3)
        with pytest.raises(QueryError, match="image"):
            page = retriever.store.pages()[0]
            retriever.search("x", 3, image=retriever.store.image_path(page), mode="text")


def test_common_words_weigh_differently(both):
    """The documented BM25 difference: 'the' is on most pages; FTS5's IDF gives it ~0
    (scores around 1e-6), Milvus's a small positive weight. Both find the same pages."""
    local = both["local"].search("the", 20, mode="text")
    milvus = both["milvus"].search("the", 20, mode="text")
    assert {(h.document, h.page) for h in local} == {(h.document, h.page) for h in milvus}
    assert len(local) > 11 / 2
    assert max(h.score for h in local) < 1e-3 < min(h.score for h in milvus)
