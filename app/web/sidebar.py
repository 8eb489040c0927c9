"""The sidebar: the collection picker (folders and Milvus collections), the model and
embedding status (refreshing itself while something runs), and the documents panel."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from app.web import widgets as ui
from app.web.services import ModelLoader, Workspace, validate_collection_name
from app.web.session import flash, get_workspace, model_key, thumb
from indexer.config import collection_path, home, list_collections
from indexer.errors import PageLensError
from indexer.pipeline import format_duration
from indexer.stores import is_milvus_spec, server_collections
from retriever.escaping import for_markdown

MILVUS_RELIST_S = 30.0


def milvus_options() -> list[str]:
    """The Milvus collections the picker offers: those opened in this session and every
    PageLens collection on their servers (listed again at most every 30 s; a server that
    does not answer offers what was opened there)."""
    ss = st.session_state
    opened: list[str] = ss.setdefault("milvus_opened", [])
    cached = ss.get("milvus_listing")
    if cached and cached[0] == tuple(opened) and time.monotonic() - cached[1] < MILVUS_RELIST_S:
        return list(cached[2])
    found = list(opened)
    servers: set[str] = set()
    for spec in opened:
        server = spec.split("?", 1)[0].rsplit("/", 1)[0]
        if server in servers:
            continue
        servers.add(server)
        try:
            found += server_collections(get_workspace(spec, model_key()).store)
        except PageLensError:
            continue  # unreachable now: offer what was opened; opening it says why
    bare = {spec.split("?", 1)[0] for spec in opened}  # opened with ?images=: not twice
    options = list(dict.fromkeys(opened + [s for s in found if s not in bare]))
    ss.milvus_listing = (tuple(opened), time.monotonic(), tuple(options))
    return options


def collection_picker() -> None:
    current = st.session_state.collection
    root = home().expanduser().resolve()
    options = [str((root / n).resolve()) for n in list_collections()]
    options += [m for m in milvus_options() if m not in options]
    if current not in options:
        options.insert(0, current)

    def label(p: str) -> str:
        return Path(p).name if Path(p).parent == root else p

    choice = st.selectbox(
        "Collection",
        options,
        index=options.index(current),
        format_func=label,
        help=f"Collections live in {root} (PAGELENS_HOME), or on a Milvus server: type its "
        "milvus://HOST:PORT/NAME under New collection.",
    )
    if choice != current:
        st.session_state.collection = choice
        st.session_state.results = None
        st.session_state.confirm_remove = None
        st.rerun()
    with st.expander("New collection"):
        with st.form("new-collection", clear_on_submit=True, border=False):
            name = st.text_input(
                "Name", placeholder="e.g. reports-2024, or milvus://host:19530/reports"
            )
            if st.form_submit_button("Create"):
                try:
                    if is_milvus_spec(name.strip()):  # a shared collection on a Milvus server
                        spec = name.strip()
                        get_workspace(spec, model_key())
                        st.session_state.collection = spec
                        st.session_state.results = None
                        flash("success", f"Opened collection {spec}.")
                        st.rerun()
                    name = validate_collection_name(name)
                    path = collection_path(name).expanduser().resolve()
                    if (path / "catalog.sqlite").exists():
                        st.error(f"A collection named '{name}' already exists.")
                    else:
                        get_workspace(str(path), model_key())
                        st.session_state.collection = str(path)
                        st.session_state.results = None
                        flash("success", f"Created collection '{name}'.")
                        st.rerun()
                except PageLensError as exc:
                    st.error(str(exc))


def model_status(model: ModelLoader) -> None:
    info = model.info()
    badge = {
        "ready": ":green-badge[loaded]",
        "loading": ":orange-badge[loading…]",
        "failed": ":red-badge[not available]",
        "idle": ":gray-badge[not loaded]",
    }[info["state"]]
    st.markdown(f"**Model** · {badge}")
    details = [f"`{ui.short_model(info['model_id'])}`", info["device"], info["dtype"]]
    if info["dim"]:
        details.append(f"dim {info['dim']}")
    if info["max_image_tokens"]:
        details.append(f"{info['max_image_tokens']} visual tokens/page")
    st.caption(" · ".join(details), help=str(info["model_id"]))
    if info["state"] == "failed":
        st.error(f"{info['error']} Text search still works.")


def embedding_status(ws: Workspace, model: ModelLoader) -> None:
    stats = ws.store.stats()
    job = ws.job
    if job.running:
        p = job.progress
        if p is None or (model.state == "loading"):
            st.progress(0.0, text="Embedding: waiting for the model to load…")
        else:
            st.progress(ui.progress_value(p), text=ui.progress_text(p, "Embedding"))
        if st.button(
            "Pause embedding",
            key="pause-embed",
            help="Stops after the current batch; what is embedded is kept.",
        ):
            job.stop(timeout=0)
            st.rerun()
    elif stats.pending:
        est = job.estimate_seconds(stats.pending)
        how = "measured" if job.rate else "rough guess"
        eta = f" · about {format_duration(est)} ({how})" if est is not None else ""
        st.info(
            f"{stats.pending} of {stats.pages} pages wait for vectors{eta}. "
            "Until then every search finds them through their text layer."
        )
        if st.button(
            "Embed pending pages",
            key="start-embed",
            type="primary",
            disabled=model.state == "failed",
        ):
            job.start()
            st.rerun()
    elif stats.pages:
        st.caption(f"✓ All {stats.pages} pages embedded.")
    if job.error and not job.running:
        st.error(job.error)


def live_status(ws: Workspace, model: ModelLoader, seen: tuple) -> None:
    """Model and embedding status; refreshes itself while something is in flight."""
    model_status(model)
    try:
        embedding_status(ws, model)
    except PageLensError as exc:  # e.g. a Milvus server that stopped answering
        st.error(str(exc))
    if (model.state, ws.job.state) != seen:
        st.rerun()  # something finished: refresh the whole page (counts, modes)


def documents_panel(ws: Workspace) -> None:
    docs = ws.store.documents()
    st.subheader(f"Documents ({len(docs)})")
    if not docs:
        st.caption("No documents yet: drop PDFs or images on the page.")
    for d in docs:
        with st.container(border=True):
            left, right = st.columns([1, 2], vertical_alignment="center")
            page = ws.first_page(d.id)
            image = thumb(ws.store.image_path(page), 200) if page else None
            if image:
                left.image(image, width="stretch")
            right.markdown(f"**{for_markdown(d.name)}**")
            state = "" if d.ready else " · incomplete"
            right.caption(
                f"{d.page_count} pages · {d.pages_embedded}/{d.pages_stored} embedded · "
                f"added {ui.when(d.added_at)}{state}"
            )
            if st.session_state.confirm_remove == d.id:
                st.warning(
                    f"Remove **{for_markdown(d.name)}**? Its {d.page_count} pages, vectors and "
                    "images are deleted from the collection."
                )
                yes, no = st.columns(2)
                if yes.button("Yes, remove", key=f"rm-yes-{d.id}", type="primary"):
                    st.session_state.confirm_remove = None
                    try:
                        with st.spinner(f"Removing {for_markdown(d.name)}…"):
                            ws.remove(d.id)
                        flash("success", f"Removed {for_markdown(d.name)} ({d.page_count} pages).")
                    except PageLensError as exc:
                        flash("error", str(exc))
                    st.rerun()
                if no.button("Cancel", key=f"rm-no-{d.id}"):
                    st.session_state.confirm_remove = None
                    st.rerun()
            elif right.button("Remove", key=f"rm-{d.id}", icon=":material/delete:"):
                st.session_state.confirm_remove = d.id
                st.rerun()
