"""Indexing with the fake embedder: dedupe, resume, refusals, retrieval and export."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest

from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from retriever import Retriever, to_markdown, to_openai_messages, zip_bytes
from retriever.search import PageRange, reciprocal_rank_fusion, snippet

TOPICS = [
    "Quarterly revenue grew in Europe thanks to new subscriptions.",
    "Customer churn in 2023 rose to nine percent after the price change.",
    "The maintenance manual explains how to replace the hydraulic pump.",
]


@pytest.fixture
def store(open_store):
    """The test's collection, once per engine (a folder, then Milvus: tests/conftest.py)."""
    return open_store()


def test_index_search_export_end_to_end(store, make_pdf):
    report_pdf = make_pdf("report.pdf", TOPICS)
    make_pdf("manual.pdf", ["Torque settings for bolts.", "Pump diagrams."])
    embedder = FakeEmbedder()
    events = []
    report = Indexer(store, embedder).add([report_pdf.parent], progress=events.append)
    assert [f.status for f in report.files] == ["added", "added"]
    assert report.pages_stored == 5 and report.pages_embedded == 5 and report.pending == 0
    phases = {e.phase for e in events}
    assert phases == {"pages", "vectors"}
    last = [e for e in events if e.phase == "vectors"][-1]
    assert (last.done, last.total) == (5, 5) and last.rate > 0

    retriever = Retriever(embedder, store)
    hits = retriever.search("churn in 2023", 3, mode="text")
    assert (hits[0].document, hits[0].page) == ("report.pdf", 2)
    assert "churn" in hits[0].snippet.lower()
    vis = retriever.search("churn in 2023", 5)
    assert len(vis) == 5 and all(-1.001 <= h.score <= 1.001 for h in vis)
    assert vis == sorted(vis, key=lambda h: -h.score)
    only_manual = retriever.search("pump", 5, documents=["manual.pdf"])
    assert {h.document for h in only_manual} == {"manual.pdf"}
    assert all(h.page >= 2 for h in retriever.search("pump", 5, pages="2-"))
    hybrid = retriever.search("hydraulic pump", 3, mode="hybrid")
    assert (hybrid[0].document, hybrid[0].page) == ("report.pdf", 3)

    messages = to_openai_messages("churn?", hits[:2])
    assert messages[0]["role"] == "system" and "cite" in messages[0]["content"].lower()
    parts = messages[1]["content"]
    assert parts[0]["text"].endswith("churn?")
    images = [p for p in parts if p["type"] == "image_url"]
    assert len(images) == 2 and images[0]["image_url"]["url"].startswith("data:image/jpeg;base64,")
    assert any(p.get("text") == "[1] report.pdf, p. 2" for p in parts)
    md = to_markdown("churn?", hits[:1])
    assert "report.pdf, p. 2" in md and "nine percent" in md
    with zipfile.ZipFile(__import__("io").BytesIO(zip_bytes("churn?", hits[:2]))) as zf:
        names = zf.namelist()
        assert "prompt.md" in names and "messages.json" in names
        assert sum(n.startswith("pages/") for n in names) == 2
        assert json.loads(zf.read("messages.json"))[1]["role"] == "user"


def test_same_content_is_a_noop_and_resume_finishes(store, make_pdf, tmp_path):
    pdf = make_pdf("a.pdf", TOPICS)
    copy = tmp_path / "copy-of-a.pdf"
    copy.write_bytes(pdf.read_bytes())
    embedder = FakeEmbedder()
    # text-only first: pages and text now, vectors later
    first = Indexer(store, embedder).add([pdf], embed=False)
    assert first.pending == 3 and store.stats().embedded == 0
    assert Retriever(None, store).search("hydraulic", 1)[0].page == 3
    second = Indexer(store, embedder).add([copy])
    assert second.files[0].status == "skipped" and "already" in second.files[0].message
    assert second.pages_embedded == 3 and store.stats().pending == 0
    calls_before = list(embedder.calls)
    third = Indexer(store, embedder).add([pdf])
    assert third.pages_embedded == 0 and embedder.calls == calls_before


