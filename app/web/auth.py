"""The app's password gate, for when it is exposed beyond this computer.

``pagelens app --host ADDRESS`` refuses to start without ``PAGELENS_APP_PASSWORD``; the page
then shows nothing (no collection, no document name) until the password is entered. The
comparison is constant-time (``hmac.compare_digest``) so response timing says nothing about
how much of a guess was right.
"""

from __future__ import annotations

import hmac

import streamlit as st

from app.web.launch import PASSWORD_ENV
from indexer import config

_OK = "pagelens_authenticated"


def password_ok(given: str, expected: str) -> bool:
    """Constant-time comparison of two passwords (as UTF-8 bytes)."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_password() -> bool:
    """True when the session may see the app: no password is set, or it was entered."""
    expected = config.get(PASSWORD_ENV) or ""
    if not expected or st.session_state.get(_OK):
        return True
    st.title("PageLens")
    with st.form("pagelens-login"):
        given = st.text_input("Password", type="password", help=f"Set by {PASSWORD_ENV}.")
        submitted = st.form_submit_button("Open")
    if submitted:
        if password_ok(given or "", expected):
            st.session_state[_OK] = True
            st.rerun()
        st.error("Wrong password.")
    return False
