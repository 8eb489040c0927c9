"""Export for an LLM: the ticked result pages as OpenAI messages, a Markdown prompt or a
ZIP of images and prompt, with previews."""

from __future__ import annotations

import json

import streamlit as st

from app.web import widgets as ui
from retriever.export import ExportSettings, to_markdown, to_openai_messages, zip_bytes


def tick_key(res: dict, hit) -> str:
    """The "Export" checkbox of a result page: ticked pages are exported and asked about."""
    return f"inc-{res['id']}-{hit.page_id}"


def export_section(res: dict, hits: list) -> None:
    st.subheader("Export for an LLM")
    chosen = [h for h in hits if st.session_state.get(tick_key(res, h), True)]
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
