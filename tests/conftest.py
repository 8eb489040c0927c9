"""Shared fixtures: every test gets its own PAGELENS_HOME, and the tiny GME checkpoint is
built once per session (random weights, real tokenizer and processor, saved with
``save_pretrained``) so that the real GME code path runs without any hub."""

from __future__ import annotations

from pathlib import Path

import pytest

# PyMuPDF first through PageLens, which imports it without its telemetry add-ons (see
# indexer/pages/mupdf.py): a test's own ``import pymupdf`` then finds that module.
import indexer.pages.mupdf  # noqa: F401


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
    from indexer.model.gme.random import build_random_gme

    return build_random_gme(tmp_path_factory.mktemp("tiny-gme") / "model", size="tiny")


@pytest.fixture(scope="session")
def tiny_embedder(tiny_model_dir: Path):
    from indexer import load_embedder

    return load_embedder(tiny_model_dir, device="cpu")


_LOADED_MODELS: dict = {}


@pytest.fixture
def reuse_loaded_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each CLI command loads its model; a test running many commands on the tiny checkpoint
    gets the one already loaded with the same arguments in this session (the real GME code
    path, loaded once instead of once per command and engine). Failures are not kept."""
    import indexer

    real = indexer.load_embedder

    def load(target, **options):
        key = (str(target), tuple(sorted((k, repr(v)) for k, v in options.items())))
        if key not in _LOADED_MODELS:
            _LOADED_MODELS[key] = real(target, **options)
        return _LOADED_MODELS[key]

    monkeypatch.setattr(indexer, "load_embedder", load)


@pytest.fixture
def make_pdf(tmp_path: Path):
    """Write a PDF whose pages carry the given texts; returns its path."""
    from indexer.pages.mupdf import pymupdf

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
    (PAGELENS_LLM_URL/MODEL/API_KEY) for this test; see tests/support/llm_stub.py."""
    from tests.support.llm_stub import StubLLM

    stub = StubLLM().start()
    monkeypatch.setenv("PAGELENS_LLM_URL", stub.url)
    monkeypatch.setenv("PAGELENS_LLM_MODEL", "stub-vision-model")
    monkeypatch.setenv("PAGELENS_LLM_API_KEY", "sk-test-key")
    yield stub
    stub.stop()


# -- store engines -------------------------------------------------------------------------
# Behavioural store/retriever/CLI tests take ``store_spec`` (or ``open_store``) and run once
# per engine: the local folder and Milvus (a real milvus-lite gRPC server on a loopback port,
# shared by the session; each test gets its own collection name).

ENGINES = ("local", "milvus")


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("pymilvus", reason="the milvus extra is not installed")
    from tests.support.milvus_server import MilvusServer, milvus_lite_command

    if milvus_lite_command() is None:
        pytest.skip("milvus-lite is not installed (the milvus extra)")
    server = MilvusServer(tmp_path_factory.mktemp("milvus") / "data").start()
    yield server
    server.stop()


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_spec(engine: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh collection spec for the engine: a folder, or ``milvus://127.0.0.1:P/NAME``."""
    if engine == "local":
        yield str(tmp_path / "collection")
        return
    server = request.getfixturevalue("milvus_server")
    import uuid

    spec = f"milvus://{server.address}/t_{uuid.uuid4().hex[:12]}"
    yield spec
    from indexer.stores.milvus.collection import MilvusCollection

    try:
        store = MilvusCollection.from_spec(spec, create=False)
    except Exception:
        return
    store.drop()
    store.close()


@pytest.fixture
def open_store(store_spec: str):
    """``open_store(**kw)`` opens the test's collection (the same one on every call)."""
    from indexer.stores import open_collection

    opened = []

    def make(**kwargs):
        store = open_collection(store_spec, **kwargs)
        opened.append(store)
        return store

    yield make
    for store in opened:
        try:
            store.close()
        except Exception:
            pass
