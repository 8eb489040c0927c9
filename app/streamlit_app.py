"""PageLens web app: layout only; every action is a library call.

Start it with ``pagelens app`` (which passes the CLI's --collection/--model/--device/
--image-tokens on as environment variables) or ``streamlit run app/streamlit_app.py``.
Environment: PAGELENS_HOME, PAGELENS_COLLECTION, PAGELENS_MODEL, PAGELENS_DEVICE,
PAGELENS_DTYPE, PAGELENS_IMAGE_TOKENS, PAGELENS_MAX_UPLOAD_MB (default 200; Streamlit's own
``server.maxUploadSize`` must be at least as large for bigger files).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import streamlit as st

from app import ui_helpers as ui
from app.services import AppSettings, ModelLoader, Workspace, validate_collection_name
from app.ui_ask import ask_panel
from app.ui_auth import require_password
from app.uploads import discard_upload, max_upload_mb, save_upload
from indexer.config import collection_path, home, list_collections
from indexer.model.runtime.cpu_heap import keep_freed_memory
from indexer.errors import PageLensError
from indexer.pages import IMAGE_SUFFIXES, SUPPORTED_SUFFIXES
from indexer.pipeline import format_duration
from indexer.settings import ModelSettings
from indexer.stores import is_milvus_spec, server_collections
from retriever.escaping import for_markdown
from retriever.export import ExportSettings, to_markdown, to_openai_messages, zip_bytes
from retriever.search import MODES, PageRange, Retriever

GRID_COLUMNS = 4
MB = 1024 * 1024
MODE_HELP = {
    "visual": "GME: the meaning of the question against the page images",
    "text": "BM25 over the pages' text layer: exact words, names, numbers",
    "hybrid": "both rankings fused (reciprocal rank fusion)",
}


# -- long-lived objects (one per process) ----------------------------------------------
@st.cache_resource(show_spinner=False)
def get_model(settings: ModelSettings) -> ModelLoader:
    return ModelLoader(settings).start()


@st.cache_resource(show_spinner=False)
def get_workspace(path: str, settings: ModelSettings) -> Workspace:
    return Workspace(path, get_model(settings))


@st.cache_data(show_spinner=False, max_entries=4000)
def thumbnail(path: str, mtime: float, max_side: int) -> bytes:
    return ui.thumbnail_bytes(path, max_side)


def thumb(path: str | Path, max_side: int) -> bytes | None:
    p = Path(path)
    try:
        return thumbnail(str(p), p.stat().st_mtime, max_side)
    except OSError:
        return None


def _state_defaults(settings: AppSettings) -> None:
    ss = st.session_state
    ss.setdefault("collection", settings.collection_spec)
    ss.setdefault("uploader_n", 0)
    ss.setdefault("upload_log", [])
    ss.setdefault("results", None)
    ss.setdefault("confirm_remove", None)
    ss.setdefault("flash", [])
    ss.setdefault("export_cache", {})


def _flash(kind: str, message: str) -> None:
    st.session_state.flash.append((kind, message))


def _show_flash() -> None:
    for kind, message in st.session_state.flash:
        getattr(st, kind)(message)
    st.session_state.flash = []


# -- sidebar ---------------------------------------------------------------------------
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
                        _flash("success", f"Opened collection {spec}.")
                        st.rerun()
                    name = validate_collection_name(name)
                    path = collection_path(name).expanduser().resolve()
                    if (path / "catalog.sqlite").exists():
                        st.error(f"A collection named '{name}' already exists.")
                    else:
                        get_workspace(str(path), model_key())
                        st.session_state.collection = str(path)
                        st.session_state.results = None
                        _flash("success", f"Created collection '{name}'.")
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
                        _flash("success", f"Removed {for_markdown(d.name)} ({d.page_count} pages).")
                    except PageLensError as exc:
                        _flash("error", str(exc))
                    st.rerun()
                if no.button("Cancel", key=f"rm-no-{d.id}"):
                    st.session_state.confirm_remove = None
                    st.rerun()
            elif right.button("Remove", key=f"rm-{d.id}", icon=":material/delete:"):
                st.session_state.confirm_remove = d.id
                st.rerun()


# -- adding documents --------------------------------------------------------------------
def _raise_server_upload_cap(limit_mb: int) -> None:
    """Let Streamlit's server accept files up to PageLens's limit (it reads the option per
    request); ``pagelens app`` also sets it at start-up."""
    try:
        from streamlit import config as st_config

        if int(st_config.get_option("server.maxUploadSize")) < limit_mb:
            st_config.set_option("server.maxUploadSize", limit_mb)
    except Exception:  # an internal API: without it the configured cap simply stays
        pass


def upload_section(ws: Workspace) -> None:
    limit = max_upload_mb()
    _raise_server_upload_cap(limit)
    types = sorted(s.lstrip(".") for s in SUPPORTED_SUFFIXES)
    files = st.file_uploader(
        "Add documents: drop PDFs or images here",
        type=types,
        accept_multiple_files=True,
        max_upload_size=limit,
        key=f"uploader-{st.session_state.uploader_n}",
        help=f"Up to {limit} MB per file (PAGELENS_MAX_UPLOAD_MB). Files are stored in the "
        "collection folder.",
    )
    if files:
        index_uploads(ws, files, limit)
        st.session_state.uploader_n += 1  # a fresh, empty uploader
        st.rerun()
    upload_log(ws)


def index_uploads(ws: Workspace, files: list, limit_mb: int) -> None:
    log: list[dict] = []
    saved: list[Path] = []
    names: dict[str, str] = {}
    for f in files:
        try:
            path = save_upload(ws.path, f.name, f, max_bytes=limit_mb * MB)
        except PageLensError as exc:
            log.append(
                {
                    "name": f.name,
                    "path": None,
                    "status": "refused",
                    "reason": getattr(exc, "reason", None),
                    "message": str(exc),
                }
            )
            continue
        if str(path) in names:
            log.append(
                {
                    "name": f.name,
                    "path": str(path),
                    "status": "skipped",
                    "message": "",
                    "existing": names[str(path)],
                }
            )
            continue
        saved.append(path)
        names[str(path)] = f.name
    if saved:
        st.session_state.upload_log = log
        _run_indexing(ws, saved, names, {}, log)
    st.session_state.upload_log = log


def _run_indexing(
    ws: Workspace,
    paths: list[Path],
    names: dict[str, str],
    passwords: dict[str, str],
    log: list[dict],
) -> None:
    with st.status(f"Adding {len(paths)} file(s)…", expanded=True) as status:
        bar = st.progress(0.0, text="Reading files…")
        lines = st.container()

        def on_progress(p) -> None:
            bar.progress(ui.progress_value(p), text=ui.progress_text(p, "Storing pages"))

        def on_file(result) -> None:
            entry = ui.file_entry(result, names)
            log.append(entry)
            with lines:
                show_entry(entry, interactive=False)

        try:
            report = ws.add_files(
                paths,
                names=names,
                passwords=passwords,
                progress=on_progress,
                on_file=on_file,
                on_wait=lambda m: _say(lines, m),
            )
        except PageLensError as exc:
            status.update(label=str(exc), state="error")
            log.append({"name": "", "status": "refused", "message": str(exc)})
            return
        n_ok = sum(1 for r in report.files if r.status in ("added", "resumed"))
        status.update(
            label=f"{n_ok} file(s) added, {report.pages_stored} pages stored in "
            f"{report.seconds:.1f}s; embedding continues in the background.",
            state="error" if report.refused and not n_ok else "complete",
        )


def show_entry(entry: dict, *, interactive: bool = True, index: int = 0) -> None:
    name, status = for_markdown(entry.get("name") or "file"), entry["status"]
    message = for_markdown(entry.get("message") or "")
    if status in ("added", "resumed"):
        verb = "added" if status == "added" else "completed"
        st.success(
            f"**{name}**: {entry.get('pages', 0)} pages {verb}. Text search works now; "
            "visual search as pages get embedded.",
            icon=":material/check_circle:",
        )
    elif status == "partial":
        st.warning(f"**{name}**: {message}", icon=":material/warning:")
    elif status == "skipped":
        same = entry.get("existing")
        st.info(
            f"**{name}** is already in the collection"
            + (f" (same content as '{for_markdown(same)}')." if same else "."),
            icon=":material/info:",
        )
    elif entry.get("reason") in ("needs-password", "wrong-password"):
        st.warning(f"**{name}**: {message}", icon=":material/lock:")
        if interactive and entry.get("path"):
            password_retry(entry, index)
    else:
        st.error(f"**{name}**: {message}", icon=":material/error:")


def password_retry(entry: dict, index: int) -> None:
    ws = current_workspace()
    with st.form(f"unlock-{index}", border=False):
        col_pw, col_go, col_drop = st.columns([3, 1, 1], vertical_alignment="bottom")
        password = col_pw.text_input("Password", type="password", key=f"pw-{index}")
        unlock = col_go.form_submit_button("Unlock and add", type="primary")
        drop = col_drop.form_submit_button("Forget file")
    if unlock:
        log = [e for e in st.session_state.upload_log if e is not entry]
        path = Path(entry["path"])
        _run_indexing(ws, [path], {str(path): entry["name"]}, {str(path): password}, log)
        st.session_state.upload_log = log
        st.rerun()
    if drop:
        discard_upload(ws.path, entry["path"])
        st.session_state.upload_log = [e for e in st.session_state.upload_log if e is not entry]
        st.rerun()


def upload_log(ws: Workspace) -> None:
    log = st.session_state.upload_log
    if not log:
        return
    for i, entry in enumerate(log):
        show_entry(entry, index=i)
    if st.button("Clear messages", key="clear-log"):
        st.session_state.upload_log = []
        st.rerun()


# -- searching ---------------------------------------------------------------------------
def search_form(ws: Workspace, model: ModelLoader) -> None:
    docs = ws.store.documents()
    names = {d.id: d.name for d in docs}
    default_mode = "text" if model.state == "failed" else "visual"
    with st.form("search", border=True):
        col_q, col_img = st.columns([4, 1.3])
        question = col_q.text_input(
            "Question",
            key="question",
            placeholder="Ask a question and press Enter, e.g. which quarter had the best revenue?",
        )
        image_file = col_img.file_uploader(
            "Image (optional)",
            type=sorted(s.lstrip(".") for s in IMAGE_SUFFIXES),
            key="query_image",
            help="Search by an image, alone or with the question (visual or hybrid mode).",
        )
        col_mode, col_k, col_docs, col_pages = st.columns([1.6, 0.8, 2.2, 1])
        mode = col_mode.radio(
            "Mode",
            MODES,
            index=MODES.index(default_mode),
            horizontal=True,
            key="mode",
            captions=None,
            help=" · ".join(f"{m}: {h}" for m, h in MODE_HELP.items()),
        )
        k = col_k.number_input("Pages (k)", min_value=1, max_value=50, value=8, key="k")
        only = col_docs.multiselect(
            "Only in documents",
            list(names),
            format_func=lambda i: names.get(i, str(i)),
            key="only_docs",
            placeholder="all documents",
        )
        page_range = col_pages.text_input("Page range", key="page_range", placeholder="e.g. 3-7")
        submitted = st.form_submit_button("Search", type="primary", icon=":material/search:")
    if submitted:
        run_search(ws, model, question, image_file, mode, int(k), only, page_range)


def run_search(ws, model, question, image_file, mode, k, only, page_range) -> None:
    question = (question or "").strip()
    if not question and image_file is None:
        st.session_state.results = None
        st.info("Type a question (or add an image) and press Enter to search.")
        return
    try:
        pages = PageRange.parse(page_range)
        image = _open_query_image(image_file) if image_file is not None else None
        if image is not None and mode == "text":
            st.warning("The image is not used in text mode; choose visual or hybrid for it.")
            image = None
        embedder = None
        if mode != "text":
            if model.state != "ready":
                with st.spinner("Loading the model (first search only)…"):
                    embedder = model.wait(timeout=1800)
            else:
                embedder = model.wait()
        retriever = Retriever(embedder, ws.store)
        with st.spinner("Searching…"):
            hits = retriever.search(
                question, k, image=image, documents=only or None, pages=pages, mode=mode
            )
        pending = retriever.pending() if mode != "text" else 0
    except PageLensError as exc:
        st.error(str(exc))
        return
    st.session_state.results = {
        "id": time.time_ns(),
        "query": question,
        "image": image_file.name if image_file is not None else None,
        "mode": mode,
        "hits": hits,
        "pending": pending,
        # A text question can be asked again as more pages get their vectors.
        "rerun": (question, None, mode, k, only, page_range) if image_file is None else None,
    }


def _open_query_image(upload):
    """The uploaded query image, decoded as every user image is (format allow-list, pixel
    cap): a QueryError with the file's name otherwise."""
    from retriever.search import load_query_image

    return load_query_image(upload)


