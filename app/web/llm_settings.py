"""The Ask panel's LLM settings: endpoint, model and API key chosen in the app, for this
browser session only, without a restart.

The ``PAGELENS_LLM_*`` variables give the defaults (:meth:`retriever.llm.LLMSettings.chosen`
decides what a choice changes, and keeps the configured key to its own URL). The typed key
lives only in this session's state, under a name no widget shows: the password field is
emptied as soon as the key is taken, so the page never carries it back, and nothing here
writes it anywhere (collection, logs, disk). Applying settings sends nothing; only the Ask
button does.
"""

from __future__ import annotations

import urllib.parse

import streamlit as st

from indexer.errors import PageLensError
from retriever.llm import LLMSettings

#: session_state keys: the chosen endpoint and model (None: the environment's), the typed
#: key (never bound to a widget) and the last message of the settings form.
URL_KEY = "llm_url"
MODEL_KEY = "llm_model"
SECRET_KEY = "llm_api_key_secret"
PENDING_KEY = "llm_api_key_pending"
MESSAGE_KEY = "llm_settings_message"
#: the form's widgets
URL_INPUT = "llm_url_input"
MODEL_INPUT = "llm_model_input"
KEY_INPUT = "llm_key_input"


def current_llm_settings() -> LLMSettings:
    """What the Ask button uses now: the environment's settings with this session's choices."""
    ss = st.session_state
    return LLMSettings.chosen(
        url=ss.get(URL_KEY), model=ss.get(MODEL_KEY), api_key=ss.get(SECRET_KEY)
    )


def _apply() -> None:
    """The form's callback (it runs before the widgets are drawn again, so it may empty the
    password field): check the choice, keep it, take the key out of the widget."""
    ss = st.session_state
    url = (ss.get(URL_INPUT) or "").strip() or None
    model = (ss.get(MODEL_INPUT) or "").strip() or None
    key = (ss.get(KEY_INPUT) or "").strip() or ss.pop(PENDING_KEY, None)
    ss[KEY_INPUT] = ""  # the typed key never goes back to the browser
    try:
        LLMSettings.chosen(url=url, model=model, api_key=key or ss.get(SECRET_KEY))
    except PageLensError as exc:
        if key:  # kept (unused) for the corrected settings: a mistake loses nothing
            ss[PENDING_KEY] = key
        ss[MESSAGE_KEY] = ("error", str(exc))
        return
    env = LLMSettings.from_env()
    ss[URL_KEY] = url if url != env.url else None
    ss[MODEL_KEY] = model if model != env.model else None
    if key:
        ss[SECRET_KEY] = key
    ss[MESSAGE_KEY] = ("success", "Settings applied: nothing is sent until you press Ask.")


def _forget_key() -> None:
    st.session_state.pop(SECRET_KEY, None)
    st.session_state.pop(PENDING_KEY, None)
    st.session_state[MESSAGE_KEY] = ("info", "The API key typed in this session is forgotten.")


def _use_defaults() -> None:
    ss = st.session_state
    for name in (URL_KEY, MODEL_KEY, SECRET_KEY, PENDING_KEY, URL_INPUT, MODEL_INPUT):
        ss.pop(name, None)
    ss[MESSAGE_KEY] = ("info", "Back to the settings of the PAGELENS_LLM_* variables.")


def llm_settings_form(settings: LLMSettings) -> None:
    """The settings, in an expander (open while no LLM is chosen): endpoint, model, key,
    then "Forget key" and "Use the defaults"."""
    ss = st.session_state
    ss.setdefault(URL_INPUT, _shown_url(settings))
    ss.setdefault(MODEL_INPUT, settings.model)
    with st.expander("LLM settings", expanded=not settings.configured, icon=":material/tune:"):
        with st.form("llm-settings", border=False):
            st.text_input(
                "Endpoint (base URL)",
                key=URL_INPUT,
                placeholder="http://localhost:11434/v1",
                help="An OpenAI-compatible endpoint: a local Ollama (http://localhost:11434/v1), "
                "vLLM (http://localhost:8000/v1) or a hosted provider.",
            )
            st.text_input("Model", key=MODEL_INPUT, help="The model name the endpoint serves.")
            st.text_input(
                "API key",
                key=KEY_INPUT,
                type="password",
                placeholder="(set)" if ss.get(SECRET_KEY) else "typed once, never shown again",
                help="Only for hosted providers. Kept in this browser session's memory only: "
                "never shown again, never written to the collection, logs or disk.",
            )
            st.form_submit_button("Use these settings", on_click=_apply)
        message = ss.pop(MESSAGE_KEY, None)
        if message:
            getattr(st, message[0])(message[1])
        st.caption(f"API key: {_key_origin(settings)}")
        left, right = st.columns(2)
        left.button(
            "Forget key",
            key="llm-forget-key",
            on_click=_forget_key,
            disabled=not (ss.get(SECRET_KEY) or ss.get(PENDING_KEY)),
            icon=":material/key_off:",
        )
        right.button("Use the defaults", key="llm-defaults", on_click=_use_defaults)


def _shown_url(settings: LLMSettings) -> str:
    """The URL to prefill: not one with a password in it (the field stays empty, which
    keeps the configured URL, and the panel names its host)."""
    url = settings.url or ""
    parts = urllib.parse.urlsplit(url)
    return "" if parts.username or parts.password else url


def _key_origin(settings: LLMSettings) -> str:
    if st.session_state.get(SECRET_KEY):
        return "typed in this session (kept in memory only)"
    if settings.api_key:
        return "from PAGELENS_LLM_API_KEY"
    return "none"
