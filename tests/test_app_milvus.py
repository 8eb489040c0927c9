"""The Streamlit app on a collection that lives in Milvus (a real milvus-lite gRPC server on
a loopback port), driven headless with ``streamlit.testing.v1.AppTest``: the collection
picker takes a ``milvus://`` address, uploads are indexed into Milvus, searches show ranked
pages, a document is removed, and an unreachable address is one clear message.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from indexer.stores import open_collection
from tests.support.milvus_server import free_port
from tests.support.pdfs import TOPICS, make_text_pdf

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
TOKENS = 16  # small pages: the tiny model embeds them in milliseconds


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> None:
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", str(TOKENS))
    monkeypatch.delenv("PAGELENS_COLLECTION", raising=False)


@pytest.fixture
def milvus_spec(milvus_server):
    """A fresh collection name on the shared server; dropped afterwards."""
    specs: list[str] = []

    def make() -> str:
        spec = f"milvus://{milvus_server.address}/app_{uuid.uuid4().hex[:10]}"
        specs.append(spec)
        return spec

    yield make
    for spec in specs:
        try:
            store = open_collection(spec, create=False)
        except Exception:
            continue
        store.drop()
        store.close()


def run_app():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def search(at, question: str, mode: str):
    at.text_input(key="question").input(question)
    at.radio(key="mode").set_value(mode)
    next(b for b in at.button if b.label == "Search").click()
    at.run()
    assert not at.exception, at.exception
    return at


def wait_embedded(spec: str, pages: int, timeout: float = 60) -> None:
    store = open_collection(spec, create=False)
    deadline = time.monotonic() + timeout
    while True:
        stats = store.stats()
        if stats.pages == pages and stats.pending == 0:
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.2)
    store.close()


def test_upload_search_and_remove_on_a_milvus_collection(
    app_env, milvus_spec, monkeypatch, tmp_path
) -> None:
    spec = milvus_spec()
    monkeypatch.setenv("PAGELENS_COLLECTION", spec)
    a = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])
    b = make_text_pdf(tmp_path / "b.pdf", TOPICS[3:5])

    at = run_app()
    assert spec in texts(at.caption)  # the footer names the collection
    assert at.sidebar.selectbox[0].value == spec
    assert "This collection is empty" in texts(at.info)

    uploader = at.file_uploader[0]
    uploader.upload("a.pdf", a.read_bytes(), "application/pdf")
    uploader.upload("b.pdf", b.read_bytes(), "application/pdf")
    at.run()
    assert not at.exception, at.exception
    assert "a.pdf" in texts(at.success) and "b.pdf" in texts(at.success)

    # The pages are in Milvus (not in a local folder), and embedded in the background.
    wait_embedded(spec, 5)
    store = open_collection(spec, create=False)
    assert sorted(d.name for d in store.documents()) == ["a.pdf", "b.pdf"]

    at.run()
    assert "Documents (2)" in texts(at.sidebar.subheader)
    search(at, "Which treaty ended the Thirty Years War?", "text")
    assert "#1 · a.pdf" in texts(at.markdown)
    assert "page 2 · score" in texts(at.caption)  # TOPICS[1] is page 2 of a.pdf
    assert at.code and "a.pdf, p. 2" in at.code[0].value  # the export preview

    search(at, "Which treaty ended the Thirty Years War?", "visual")
    cards = texts(at.markdown)
    assert "#1 · " in cards and "#5 · " in cards  # all five embedded pages, ranked
    assert not at.error, texts(at.error)
    # Each card and each document shows its page image, read from the collection's images.
    assert len(at.main.image) == 5 and len(at.sidebar.image) == 2

    doc = store.document("a.pdf")
    at.button(key=f"rm-{doc.id}").click().run()
    at.button(key=f"rm-yes-{doc.id}").click().run()
    assert not at.exception, at.exception
    assert "Removed a.pdf" in texts(at.success)
    assert [d.name for d in store.documents()] == ["b.pdf"]
    assert store.stats().pages == 2
    assert "Documents (1)" in texts(at.sidebar.subheader)
    store.close()


def test_picker_opens_a_typed_milvus_address_and_lists_its_server(
    app_env, milvus_spec, tmp_path, tiny_embedder
) -> None:
    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer

    first, second = milvus_spec(), milvus_spec()
    pdf = make_text_pdf(tmp_path / "notes.pdf", TOPICS[5:7])
    store = open_collection(first)
    Indexer(store, tiny_embedder, settings=RenderSettings.for_tokens(TOKENS)).add([pdf])
    store.close()
    open_collection(second).close()

    at = run_app()  # the local default collection
    assert not at.sidebar.selectbox[0].value.startswith("milvus://")
    at.sidebar.text_input[0].input(first)
    next(b for b in at.sidebar.button if b.label == "Create").click()
    at.run()
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    picker = at.sidebar.selectbox[0]
    assert picker.value == first
    assert f"Opened collection {first}" in texts(at.success)
    assert "notes.pdf" in texts(at.sidebar.markdown)
    # Every PageLens collection on that server is offered, the other one too.
    assert second in picker.options

    search(at, "Mariana Trench", "text")
    assert "#1 · notes.pdf" in texts(at.markdown)

    picker.set_value(second).run()
    assert not at.exception, at.exception
    assert at.sidebar.selectbox[0].value == second
    assert "This collection is empty" in texts(at.info)


def test_unreachable_milvus_address_is_one_clear_message(app_env, monkeypatch) -> None:
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    dead = f"milvus://127.0.0.1:{free_port()}/nowhere"  # nothing listens there

    at = run_app()
    at.sidebar.text_input[0].input(dead)
    next(b for b in at.sidebar.button if b.label == "Create").click()
    started = time.monotonic()
    at.run()
    assert time.monotonic() - started < 30  # bounded, not a hang
    assert not at.exception, at.exception
    errors = [e.value for e in at.sidebar.error]
    assert len(errors) == 1 and "Cannot reach Milvus at 127.0.0.1" in errors[0], errors
    assert "Traceback" not in texts(at.sidebar.error)
    assert not at.sidebar.selectbox[0].value.startswith("milvus://")  # still on the old one

    # The same address as the app's collection: the page says so, and the picker still works.
    monkeypatch.setenv("PAGELENS_COLLECTION", dead)
    started = time.monotonic()
    at = run_app()
    assert time.monotonic() - started < 30
    assert len(at.error) == 1 and "Cannot reach Milvus" in at.error[0].value
    assert "Traceback" not in texts(at.error)
    assert at.sidebar.selectbox, "the collection picker is still there to pick another one"


def test_milvus_server_dying_under_the_app_is_a_message_then_it_recovers(
    app_env, monkeypatch, tmp_path, tiny_embedder
) -> None:
    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer
    from tests.support.milvus_server import MilvusServer

    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    server = MilvusServer(tmp_path / "milvus-data").start()
    spec = f"milvus://{server.address}/dies"
    monkeypatch.setenv("PAGELENS_COLLECTION", spec)
    try:
        store = open_collection(spec)
        pdf = make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])
        Indexer(store, tiny_embedder, settings=RenderSettings.for_tokens(TOKENS)).add([pdf])
        store.close()
        at = run_app()
        assert "Documents (1)" in texts(at.sidebar.subheader)

        server.kill()
        started = time.monotonic()
        at.run()
        assert time.monotonic() - started < 60  # bounded by the timeout, not a hang
        assert not at.exception, at.exception
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and "Milvus at" in errors[0], errors
        assert at.sidebar.selectbox, "the picker stays, to choose another collection"

        server.start()  # same data, same port: the app carries on
        deadline = time.monotonic() + 60
        while True:
            at.run()
            assert not at.exception, at.exception
            if "Documents (1)" in texts(at.sidebar.subheader):
                break
            assert time.monotonic() < deadline, texts(at.error)
            time.sleep(1)
        search(at, "Westphalia treaty", "text")
        assert "#1 · a.pdf" in texts(at.markdown)
    finally:
        server.stop()
