"""Document names are user data: escape them for each place they are shown.

A file name may hold a newline (which fakes a line in ``pagelens docs``), terminal escape
sequences, bidirectional overrides, Markdown (``[x](y)``, ``**``) or HTML
(``<img src=x onerror=...>``). Each output gets its own escaping:

* :func:`for_terminal`: control and invisible format characters become ``\\xNN`` /
  ``\\uNNNN`` escapes, so one name is always one visible line.
* :func:`for_markdown`: that, then HTML's ``<>&`` as entities and the Markdown punctuation
  that acts inside a line (links, emphasis, code, tables) backslash-escaped (exported
  ``prompt.md``, the app's ``st.markdown``); names never start a line there.
* :func:`for_html`: that, then ``html.escape`` (quotes included).
"""

from __future__ import annotations

import html
import re
import unicodedata

_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]()|~])")


def _escape_char(ch: str) -> str:
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def for_terminal(name: str) -> str:
    """``name`` with control, format (bidi overrides, zero-width) and line/paragraph
    separator characters written as visible escapes."""
    return "".join(
        _escape_char(ch) if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") else ch
        for ch in name
    )


def for_markdown(name: str) -> str:
    """``name`` as literal text inside Markdown (no links, emphasis, headings or HTML)."""
    text = for_terminal(name).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def for_html(name: str) -> str:
    """``name`` as literal text inside HTML (element content or a quoted attribute)."""
    return html.escape(for_terminal(name), quote=True)
