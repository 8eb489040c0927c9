"""The Streamlit app, driven headless with ``streamlit.testing.v1.AppTest``.

Documents are indexed through the library (AppTest cannot drive ``st.file_uploader``; the
upload path is covered by tests/test_uploads.py and the browser test), then the app is run
on the same collection with the tiny random-weight GME.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from indexer.config import collection_path
from indexer.pipeline import Indexer
from indexer.store import Collection
from tests.support.pdfs import TOPICS, make_text_pdf

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    monkeypatch.delenv("PAGELENS_COLLECTION", raising=False)
    monkeypatch.delenv("PAGELENS_IMAGE_TOKENS", raising=False)
    return collection_path(None)


@pytest.fixture(scope="module")
def built_collection(tmp_path_factory: pytest.TempPathFactory, tiny_embedder) -> Path:
    """Two embedded PDFs, indexed once per module: a.pdf (3 pages), b.pdf (2 pages)."""
    root = tmp_path_factory.mktemp("app-collection")
    a = make_text_pdf(root / "in" / "a.pdf", TOPICS[:3])
    b = make_text_pdf(root / "in" / "b.pdf", TOPICS[3:5])
    with Collection(root / "collection") as store:
        Indexer(store, tiny_embedder).add([a, b])
    return root / "collection"


@pytest.fixture
def indexed(app_env: Path, built_collection: Path) -> Collection:
    """A private copy of the built collection as this test's default collection."""
    shutil.copytree(built_collection, app_env, ignore=shutil.ignore_patterns("write.lock"))
    return Collection(app_env)


def run_app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def search(at, question: str, mode: str | None = None):
    at.text_input(key="question").input(question)
    if mode:
        at.radio(key="mode").set_value(mode)
    next(b for b in at.button if b.label == "Search").click()
    at.run()
    assert not at.exception, at.exception
    return at


def test_empty_collection_shows_help_and_footer(app_env: Path) -> None:
    at = run_app()
    assert "This collection is empty" in texts(at.info)
    assert not at.error
    assert "Built with GME" in texts(at.caption)
    assert "PageLens" in texts(at.caption)
    # The model status is in the sidebar from the first run.
    assert "Model" in texts(at.sidebar.markdown)


def test_query_shows_ranked_pages_and_export(indexed: Collection) -> None:
    at = run_app()
    sidebar = texts(at.sidebar.markdown)
    assert "a.pdf" in sidebar and "b.pdf" in sidebar
    assert "Documents (2)" in texts(at.sidebar.subheader)

    search(at, "Which treaty ended the Thirty Years War?", mode="text")
    cards = texts(at.markdown)
    assert "#1 · a.pdf" in cards
    captions = texts(at.caption)
    assert "page 2 · score" in captions  # TOPICS[1] is page 2 of a.pdf
    # export: Markdown preview with a copy button (st.code), JSON preview, three downloads
    assert at.code and "## Question" in at.code[0].value
    assert "[a.pdf, p. 2]" in at.code[0].value or "a.pdf, p. 2" in at.code[0].value
    assert at.json, "OpenAI messages preview missing"
    downloads = at.get("download_button")
    assert len(downloads) == 3
    assert "Built with GME" in captions

    # Unticking a page removes it from the prompt.
    first = next(c for c in at.checkbox if c.label == "Export")
    first.uncheck()
    at.run()
    assert "a.pdf, p. 2" not in at.code[0].value

    # Visual search with the (random) tiny model returns pages of both documents.
    search(at, "Which treaty ended the Thirty Years War?", mode="visual")
    cards = texts(at.markdown)
    assert "#1 · " in cards and "#5 · " in cards, texts(at.sidebar.error)
    assert "score" in texts(at.caption)
    assert not at.error


def test_empty_question_is_a_message_not_an_error(indexed: Collection) -> None:
    at = run_app()
    search(at, "   ")
    assert "Type a question" in texts(at.info)
    assert not at.error


def test_bad_page_range_is_a_clear_error(indexed: Collection) -> None:
    at = run_app()
    at.text_input(key="page_range").input("7-3")
    search(at, "treaty", mode="text")
    assert "ends before it starts" in texts(at.error)