def open_page(hit, query: str) -> None:
    @st.dialog(f"{for_markdown(hit.document)} · page {hit.page}", width="large")
    def body() -> None:
        st.caption(f"score {hit.score:.4f}")
        left, right = st.columns([3, 2])
        left.image(hit.image, width="stretch")
        with right.expander("Text layer", expanded=True):
            if hit.text.strip():
                st.markdown(ui.highlight_html(hit.text, query), unsafe_allow_html=True)
            else:
                st.caption("This page has no text layer (a scan or a picture).")

    body()


def refresh_offer(ws: Workspace, res: dict) -> None:
    """A "Refresh results" button once pages of this search's pending ones got vectors."""
    done = res["pending"] - ws.store.stats().pending
    if done > 0 and st.button(
        f"Refresh results ({done} more page(s) embedded since this search)",
        key=f"refresh-{res['id']}",
        icon=":material/refresh:",
    ):
        run_search(ws, get_model(model_key()), *res["rerun"])
        st.rerun(scope="app")


def results_section(ws: Workspace) -> None:
    res = st.session_state.results
    if not res:
        return
    alive = {d.id for d in ws.store.documents()}
    hits = [h for h in res["hits"] if h.document_id in alive]
    query, mode = res["query"], res["mode"]
    shown = f"“{query}”" if query else "the image"
    if res["image"] and query:
        shown += f" + image {res['image']}"
    st.subheader(f"{len(hits)} page(s) for {shown}")
    st.caption(f"{mode} search · best first")
    if res["pending"]:
        st.info(
            f"{res['pending']} page(s) still wait for vectors: until they have them, "
            f"{mode} search finds them through their text layer (marked “not embedded yet”)."
        )
        done = res["pending"] - ws.store.stats().pending
        if (
            done > 0
            and res.get("rerun")
            and st.button(
                f"Refresh results ({done} more page(s) embedded since this search)",
                key=f"refresh-{res['id']}",
                icon=":material/refresh:",
            )
        ):
            run_search(ws, get_model(model_key()), *res["rerun"])
            st.rerun()
    if not hits and res["hits"]:
        st.info("These results came from a document that has since been removed; search again.")
        return
    if not hits:
        st.warning("No pages found. Try other words, another mode, or fewer filters.")
        return
    ask_panel(res, [h for h in hits if st.session_state.get(_tick_key(res, h), True)], open_page)
    for start in range(0, len(hits), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for offset, hit in enumerate(hits[start : start + GRID_COLUMNS]):
            rank = start + offset + 1
            with cols[offset], st.container(border=True):
                image = thumb(hit.image, 640)
                if image:
                    st.image(image, width="stretch")
                st.markdown(f"**#{rank} · {for_markdown(hit.document)}**")
                st.caption(f"page {hit.page} · {ui.score_text(hit, mode)}")
                left, right = st.columns(2, vertical_alignment="center")
                left.checkbox("Export", value=True, key=_tick_key(res, hit))
                if right.button(
                    "Open", key=f"open-{res['id']}-{hit.page_id}", icon=":material/zoom_in:"
                ):
                    open_page(hit, query)
    export_section(res, hits)


def _tick_key(res: dict, hit) -> str:
    """The "Export" checkbox of a result page: ticked pages are exported and asked about."""
    return f"inc-{res['id']}-{hit.page_id}"


def export_section(res: dict, hits: list) -> None:
    st.subheader("Export for an LLM")
    chosen = [h for h in hits if st.session_state.get(_tick_key(res, h), True)]
    question = res["query"] or "Describe what these pages show."
    if not chosen:
        st.info("Tick “Export” on at least one page to build a prompt.")
        return
    with st.expander("Image settings"):
        c1, c2, c3 = st.columns(3)
        max_side = c1.number_input("Longest side (px)", 64, 4096, 1568, step=64, key="x_side")
        fmt = c2.selectbox("Format", ["jpeg", "png", "webp"], key="x_fmt")
        quality = c3.slider("Quality", 30, 100, 85, key="x_q", disabled=fmt == "png")
    try:
        settings = ExportSettings(
            max_side=int(max_side), image_format=str(fmt), quality=int(quality)
        )
    except ValueError as exc:
        st.error(str(exc))
        return
    key = (res["id"], tuple(h.page_id for h in chosen), settings)
    cache = st.session_state.export_cache
    if key not in cache:
        cache.clear()
        messages = to_openai_messages(question, chosen, settings=settings)
        cache[key] = (messages, json.dumps(messages, indent=1))
    messages, messages_json = cache[key]
    markdown = to_markdown(question, chosen)
    st.caption(f"{len(chosen)} of {len(hits)} page(s) included, in rank order.")
    c1, c2, c3 = st.columns(3)
    c1.download_button(
        "OpenAI messages (.json)",
        messages_json,
        file_name="pagelens-messages.json",
        mime="application/json",
        on_click="ignore",
        icon=":material/download:",
        width="stretch",
    )
    c2.download_button(
        "Markdown prompt (.md)",
        markdown,
        file_name="pagelens-prompt.md",
        mime="text/markdown",
        on_click="ignore",
        icon=":material/download:",
        width="stretch",
    )
    c3.download_button(
        "ZIP: images + prompt (.zip)",
        lambda: zip_bytes(question, chosen, settings=settings),
        file_name="pagelens-export.zip",
        mime="application/zip",
        on_click="ignore",
        icon=":material/download:",
        width="stretch",
    )
    st.markdown("**Prompt preview** (Markdown; the copy button is at its top right)")
    st.code(markdown, language="markdown", height=360)
    with st.expander("OpenAI messages preview"):
        st.json(ui.preview_messages(messages), expanded=2)


# -- page --------------------------------------------------------------------------------
def model_key() -> ModelSettings:
    return st.session_state.settings.model


def current_workspace() -> Workspace:
    return get_workspace(st.session_state.collection, model_key())


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
    _state_defaults(settings)
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
        try:
            documents_panel(ws)
        except PageLensError as exc:
            st.error(str(exc))

    st.title("PageLens")
    st.caption(
        f"Ask questions of your PDFs and get back the pages that answer · collection "
        f"**{for_markdown(ws.path.name)}** · {stats.documents} document(s) · {stats.pages} page(s)"
    )
    _show_flash()
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


def _say(where, message: str) -> None:
    """Show a note (e.g. "waiting for another process") in a Streamlit container."""
    where.info(message)


main()
