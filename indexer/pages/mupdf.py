"""PyMuPDF imported without its telemetry; MuPDF's process-wide switches, flipped only while
PageLens works with it; its warnings forwarded to logging; and the flags every text layer is
read with. Imports only pymupdf: the rest of PageLens imports pymupdf from here."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# pymupdf 2.0 imports its optional add-ons pymupdf.layout and pymupdf4llm as it is imported;
# both load onnxruntime, whose telemetry starts at once (a DNS lookup of Microsoft's events
# host, a device id under ~/.cache). PageLens uses neither, so pymupdf is imported with them
# hidden (its own ``except ImportError`` skips them), then unhidden: nothing else in the
# process changes and anyone may still import them (only pymupdf 2.0's Document.to_markdown
# shortcut stays off; pymupdf4llm.to_markdown works). pymupdf 2.1 imports them lazily.
_HIDDEN = [name for name in ("pymupdf.layout", "pymupdf4llm") if name not in sys.modules]
for _name in _HIDDEN:
    sys.modules[_name] = None  # type: ignore[assignment]  # import raises ImportError
try:
    import pymupdf
finally:
    for _name in _HIDDEN:
        if _name in sys.modules and sys.modules[_name] is None:
            del sys.modules[_name]

__all__ = ["TEXT_FLAGS", "drain_mupdf_warnings", "pymupdf", "quiet_mupdf"]

logger = logging.getLogger(__name__)

_MUPDF_QUIET_LOCK = threading.Lock()
_mupdf_quiet_depth = 0
_mupdf_saved: tuple[bool, bool] = (True, False)


@contextmanager
def quiet_mupdf() -> Iterator[None]:
    """While our code calls MuPDF, keep its messages in its buffer, not on stderr.

    MuPDF prints warnings and errors to stderr by default; we forward them to logging
    instead (see :func:`drain_mupdf_warnings`). The switch is process-wide, so it is
    flipped only while PageLens works with MuPDF (nested and concurrent uses share one
    count) and then put back as it was: importing this module changes nothing for the
    rest of the process. Also usable as a decorator.
    """
    global _mupdf_quiet_depth, _mupdf_saved
    with _MUPDF_QUIET_LOCK:
        if _mupdf_quiet_depth == 0:
            _mupdf_saved = (
                bool(pymupdf.TOOLS.mupdf_display_errors()),
                bool(pymupdf.TOOLS.mupdf_display_warnings()),
            )
            pymupdf.TOOLS.mupdf_display_errors(False)
            pymupdf.TOOLS.mupdf_display_warnings(False)
        _mupdf_quiet_depth += 1
    try:
        yield
    finally:
        with _MUPDF_QUIET_LOCK:
            _mupdf_quiet_depth -= 1
            if _mupdf_quiet_depth == 0:
                pymupdf.TOOLS.mupdf_display_errors(_mupdf_saved[0])
                pymupdf.TOOLS.mupdf_display_warnings(_mupdf_saved[1])


# Text-layer flags: like MuPDF's default for "text" but without TEXT_PRESERVE_LIGATURES (so
# "ﬁ" comes out as "fi", which is what people type) and without
# TEXT_USE_CID_FOR_UNKNOWN_UNICODE (which emits raw glyph ids as characters, i.e. garbage;
# without it unknown glyphs become U+FFFD, which the garbage check can see), plus
# TEXT_DEHYPHENATE to join words broken across lines.
TEXT_FLAGS = (
    pymupdf.TEXT_PRESERVE_WHITESPACE | pymupdf.TEXT_MEDIABOX_CLIP | pymupdf.TEXT_DEHYPHENATE
)


def drain_mupdf_warnings(path: Path) -> None:
    """Move MuPDF's buffered warnings (e.g. "repairing PDF document") to the log."""
    text = pymupdf.TOOLS.mupdf_warnings(reset=True)
    if text:
        logger.debug("MuPDF warnings for %s:\n%s", path, text)
