"""Shared fixtures: every test gets its own PAGELENS_HOME, and the tiny GME checkpoint is
built once per session (random weights, real tokenizer and processor, saved with
``save_pretrained``) so that the real GME code path runs without any hub."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "pagelens-home"
    monkeypatch.setenv("PAGELENS_HOME", str(home))
    monkeypatch.setenv("PAGELENS_CACHE", str(tmp_path / "pagelens-cache"))
    monkeypatch.delenv("PAGELENS_MODEL", raising=False)
    for name in ("PAGELENS_LLM_URL", "PAGELENS_LLM_MODEL", "PAGELENS_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)  # no test talks to a real LLM
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from indexer.random_model import build_random_gme

    return build_random_gme(tmp_path_factory.mktemp("tiny-gme") / "model", size="tiny")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    from indexer import load_embedder

    return load_embedder(tiny_model_dir, device="cpu")


@pytest.fixture
def make_pdf(tmp_path: Path):
    """Write a PDF whose pages carry the given texts; returns its path."""
    import pymupdf

    def make(name: str, pages: list[str], folder: Path | None = None) -> Path:
        path = (folder or tmp_path / "docs") / name
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = pymupdf.open()
        for text in pages:
            page = doc.new_page(width=595, height=842)
            page.insert_textbox(pymupdf.Rect(50, 50, 545, 800), text, fontsize=14)
        doc.save(path)
        doc.close()
        return path

    return make


@pytest.fixture
def llm_stub(monkeypatch: pytest.MonkeyPatch):
    """A stub OpenAI-compatible chat server on a free loopback port, configured as the LLM
    (PAGELENS_LLM_URL/MODEL/API_KEY) for this test; see tests/llm_stub.py."""
    from tests.llm_stub import StubLLM

    stub = StubLLM().start()
    monkeypatch.setenv("PAGELENS_LLM_URL", stub.url)
    monkeypatch.setenv("PAGELENS_LLM_MODEL", "stub-vision-model")
    monkeypatch.setenv("PAGELENS_LLM_API_KEY", "sk-test-key")
    yield stub
    stub.stop()
