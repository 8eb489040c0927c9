"""The app's "Ask" panel: the ticked result pages and the question go to the configured
vision LLM (:mod:`retriever.ask`); the answer streams in, and each citation opens that page.

Kept out of ``streamlit_app.py`` so that the page layout stays a list of sections; all the
decisions (configuration, limits, citation checks) are in :mod:`retriever.ask`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from app.web.llm_settings import current_llm_settings, llm_settings_form
from indexer.errors import PageLensError
from retriever.ask import Answer, LLMSettings, ask_stream
from retriever.evidence.highlights import Highlight
from retriever.search import Hit

#: Opens a page's dialog: ``open_page(hit, query, quotes)``, ``quotes`` the boxes of what
#: the answer quotes from that page (outlined in the dialog).
OpenPage = Callable[[Hit, str, tuple[Highlight, ...]], None]

#: session_state key holding ``{"result": results id, "answer": Answer}``.
STATE_KEY = "ask_answer"


def ask_panel(
    res: dict,
    chosen: Sequence[Hit],
    open_page: OpenPage,
) -> None:
    """Ask button, destination line, streamed answer and clickable citations.

    ``res`` is the app's current results (its ``id`` and ``query``), ``chosen`` the pages
    ticked for export (those are the pages sent), ``open_page(hit, query, quotes)`` opens
    a page's dialog with the citation's quoted passages outlined.
    """
    try:
        settings = current_llm_settings()
    except PageLensError as exc:
        st.error(str(exc))
        return
    question = (res.get("query") or "").strip()
    with st.container(border=True):
        st.markdown("**Ask an LLM about these pages**")
        if not settings.configured:
            st.caption(
                "Nothing is sent anywhere until you choose an LLM: give an OpenAI-compatible "
                "endpoint (a local Ollama: http://localhost:11434/v1) and its model in the LLM "
                "settings below, or start the app with PAGELENS_LLM_URL and PAGELENS_LLM_MODEL."
            )
        else:
            st.caption(
                f"The question and {len(chosen)} ticked page image(s) will be sent to "
                f"`{settings.destination()}`."
            )
        disabled = not settings.configured or not question or not chosen
        clicked = st.button(
            "Ask",
            key=f"ask-{res['id']}",
            type="primary",
            icon=":material/forum:",
            disabled=disabled,
            help="Answer the question from the ticked pages, with citations."
            if question
            else "Type a question to ask (an image-only search has none).",
        )
        llm_settings_form(settings)
        saved = st.session_state.get(STATE_KEY)
        answer: Answer | None = None
        if clicked:
            answer = _stream_answer(question, chosen, settings)
            st.session_state[STATE_KEY] = {"result": res["id"], "answer": answer}
        elif saved and saved["result"] == res["id"]:
            answer = saved["answer"]
            st.markdown(answer.text)
        if answer is not None:
            _citations(answer, res, open_page)


def _stream_answer(question: str, chosen: Sequence[Hit], settings: LLMSettings) -> Answer | None:
    try:
        stream = ask_stream(question, list(chosen), settings=settings)
        with st.spinner(f"Waiting for {settings.model}…"):
            pieces = iter(stream)
            first = next(pieces, "")

        def rest():
            yield first
            yield from pieces

        st.write_stream(rest())
        return stream.answer
    except PageLensError as exc:
        st.error(str(exc))
        return None


def _citations(answer: Answer, res: dict, open_page: OpenPage) -> None:
    by_page: dict[tuple[str | None, int | None], Hit] = {
        (h.document, h.page): h for h in answer.hits
    }
    sent = [c for c in answer.citations if c.sent]
    if not answer.citations:
        st.caption("The answer cites no page.")
    if sent:
        st.caption("Cited pages (click to open):")
        cols = st.columns(min(4, len(sent)))
        for i, cite in enumerate(sent):
            hit = by_page.get((cite.document, cite.page))
            if hit is None:
                continue
            if cols[i % len(cols)].button(
                f"{cite.document} · p. {cite.page}",
                key=f"cite-{res['id']}-{hit.page_id}",
                icon=":material/description:",
            ):
                open_page(hit, res.get("query") or "", cite.highlights)
    for cite in answer.unverified:
        what = f"{cite.document}, p. {cite.page}" if cite.document else f"[{cite.text}]"
        st.warning(f"The answer cites {what}, which was not among the pages sent: not verified.")
