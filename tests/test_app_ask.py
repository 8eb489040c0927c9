"""The app's "Ask" panel (AppTest): the ticked pages go to the configured LLM (a stub on a
free loopback port), the answer streams back, citations open their page; without an LLM
URL nothing is sent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from indexer.config import collection_path
from indexer.pipeline import Indexer
from indexer.store import Collection
from tests.support.pdfs import TOPICS, make_text_pdf

APP = str(Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py")
QUESTION = "Which treaty ended the Thirty Years War?"
ANSWER = "It was the Treaty of Westphalia [a.pdf, p. 2], not [zz.pdf, p. 4]."


@pytest.fixture(scope="module")
def built_collection(tmp_path_factory: pytest.TempPathFactory, tiny_embedder) -> Path:
    root = tmp_path_factory.mktemp("ask-app")
    a = make_text_pdf(root / "in" / "a.pdf", TOPICS[:3])
    b = make_text_pdf(root / "in" / "b.pdf", TOPICS[3:5])
    with Collection(root / "collection") as store:
        Indexer(store, tiny_embedder).add([a, b])
    return root / "collection"


@pytest.fixture
def indexed(monkeypatch, tiny_model_dir: Path, built_collection: Path) -> Path:
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    monkeypatch.delenv("PAGELENS_COLLECTION", raising=False)
    target = collection_path(None)
    shutil.copytree(built_collection, target, ignore=shutil.ignore_patterns("write.lock"))
    return target


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def searched():
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    at.text_input(key="question").input(QUESTION)
    at.radio(key="mode").set_value("text")
    next(b for b in at.button if b.label == "Search").click()
    at.run()
    assert not at.exception, at.exception
    return at


def ask_button(at):
    return next(b for b in at.button if b.label == "Ask")


def test_ask_streams_answer_and_citations_open_pages(indexed, llm_stub):
    llm_stub.answer = ANSWER
    at = searched()
    # where the pages go is visible before anything is sent
    assert "127.0.0.1" in texts(at.caption) and "stub-vision-model" in texts(at.caption)
    assert not llm_stub.requests
    ask_button(at).click()
    at.run()
    assert not at.exception, at.exception
    assert len(llm_stub.requests) == 1
    req = llm_stub.last
    assert req.body["stream"] is True and req.body["model"] == "stub-vision-model"
    assert req.headers["authorization"] == "Bearer sk-test-key"
    assert f"Question: {QUESTION}" in req.texts
    assert len(req.images) == len([t for t in req.texts if t.startswith("[")]) >= 1
    assert ANSWER in texts(at.markdown)
    assert "zz.pdf, p. 4" in texts(at.warning) and "not verified" in texts(at.warning)
    assert "1648" not in texts(at.markdown)
    cite = next(b for b in at.button if b.label == "a.pdf · p. 2")
    cite.click()
    at.run()
    assert not at.exception, at.exception
    assert ANSWER in texts(at.markdown)  # still shown, not asked again
    assert len(llm_stub.requests) == 1
    # the page's dialog opened: its text layer ("...Thirty Years War in 1648.") is shown
    assert "1648" in texts(at.markdown)


def test_ask_error_is_a_message(indexed, llm_stub, monkeypatch):
    monkeypatch.setenv("PAGELENS_LLM_RETRIES", "0")
    llm_stub.fail_next(500)
    at = searched()
    ask_button(at).click()
    at.run()
    assert not at.exception, at.exception
    assert "server error (500: stub says 500)" in texts(at.error)


def test_without_llm_url_nothing_is_sent(indexed):
    at = searched()
    assert ask_button(at).disabled
    assert "Nothing is sent anywhere until you choose an LLM" in texts(at.caption)
