"""The web app's long-lived objects and per-session state: the cached model and open
collections (one per process), thumbnails, the session's defaults and flash messages.

Every page section (sidebar, library, search, export) reaches the model and the current
collection through here, so that they share the same cached objects.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app.web import widgets as ui
from app.web.services import AppSettings, ModelLoader, Workspace
from app.web.watching import WatchedFolders
from indexer.model.rerank import Reranker
from indexer.settings import ModelSettings

# -- long-lived objects (one per process) ----------------------------------------------


@st.cache_resource(show_spinner=False)
def get_model(settings: ModelSettings) -> ModelLoader:
    return ModelLoader(settings).start()


@st.cache_resource(show_spinner=False)
def get_workspace(path: str, settings: ModelSettings) -> Workspace:
    return Workspace(path, get_model(settings))


@st.cache_resource(show_spinner=False)
def get_watched(path: str, settings: ModelSettings) -> WatchedFolders:
    """The collection's watched folders, their watcher started once per process (reruns
    and other sessions get the same object, so never a second watcher)."""
    watched = WatchedFolders(get_workspace(path, settings))
    watched.start()
    return watched


@st.cache_resource(show_spinner=False)
def get_reranker(configured: tuple[str | None, str | None]) -> tuple[Reranker | None, str | None]:
    """The configured reranker and why it is missing (None, None when none is configured),
    loaded once per configuration (``configured``: the rerank URL and model, the cache key).
    A reranker that cannot load leaves search as it was, with its one paragraph to show."""
    from indexer.errors import ModelNotAvailableError
    from indexer.model.rerank import loading

    try:
        return loading.configured_reranker(), None
    except ModelNotAvailableError as exc:
        return None, str(exc)


def reranker_config() -> tuple[str | None, str | None]:
    """What configures the reranker (``PAGELENS_RERANK_URL``, ``PAGELENS_RERANK_MODEL``)."""
    from indexer import config

    return config.get(config.RERANK_URL_ENV), config.get(config.RERANK_MODEL_ENV)


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, mtime: float, max_side: int) -> bytes:
    return ui.thumbnail_bytes(path, max_side)


def thumb(path: str | Path, max_side: int) -> bytes | None:
    p = Path(path)
    try:
        return thumbnail(str(p), p.stat().st_mtime, max_side)
    except OSError:
        return None


# -- per-session state -------------------------------------------------------------------


def state_defaults(settings: AppSettings) -> None:
    ss = st.session_state
    ss.setdefault("collection", settings.collection_spec)
    ss.setdefault("uploader_n", 0)
    ss.setdefault("upload_log", [])
    ss.setdefault("results", None)
    ss.setdefault("confirm_remove", None)
    ss.setdefault("flash", [])
    ss.setdefault("export_cache", {})


def flash(kind: str, message: str) -> None:
    st.session_state.flash.append((kind, message))


def show_flash() -> None:
    for kind, message in st.session_state.flash:
        getattr(st, kind)(message)
    st.session_state.flash = []


def model_key() -> ModelSettings:
    return st.session_state.settings.model


def current_workspace() -> Workspace:
    return get_workspace(st.session_state.collection, model_key())


def current_watched() -> WatchedFolders:
    return get_watched(st.session_state.collection, model_key())
