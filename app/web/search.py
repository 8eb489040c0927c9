"""Searching: the search form, running a search, and the grid of result pages (each
opens in a dialog); the Ask panel and the export section follow the results."""

from __future__ import annotations

import time
from collections.abc import Sequence

import streamlit as st

from app.web import widgets as ui
from app.web.ask import ask_panel
from app.web.evidence import PAGE_SHOW_KEY, dialog_page, show_matches, thumbnail, where_on_page
from app.web.export import export_section, tick_key
from app.web.services import ModelLoader, Workspace
from app.web.session import get_model, get_reranker, model_key, reranker_config
from indexer.errors import PageLensError
from indexer.pages import IMAGE_SUFFIXES
from retriever.escaping import for_markdown
from retriever.evidence.highlights import Highlight
from retriever.rerank import DEFAULT_DEPTH, MAX_DEPTH, describe_seconds, estimate_seconds
from retriever.search import MODES, PageRange, Retriever

GRID_COLUMNS = 4
MODE_HELP = {
    "visual": "GME: the meaning of the question against the page images",
    "text": "BM25 over the pages' text layer: exact words, names, numbers",
    "hybrid": "both rankings fused (reciprocal rank fusion)",
}


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
        rerank = rerank_control()
        submitted = st.form_submit_button("Search", type="primary", icon=":material/search:")
    if submitted:
        run_search(ws, model, question, image_file, mode, int(k), only, page_range, rerank)


def rerank_control() -> int:
    """The "Rerank the top N" input, drawn only when a reranker is configured (0 otherwise);
    a configured reranker that cannot load says why, once, and search goes on without it."""
    reranker, error = get_reranker(reranker_config())
    if error:
        st.caption(f"Reranking is off: {error}")
    if reranker is None:
        return 0
    value = st.number_input(
        "Rerank the top N",
        min_value=0,
        max_value=MAX_DEPTH,
        value=DEFAULT_DEPTH,
        key="rerank",
        help=f"{reranker.model_id} reads the question with each of the top N pages and "
        "puts the best first (N at least k; 0: off). Slower, more exact.",
    )
    return int(value)


class RerankProgress:
    """A progress bar for a rerank: the estimate before it starts (on a CPU), then pages
    done and the time left at the rate measured so far."""

    def __init__(self, reranker, depth: int) -> None:
        estimate = estimate_seconds(reranker, depth)
        text = f"Reranking the top {depth} pages"
        if estimate is not None:
            text += f" on the CPU: {describe_seconds(estimate)}"
        self.bar = st.progress(0.0, text=text)
        self.started: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if self.started is None:
            self.started = now
        text = f"Reranked {done} of {total} pages"
        if 0 < done < total:
            left = (now - self.started) / done * (total - done)
            text += f" · {describe_seconds(left)} left"
        self.bar.progress(done / total if total else 1.0, text=text)


def run_search(ws, model, question, image_file, mode, k, only, page_range, rerank=0) -> None:
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
        reranker = get_reranker(reranker_config())[0] if rerank else None
        retriever = Retriever(embedder, ws.store, reranker=reranker)
        notes: list[str] = []
        progress = RerankProgress(reranker, rerank) if reranker is not None else None
        with st.spinner("Searching…"):
            hits = retriever.search(
                question,
                k,
                image=image,
                documents=only or None,
                pages=pages,
                mode=mode,
                rerank=rerank if reranker is not None else 0,
                notify=notes.append,
                progress=progress,
            )
        if progress is not None:
            progress.bar.empty()
        for note in notes:  # the reranker failed: these are the first-stage results
            st.warning(note)
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
        "rerun": (
            (question, None, mode, k, only, page_range, rerank) if image_file is None else None
        ),
    }


def _open_query_image(upload):
    """The uploaded query image, decoded as every user image is (format allow-list, pixel
    cap): a QueryError with the file's name otherwise."""
    from retriever.search import load_query_image

    return load_query_image(upload)


#: session_state key of the open page dialog: (results id, hit, query, quotes).
DIALOG_KEY = "page_dialog"


def open_page(hit, query: str, quotes: Sequence[Highlight] = ()) -> None:
    """Open a page's dialog (drawn at the end of the results): it stays open through full
    reruns (embedding or the model finishing in the background) until the user closes it."""
    st.session_state.pop(PAGE_SHOW_KEY, None)  # a new dialog starts as the grid's toggle
    res = st.session_state.get("results") or {}
    st.session_state[DIALOG_KEY] = (res.get("id"), hit, query, tuple(quotes))


def _closed() -> None:
    st.session_state.pop(DIALOG_KEY, None)


def page_dialog(res: dict) -> None:
    """The open page's dialog, if any (for these results): the page with the question's
    words (and an opened citation's quoted passages) outlined, "Where on this page?", and
    the text layer."""
    shown = st.session_state.get(DIALOG_KEY)
    if not shown:
        return
    results_id, hit, query, quotes = shown
    if results_id != res["id"]:
        _closed()
        return

    @st.dialog(f"{for_markdown(hit.document)} · page {hit.page}", width="large", on_dismiss=_closed)
    def body() -> None:
        st.caption(f"score {hit.score:.4f}")
        left, right = st.columns([3, 2])
        with left:
            dialog_page(hit, quotes)
            where_on_page(hit, query)
        with right.expander("Text layer", expanded=True):
            if hit.text.strip():
                st.markdown(ui.highlight_html(hit.text, query), unsafe_allow_html=True)
            else:
                st.caption("This page has no text layer (a scan or a picture).")

    body()


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
    ask_panel(res, [h for h in hits if st.session_state.get(tick_key(res, h), True)], open_page)
    show_matches()
    for start in range(0, len(hits), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for offset, hit in enumerate(hits[start : start + GRID_COLUMNS]):
            rank = start + offset + 1
            with cols[offset], st.container(border=True):
                image = thumbnail(hit, 640)
                if image:
                    st.image(image, width="stretch")
                st.markdown(f"**#{rank} · {for_markdown(hit.document)}**")
                st.caption(f"page {hit.page} · {ui.score_text(hit, mode)}")
                left, right = st.columns(2, vertical_alignment="center")
                left.checkbox("Export", value=True, key=tick_key(res, hit))
                if right.button(
                    "Open", key=f"open-{res['id']}-{hit.page_id}", icon=":material/zoom_in:"
                ):
                    open_page(hit, query)
    export_section(res, hits)
    page_dialog(res)