def test_remove_asks_for_confirmation(indexed: Collection) -> None:
    doc = indexed.document("a.pdf")
    at = run_app()
    at.button(key=f"rm-{doc.id}").click().run()
    assert "Remove **a.pdf**?" in texts(at.sidebar.warning)
    at.button(key=f"rm-no-{doc.id}").click().run()
    assert not at.sidebar.warning
    assert [d.name for d in indexed.documents()] == ["a.pdf", "b.pdf"]

    at.button(key=f"rm-{doc.id}").click().run()
    at.button(key=f"rm-yes-{doc.id}").click().run()
    assert not at.exception
    assert [d.name for d in indexed.documents()] == ["b.pdf"]
    assert "Removed a.pdf" in texts(at.success)
    assert "Documents (1)" in texts(at.sidebar.subheader)


def test_text_first_then_background_embedding(app_env: Path, tmp_path: Path) -> None:
    pdf = make_text_pdf(tmp_path / "in" / "notes.pdf", TOPICS[5:8])
    store = Collection(app_env)
    Indexer(store, None).add([pdf], embed=False)  # pages + text only

    at = run_app()
    assert "3 of 3 pages wait for vectors" in texts(at.sidebar.info)
    search(at, "Mariana Trench", mode="text")
    assert "#1 · notes.pdf" in texts(at.markdown)
    search(at, "Mariana Trench", mode="hybrid")
    assert "still wait for vectors" in texts(at.info)

    at.button(key="start-embed").click().run()
    deadline = time.monotonic() + 60
    while store.stats().pending and time.monotonic() < deadline:
        time.sleep(0.2)
    assert store.stats().pending == 0
    at.run()
    assert "All 3 pages embedded" in texts(at.sidebar.caption)
    search(at, "Mariana Trench", mode="visual")
    assert "still wait for vectors" not in texts(at.info)
    assert "#3 · notes.pdf" in texts(at.markdown)


def test_new_collection_from_the_sidebar(app_env: Path) -> None:
    at = run_app()
    at.sidebar.text_input[0].input("../evil")
    next(b for b in at.sidebar.button if b.label == "Create").click()
    at.run()
    assert "one word" in texts(at.sidebar.error)
    at.sidebar.text_input[0].input("reports-2024")
    next(b for b in at.sidebar.button if b.label == "Create").click()
    at.run()
    assert not at.exception
    assert (collection_path("reports-2024") / "catalog.sqlite").is_file()
    assert "Created collection 'reports-2024'" in texts(at.success)
    assert at.sidebar.selectbox[0].value.endswith("reports-2024")


