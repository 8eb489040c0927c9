"""The app's "Watched folders" panel, driven headless with ``streamlit.testing.v1.AppTest``:
add a folder (a bad path is refused), see its sync and counts, stop watching it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from indexer.config import collection_path
from indexer.stores import open_collection
from tests.support.pdfs import TOPICS, make_text_pdf
from tests.test_app import APP, texts
from tests.test_watch import wait_for


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> Path:
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_DEVICE", "cpu")
    monkeypatch.setenv("PAGELENS_WATCH_SETTLE", "0.5")
    monkeypatch.delenv("PAGELENS_COLLECTION", raising=False)
    monkeypatch.delenv("PAGELENS_IMAGE_TOKENS", raising=False)
    return collection_path(None)


def run(at):
    at.run()
    assert not at.exception, at.exception
    return at


def watch(at, path: str):
    at.sidebar.text_input[-1].input(path)  # the panel's "Folder to watch"
    next(b for b in at.sidebar.button if b.label == "Watch").click()
    return run(at)


def test_watched_folders_panel(app_env: Path, tmp_path: Path) -> None:
    from streamlit.testing.v1 import AppTest

    folder = tmp_path / "docs"
    folder.mkdir()
    make_text_pdf(folder / "a.pdf", TOPICS[:2])
    at = run(AppTest.from_file(APP, default_timeout=60))
    assert "Watched folders" in texts(at.sidebar.subheader)
    assert "No folder is watched" in texts(at.sidebar.caption)

    at = watch(at, str(tmp_path / "missing"))
    assert "no such folder" in texts(at.sidebar.error)

    at = watch(at, str(folder))
    assert (app_env / "watched.json").exists()
    store = open_collection(app_env)
    wait_for(lambda: store.stats().documents == 1)
    store.close()
    deadline = time.monotonic() + 30
    while "1 added" not in texts(at.sidebar.caption) and time.monotonic() < deadline:
        time.sleep(0.3)
        at = run(at)
    captions = texts(at.sidebar.caption)
    assert "last sync" in captions and "1 added" in captions, captions
    assert "Documents (1)" in texts(at.sidebar.subheader)

    next(b for b in at.sidebar.button if b.label == "Stop watching").click()
    at = run(at)
    assert "No folder is watched" in texts(at.sidebar.caption)
    assert '"folders": []' in (app_env / "watched.json").read_text()