def test_interrupted_document_resumes_without_duplicates(store, make_pdf):
    pdf = make_pdf("long.pdf", [f"page number {i}" for i in range(1, 8)])
    indexer = Indexer(store, FakeEmbedder(), commit_every=2)
    # simulate a crash after the first committed batch of pages
    from indexer import pages as pages_mod

    real = pages_mod.render_pages

    def crashing(*args, **kwargs):
        for i, page in enumerate(real(*args, **kwargs)):
            if i == 3:
                raise KeyboardInterrupt
            yield page

    import indexer.pipeline.job as pipeline_mod

    pipeline_mod.render_pages = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            indexer.add([pdf])
    finally:
        pipeline_mod.render_pages = real
    doc = store.documents()[0]
    assert doc.status == "indexing" and doc.pages_stored == 2
    report = Indexer(store, FakeEmbedder()).add([pdf])
    assert report.files[0].status == "resumed"
    assert [p.number for p in store.pages()] == list(range(1, 8))
    assert store.stats().embedded == 7 and len(store.page_ids(embedded=True)) == 7
    assert len(store.search(store.vector(store.pages()[0].id), 20)) == 7


def test_identical_pages_are_embedded_once(store, make_pdf):
    pdf = make_pdf("slides.pdf", ["same slide"] * 4 + ["other"])
    embedder = FakeEmbedder()
    report = Indexer(store, embedder, batch_size=2).add([pdf])
    assert report.pages_embedded == 2 and report.pages_reused == 3
    vecs = [store.vector(p.id) for p in store.pages()]
    assert np.allclose(vecs[0], vecs[3])


def test_bad_file_is_refused_and_others_indexed(store, make_pdf, tmp_path):
    good = make_pdf("good.pdf", TOPICS)
    bad = good.parent / "bad.pdf"
    bad.write_text("<html>not a pdf</html>")
    empty = good.parent / "empty.pdf"
    empty.write_bytes(b"")
    report = Indexer(store, FakeEmbedder()).add([good.parent])
    by_name = {f.path.rsplit("/", 1)[-1]: f for f in report.files}
    assert by_name["good.pdf"].status == "added"
    assert by_name["bad.pdf"].status == "refused" and by_name["bad.pdf"].reason == "not-a-pdf"
    assert by_name["empty.pdf"].reason == "empty"
    assert store.stats().pages == 3


def test_model_mismatch_on_search(store, make_pdf):
    from indexer.errors import ModelMismatchError

    Indexer(store, FakeEmbedder()).add([make_pdf("a.pdf", ["x"])])
    with pytest.raises(ModelMismatchError):
        Retriever(FakeEmbedder(dim=32, model_id="other/model"), store)


def test_fusion_and_helpers():
    fused, parts = reciprocal_rank_fusion({"visual": [(1, 0.9), (2, 0.8)], "text": [(2, 5.0)]}, 2)
    assert [pid for pid, _ in fused] == [2, 1]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert parts[2] == {"visual": 0.8, "text": 5.0}
    assert PageRange.parse("3-7") == PageRange(3, 7)
    assert PageRange.parse("5-") == PageRange(5, None)
    assert PageRange.parse("4") == PageRange(4, 4)
    assert "churn" in snippet("a " * 300 + "churn rose", "churn")


def test_identical_files_in_one_batch_are_stored_once(store, make_pdf, tmp_path):
    pdf = make_pdf("a.pdf", TOPICS)
    twin = pdf.parent / "b.pdf"
    twin.write_bytes(pdf.read_bytes())
    report = Indexer(store, FakeEmbedder()).add([pdf, twin])
    assert [f.status for f in report.files] == ["skipped", "added"] or [
        f.status for f in report.files
    ] == ["added", "skipped"]
    assert len(store.documents()) == 1 and store.stats().pages == 3