def test_model_that_cannot_load_leaves_text_search(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PAGELENS_MODEL", str(tmp_path / "no-such-model"))
    pdf = make_text_pdf(tmp_path / "in" / "a.pdf", TOPICS[:2])
    Indexer(Collection(collection_path(None)), None).add([pdf], embed=False)
    at = run_app()
    deadline = time.monotonic() + 30
    while "Text search still works" not in texts(at.sidebar.error):
        assert time.monotonic() < deadline, texts(at.sidebar.markdown)
        time.sleep(0.2)
        at.run()
    assert at.radio(key="mode").value == "text"
    search(at, "Westphalia treaty")
    assert "#1 · a.pdf" in texts(at.markdown)


# -- the app's services, without Streamlit -------------------------------------------------
def _fake_loader(model, **_):
    from indexer.model import FakeEmbedder

    return FakeEmbedder(model_id="fake")


def test_model_loader_reports_failure_as_a_message() -> None:
    from app.web.services import ModelLoader
    from indexer.errors import ModelNotAvailableError, PageLensError

    def broken(model, **_):
        raise ModelNotAvailableError("no weights here")

    loader = ModelLoader("x", loader=broken).start()
    with pytest.raises(PageLensError, match="no weights here"):
        loader.wait(timeout=10)
    assert loader.state == "failed" and loader.info()["error"] == "no weights here"
    ok = ModelLoader("y", loader=_fake_loader)
    assert ok.state == "idle"
    assert ok.wait(timeout=10).dim == 64 and ok.state == "ready"


def test_workspace_two_phase_add_and_cleanup(tmp_path: Path) -> None:
    from app.web.services import ModelLoader, Workspace
    from app.web.uploads import save_upload
    from tests.support.pdfs import make_encrypted_pdf

    ws = Workspace(tmp_path / "c", ModelLoader("fake", loader=_fake_loader))
    good = make_text_pdf(tmp_path / "good.pdf", TOPICS[:3])
    locked = make_encrypted_pdf(tmp_path / "locked.pdf", user_pw="pw")
    saved = {
        "good.pdf": save_upload(ws.path, "good.pdf", good.read_bytes()),
        "copy.pdf": save_upload(ws.path, "copy.pdf", good.read_bytes()),
        "junk.pdf": save_upload(ws.path, "junk.pdf", b"not a pdf"),
        "locked.pdf": save_upload(ws.path, "locked.pdf", locked.read_bytes()),
    }
    names = {str(p): n for n, p in saved.items()}
    first = ws.add_files([saved["good.pdf"]], names=names)
    assert first.files[0].status == "added"
    report = ws.add_files([saved[n] for n in ("copy.pdf", "junk.pdf", "locked.pdf")], names=names)
    status = {names[r.path]: (r.status, r.reason) for r in report.files}
    assert status["copy.pdf"] == ("skipped", None)
    assert status["junk.pdf"][0] == "refused"
    assert status["locked.pdf"] == ("refused", "needs-password")
    # duplicates and refused uploads are deleted; the locked one waits for its password
    assert saved["good.pdf"].exists() and saved["locked.pdf"].exists()
    assert not saved["copy.pdf"].exists() and not saved["junk.pdf"].exists()

    retry = ws.add_files(
        [saved["locked.pdf"]], names=names, passwords={str(saved["locked.pdf"]): "pw"}
    )
    assert retry.files[0].status == "added"
    deadline = time.monotonic() + 30
    while (ws.job.running or ws.store.stats().pending) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ws.store.stats().pending == 0 and not ws.job.error
    assert ws.job.rate and ws.job.estimate_seconds(10) > 0

    doc = ws.store.document("good.pdf")
    ws.remove(doc.id)
    assert not saved["good.pdf"].exists()
    assert [d.name for d in ws.store.documents()] == ["locked.pdf"]


def test_embed_job_pauses_for_writers(tmp_path: Path) -> None:
    from app.web.services import ModelLoader, Workspace

    ws = Workspace(tmp_path / "c", ModelLoader("fake", loader=_fake_loader))
    pdf = make_text_pdf(tmp_path / "many.pdf", [f"page {i} {TOPICS[i % 12]}" for i in range(24)])
    ws.add_files([pdf], embed=False)
    assert ws.store.stats().pending == 24 and not ws.job.running
    ws.job.batch_size = 1
    assert ws.job.start()
    with ws.writing():  # waits for the current batch, then holds the job
        assert not ws.job.running
        paused_at = ws.store.stats().pending
        time.sleep(0.2)
        assert ws.store.stats().pending == paused_at
    deadline = time.monotonic() + 30
    while ws.store.stats().pending and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ws.store.stats().pending == 0


def test_collection_names_are_validated() -> None:
    from app.web.services import validate_collection_name
    from indexer.errors import CollectionError

    assert validate_collection_name(" reports-2024 ") == "reports-2024"
    for bad in ("", "../x", "a/b", ".hidden", "x" * 65, "two words"):
        with pytest.raises(CollectionError):
            validate_collection_name(bad)


def test_rerank_control_only_with_a_reranker(
    indexed: Collection, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No reranker: no "Rerank the top N". A configured one: the control, and the pages come
    back reranked with both scores shown."""
    from indexer.model.rerank import FakeReranker, loading

    at = run_app()
    assert not [n for n in at.number_input if n.label == "Rerank the top N"]

    fake = FakeReranker()
    monkeypatch.setattr(loading, "configured_reranker", lambda: fake)
    monkeypatch.setenv("PAGELENS_RERANK_MODEL", str(tmp_path / "fake"))  # its own cache key
    at = run_app()
    control = next(n for n in at.number_input if n.label == "Rerank the top N")
    assert control.value == 20
    search(at, "Which treaty ended the Thirty Years War?", mode="text")
    assert fake.calls, "the reranker was not used"
    assert "rerank " in texts(at.caption) and "first stage" in texts(at.caption)
    assert not at.error
