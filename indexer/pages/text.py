"""Text layers cleaned for embedding and display (or dropped when they are garbage). Pure:
imports nothing of PageLens."""

from __future__ import annotations

import re
import unicodedata

# Above this share of unreadable characters a text layer is treated as absent.
_GARBAGE_SHARE = 0.3


_SPACES = re.compile(r"[^\S\n]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
# Invisible characters that only get in the way of search (soft hyphen, zero-width space,
# BOM / zero-width no-break space, word joiner).
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\ufeff\u2060"), None)


def _is_unreadable(ch: str) -> bool:
    return ch == "\ufffd" or unicodedata.category(ch) in ("Cc", "Co", "Cn", "Cs")


def normalize_text(raw: str) -> str:
    """Clean a text layer for embedding and display, or return "" if it is garbage.

    NFKC folds ligatures and full-width forms into what people type; NULs and control
    characters go; runs of spaces collapse to one and blank-line runs to one blank line, but
    line breaks stay (they carry table and heading structure). If most of what is left is
    replacement characters or unprintable code points (a font without a usable ToUnicode
    map), the text layer is worse than none and "" is returned.
    """
    if not raw:
        return ""
    text = unicodedata.normalize("NFKC", raw)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = text.replace("\f", "\n").replace("\v", "\n").replace("\u2028", "\n")
    text = text.replace("\u2029", "\n").translate(_INVISIBLE)
    visible = [ch for ch in text if not ch.isspace()]
    if not visible:
        return ""
    bad = sum(1 for ch in visible if _is_unreadable(ch))
    if bad / len(visible) > _GARBAGE_SHARE:
        return ""
    if bad:
        text = "".join(" " if _is_unreadable(ch) and ch != "\n" else ch for ch in text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_NEWLINES.sub("\n\n", "\n".join(lines)).strip()
