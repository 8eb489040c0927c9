"""PageLens web app: the page entry, launched by path (layout only; every action is a
library call). The page's sections live in :mod:`app.web`.

Start it with ``pagelens app`` (which passes the CLI's --collection/--model/--device/
--image-tokens on as environment variables) or ``streamlit run app/streamlit_app.py``.
Environment: PAGELENS_HOME, PAGELENS_COLLECTION, PAGELENS_MODEL, PAGELENS_DEVICE,
PAGELENS_DTYPE, PAGELENS_IMAGE_TOKENS, PAGELENS_MAX_UPLOAD_MB (default 200; Streamlit's own
``server.maxUploadSize`` must be at least as large for bigger files).
"""

from __future__ import annotations

import streamlit as st

from app.web import widgets as ui
from app.web.auth import require_password
from app.web.folders import watched_folders_panel
from app.web.library import upload_section
from app.web.search import results_section, search_form
from app.web.services import AppSettings
from app.web.session import (
    current_watched,
    current_workspace,
    get_model,
    model_key,
    show_flash,
    state_defaults,
)
from app.web.sidebar import collection_picker, documents_panel, live_status
from indexer.errors import PageLensError
from indexer.model.runtime.cpu_heap import keep_freed_memory
from indexer.stores import is_milvus_spec
from retriever.escaping import for_markdown


def footer() -> None:
    st.divider()
    st.caption(
        f"Built with GME (Alibaba-NLP gme-Qwen2-VL) · PageLens {ui.app_version()} · "
        f"collection {st.session_state.get('collection', '?')}"
    )


def main() -> None:
    st.set_page_config(page_title="PageLens", page_icon=ui.page_icon(), layout="wide")
    st.set_option("client.toolbarMode", "minimal")  # also for a bare 'streamlit run'
    keep_freed_memory()  # the app owns its process: page batches reuse freed buffers
    if not require_password():  # exposed beyond this computer: nothing shows before it
        return
    try:
        settings = AppSettings.from_env()
    except PageLensError as exc:
        st.error(str(exc))
        footer()
        return
    st.session_state.settings = settings
    state_defaults(settings)
    model = get_model(model_key())
    try:
        ws = current_workspace()
        # One call that fails (within PAGELENS_MILVUS_TIMEOUT) when a collection's server
        # stopped answering since it was opened: one message, not a traceback mid-page.
        stats = ws.store.stats()
    except PageLensError as exc:
        with st.sidebar:
            collection_picker()
        st.error(str(exc))
        footer()
        return

    opened = st.session_state.setdefault("milvus_opened", [])
    if is_milvus_spec(st.session_state.collection) and st.session_state.collection not in opened:
        opened.append(st.session_state.collection)  # the picker offers it (and its server's)

    with st.sidebar:
        st.title(":material/search: PageLens")
        collection_picker()
        st.divider()
        seen = (model.state, ws.job.state)
        busy = model.state == "loading" or ws.job.running
        st.fragment(run_every=1.0 if busy else None)(live_status)(ws, model, seen)
        st.divider()
        watched = current_watched()
        every = 2.0 if watched.folders else None  # settling, syncing: shown as it happens
        st.fragment(run_every=every)(watched_folders_panel)(watched, watched.syncs)
        st.divider()
        try:
            documents_panel(ws)
        except PageLensError as exc:
            st.error(str(exc))

    st.title("PageLens")
    st.caption(
        f"Ask questions of your PDFs and get back the pages that answer · collection "
        f"**{for_markdown(ws.path.name)}** · {stats.documents} document(s) · {stats.pages} page(s)"
    )
    show_flash()
    mismatch = ws.model_mismatch()
    if mismatch:  # flagged as 'pagelens check' does, before anyone searches or uploads
        st.error(mismatch, icon=":material/error:")
    try:
        upload_section(ws)
        if stats.pages == 0:
            st.info(
                "This collection is empty. Drop PDFs or images above to add them: text search "
                "works as soon as their pages are stored, visual search once they are embedded."
            )
        else:
            search_form(ws, model)
            results_section(ws)
    except PageLensError as exc:
        st.error(str(exc))
    footer()


main()
