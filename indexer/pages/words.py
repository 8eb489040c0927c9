"""Word boxes: where each word of a page sits on the page image a collection stores.

Highlighting a query's words on a hit needs their boxes in the *stored image's* pixels, not
in PDF points: the stored image may be rotated (``/Rotate``), cut to the CropBox, zoomed to
GME's pixel budget, downscaled (image files) and padded with white (extreme aspect ratios).
So the words are mapped here through the very transform that made the image, and kept
normalised to 0..1 of the final (padded) image, so a thumbnail of any size can use them.

Sources: a PDF's (or anything MuPDF pages) text layer, ``page.get_text("words")``; for a page
read by OCR, Tesseract's word boxes (through MuPDF's OCR, the same run that gives the text).

Stored compactly (:func:`encode_words`): boxes quantised to 1/65535 of the image (uint16,
far finer than a pixel), lines and sources as small integers, the text as UTF-8, all
zlib-compressed: about 10 bytes a word, against ~1 MB of PNG per page. Imports pages.mupdf
only inside :func:`mupdf_words`, so that stores decode words without loading MuPDF.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Word",
    "decode_words",
    "encode_words",
    "layout_words",
    "mupdf_words",
    "place_words",
]

#: First bytes of every encoded word list (format version 1).
MAGIC = b"PLW1"
_SOURCES = ("text", "ocr")
_Q = 65535


@dataclass(frozen=True)
class Word:
    """One word of a page and its box on the stored page image."""

    text: str
    #: x0, y0, x1, y1 in 0..1 of the stored page image (padding included), y downwards.
    box: tuple[float, float, float, float]
    #: Index of the text line on its page (MuPDF block/line, or Tesseract block/par/line),
    #: so adjacent words of a phrase can be merged per line.
    line: int
    #: "text" (the document's text layer) or "ocr" (Tesseract).
    source: str = "text"


def encode_words(words: Sequence[Word]) -> bytes:
    """The compact bytes a collection stores for a page's words (see the module doc)."""
    n = len(words)
    boxes = np.array([w.box for w in words], dtype=np.float64).reshape(n, 4)
    quantised = np.rint(np.clip(boxes, 0.0, 1.0) * _Q).astype("<u2")
    lines = np.array([w.line for w in words], dtype=np.int64)
    sources = np.array([_SOURCES.index(w.source) for w in words], dtype="u1")
    texts = [w.text.encode("utf-8") for w in words]
    lengths = np.array([len(t) for t in texts], dtype="<u4")
    body = b"".join(
        [
            struct.pack("<I", n),
            quantised.tobytes(),
            np.diff(lines, prepend=0).astype("<i4").tobytes(),  # mostly 0 and 1: zlib food
            sources.tobytes(),
            lengths.tobytes(),
            b"".join(texts),
        ]
    )
    return MAGIC + zlib.compress(body, 6)


def decode_words(data: bytes) -> list[Word]:
    """The words :func:`encode_words` wrote; ``ValueError`` for anything else."""
    if not data.startswith(MAGIC):
        raise ValueError("not a PageLens word list (bad magic)")
    try:
        body = zlib.decompress(data[len(MAGIC) :])
        (n,) = struct.unpack_from("<I", body, 0)
        at = 4
        boxes = np.frombuffer(body, "<u2", n * 4, at).reshape(n, 4) / _Q
        at += n * 8
        lines = np.cumsum(np.frombuffer(body, "<i4", n, at), dtype=np.int64)
        at += n * 4
        sources = np.frombuffer(body, "u1", n, at)
        at += n
        lengths = np.frombuffer(body, "<u4", n, at)
        at += n * 4
        out = []
        for i in range(n):
            end = at + int(lengths[i])
            out.append(
                Word(
                    text=body[at:end].decode("utf-8"),
                    box=(
                        float(boxes[i, 0]),
                        float(boxes[i, 1]),
                        float(boxes[i, 2]),
                        float(boxes[i, 3]),
                    ),
                    line=int(lines[i]),
                    source=_SOURCES[int(sources[i])],
                )
            )
            at = end
    except (zlib.error, struct.error, ValueError, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"damaged PageLens word list ({exc})") from None
    if at != len(body):
        raise ValueError("damaged PageLens word list (trailing bytes)")
    return out


def place_words(
    raw: Iterable[tuple[float, float, float, float, str, int]],
    *,
    scale_x: float,
    scale_y: float,
    offset: tuple[float, float],
    size: tuple[int, int],
    source: str,
) -> list[Word]:
    """Words from boxes in some source space (points of the upright page, pixels of the
    unpadded frame...): ``pixel = box * scale + offset`` on an image of ``size`` (the stored,
    padded image), then normalised. ``raw`` items are (x0, y0, x1, y1, text, line key)."""
    width, height = size
    ox, oy = offset
    out: list[Word] = []
    lines: dict[int, int] = {}
    for x0, y0, x1, y1, text, key in raw:
        text = text.strip()
        if not text:
            continue
        box = (
            min(max((x0 * scale_x + ox) / width, 0.0), 1.0),
            min(max((y0 * scale_y + oy) / height, 0.0), 1.0),
            min(max((x1 * scale_x + ox) / width, 0.0), 1.0),
            min(max((y1 * scale_y + oy) / height, 0.0), 1.0),
        )
        if box[2] <= box[0] or box[3] <= box[1]:
            continue  # off the visible page (text outside the CropBox)
        out.append(Word(text, box, lines.setdefault(key, len(lines)), source))
    return out


def mupdf_words(
    page: Any, textpage: Any = None
) -> list[tuple[float, float, float, float, str, int]]:
    """A MuPDF page's words as (x0, y0, x1, y1, text, line key) in the points of the page as
    a reader sees it (rotation applied, origin at the CropBox's top left), the space that
    ``page.get_pixmap`` renders. MuPDF gives word boxes unrotated; ``rotation_matrix`` turns
    them the way the pixmap is turned."""
    from indexer.pages.mupdf import TEXT_FLAGS, pymupdf

    kwargs: dict[str, Any] = {"flags": TEXT_FLAGS}
    if textpage is not None:
        kwargs = {"textpage": textpage}
    matrix = page.rotation_matrix
    rotated = page.rotation % 360 != 0
    out = []
    for x0, y0, x1, y1, text, block, line, _ in page.get_text("words", **kwargs):
        if rotated:
            r = pymupdf.Rect(x0, y0, x1, y1) * matrix
            x0, y0, x1, y1 = r.x0, r.y0, r.x1, r.y1
        out.append((x0, y0, x1, y1, text, block * 100_000 + line))
    return out


def layout_words(
    raw: Iterable[tuple[float, float, float, float, str, int]],
    *,
    zoom: float,
    content: tuple[int, int],
    size: tuple[int, int],
    source: str,
) -> list[Word]:
    """Words of a page rendered at ``zoom`` into ``content`` pixels and padded (centred, as
    :func:`indexer.pages.geometry.pad` does) to ``size``."""
    offset = ((size[0] - content[0]) // 2, (size[1] - content[1]) // 2)
    return place_words(raw, scale_x=zoom, scale_y=zoom, offset=offset, size=size, source=source)
