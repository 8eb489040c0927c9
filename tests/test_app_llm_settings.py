"""The Ask panel's LLM settings (AppTest): endpoint, model and key chosen in the app apply
without a restart, nothing is sent before Ask, a bad URL is a clear message that loses
nothing, the typed key is never shown again nor written anywhere, and the environment's
key stays with the environment's URL."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from indexer.config import collection_path
from indexer.errors import PageLensError
from retriever.llm import LLMSettings
from tests.support.llm_stub import StubLLM
from tests.test_app_ask import ask_button, built_collection, searched, texts  # noqa: F401

TYPED_KEY = "sk-typed-0123456789-secret"
ENV = {
    "PAGELENS_LLM_URL": "http://127.0.0.1:9/v1",
    "PAGELENS_LLM_MODEL": "env-model",
    "PAGELENS_LLM_API_KEY": "sk-env",
}


# -- the rule, in the library ------------------------------------------------------------


def test_chosen_keeps_the_environment_key_to_its_url():
    same = LLMSettings.chosen(url="http://127.0.0.1:9/v1/", env=ENV)
    assert same.api_key == "sk-env" and same.model == "env-model"
    other = LLMSettings.chosen(url="http://10.0.0.5:8000/v1", model="m2", env=ENV)
    assert other.url == "http://10.0.0.5:8000/v1" and other.model == "m2"
    assert other.api_key is None  # the env key is never handed to another server
    typed = LLMSettings.chosen(url="http://10.0.0.5:8000/v1", api_key="sk-t", env=ENV)
    assert typed.api_key == "sk-t"
    assert LLMSettings.chosen(env={}).configured is False
    assert TYPED_KEY not in repr(LLMSettings.chosen(api_key=TYPED_KEY, env=ENV))


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("localhost:11434", "must be an http(s) URL"),
        ("ftp://example.com/v1", "must be an http(s) URL"),
        ("http://user:pw@example.com/v1", "must not carry a user name or password"),
    ],
)
def test_chosen_refuses_a_bad_url(url, words):
    with pytest.raises(PageLensError, match=re.escape(f"The LLM endpoint {words}")):
        LLMSettings.chosen(url=url, env=ENV)


# -- the app -------------------------------------------------------------------------------


@pytest.fixture
def indexed(monkeypatch, tiny_model_dir: Path, built_collection: Path) -> Path:  # noqa: F811
    import shutil

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    monkeypatch.setenv("PAGELENS_LLM_RETRIES", "0")
    monkeypatch.delenv("PAGELENS_COLLECTION", raising=False)
    target = collection_path(None)
    shutil.copytree(built_collection, target, ignore=shutil.ignore_patterns("write.lock"))
    return target


@pytest.fixture
def stub():
    server = StubLLM().start()
    server.answer = "The Treaty of Westphalia [a.pdf, p. 2]."
    yield server
    server.stop()


def choose(at, *, url: str | None = None, model: str | None = None, key: str | None = None):
    if url is not None:
        at.text_input(key="llm_url_input").input(url)
    if model is not None:
        at.text_input(key="llm_model_input").input(model)
    if key is not None:
        at.text_input(key="llm_key_input").input(key)
    next(b for b in at.button if b.label == "Use these settings").click()
    at.run()
    assert not at.exception, at.exception


def shown(at) -> str:
    """Everything the page carries: every element's value, label and text."""
    parts = [str(w.value) for w in at.text_input]
    for root in (at.main, at.sidebar):
        parts += [str(getattr(e, "proto", "")) for e in root]
    text = "\n".join(parts)
    assert "Ask an LLM about these pages" in text  # the walk does reach the panel
    return text


def files_hold(folder: Path, secret: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


def test_settings_chosen_in_the_app_apply_without_restart(indexed, stub, monkeypatch):
    for name in ("PAGELENS_LLM_URL", "PAGELENS_LLM_MODEL", "PAGELENS_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    at = searched()
    assert ask_button(at).disabled
    assert "Nothing is sent anywhere until you choose an LLM" in texts(at.caption)
    choose(at, url=stub.url, model="typed-model", key=TYPED_KEY)
    assert "Settings applied" in texts(at.success)
    assert not stub.requests  # applying sends nothing
    assert "127.0.0.1" in texts(at.caption) and "typed-model" in texts(at.caption)
    assert at.text_input(key="llm_key_input").value == ""
    assert TYPED_KEY not in shown(at)
    assert "typed in this session" in texts(at.caption)

    ask_button(at).click()
    at.run()
    assert not at.exception, at.exception
    assert len(stub.requests) == 1
    assert stub.last.body["model"] == "typed-model"
    assert stub.last.headers["authorization"] == f"Bearer {TYPED_KEY}"
    assert "Treaty of Westphalia" in texts(at.markdown)
    assert TYPED_KEY not in shown(at)
    assert files_hold(indexed.parent, TYPED_KEY) == []  # collection, uploads, home

    next(b for b in at.button if b.label == "Forget key").click()
    at.run()
    assert "forgotten" in texts(at.info)
    ask_button(at).click()
    at.run()
    assert stub.last.headers["authorization"] == "Bearer no-key"


def test_a_bad_url_is_a_message_and_loses_the_key_not(indexed, stub, monkeypatch):
    for name in ("PAGELENS_LLM_URL", "PAGELENS_LLM_MODEL", "PAGELENS_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    at = searched()
    choose(at, url="localhost:11434/v1", key=TYPED_KEY)
    assert "The LLM endpoint must be an http(s) URL" in texts(at.error)
    assert ask_button(at).disabled and not stub.requests
    assert TYPED_KEY not in shown(at)
    choose(at, url=stub.url)  # the key typed before the mistake is still used
    ask_button(at).click()
    at.run()
    assert stub.last.headers["authorization"] == f"Bearer {TYPED_KEY}"


def test_the_environment_key_stays_with_its_url(indexed, llm_stub):
    """PAGELENS_LLM_* give the defaults; another endpoint chosen in the app never gets the
    environment's key; "Use the defaults" goes back to them."""
    other = StubLLM().start()
    try:
        at = searched()
        assert at.text_input(key="llm_url_input").value == llm_stub.url
        assert "from PAGELENS_LLM_API_KEY" in texts(at.caption)
        assert "sk-test-key" not in shown(at)
        choose(at, url=other.url)
        ask_button(at).click()
        at.run()
        assert not llm_stub.requests and len(other.requests) == 1
        assert other.last.headers["authorization"] == "Bearer no-key"
        next(b for b in at.button if b.label == "Use the defaults").click()
        at.run()
        ask_button(at).click()
        at.run()
        assert len(llm_stub.requests) == 1
        assert llm_stub.last.headers["authorization"] == "Bearer sk-test-key"
    finally:
        other.stop()


def test_a_url_with_a_password_is_never_shown(indexed, monkeypatch):
    monkeypatch.setenv("PAGELENS_LLM_URL", "http://me:pw-in-the-url@127.0.0.1:9/v1")
    at = searched()
    assert at.text_input(key="llm_url_input").value == ""
    assert "pw-in-the-url" not in shown(at)
    assert "127.0.0.1:9" in texts(at.caption)  # where the pages would go, without the password
