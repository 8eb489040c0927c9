"""Highlights drawn onto a page image, so a reader (or an LLM) looks where the match is.

Text and OCR boxes get a solid outline and a translucent fill: the outline stays visible on
white, dark and busy pages alike, and the fill leaves the words under it readable. Visual
regions (``source="visual"``) are a heat map: a translucent red wash whose strength follows
each region's score. Everything is drawn inside each box's pixel bounds, so the drawn image
differs from the plain one only inside the boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from PIL import Image, ImageDraw


class Boxed(Protocol):
    """What is drawn: a :class:`~retriever.evidence.highlights.Highlight` or a visual
    region (:class:`~retriever.evidence.visual.VisualRegion`), both on a hit."""

    @property
    def box(self) -> tuple[float, float, float, float]: ...
    @property
    def source(self) -> str: ...
    @property
    def score(self) -> float: ...


#: Default outline colour (a saturated orange, rare on documents) and fill opacity.
COLOR = (255, 120, 0)
FILL_ALPHA = 60
HEAT_COLOR = (255, 0, 0)
HEAT_ALPHA = 110


def _pixels(box: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """A 0..1 box as inclusive pixel bounds within the image, or None when it is empty."""
    w, h = size
    x0 = max(0, min(w - 1, int(box[0] * w)))
    y0 = max(0, min(h - 1, int(box[1] * h)))
    x1 = max(0, min(w - 1, int(round(box[2] * w)) - 1))
    y1 = max(0, min(h - 1, int(round(box[3] * h)) - 1))
    if x1 < x0 or y1 < y0:
        return None
    return x0, y0, x1, y1


def draw_highlights(
    image: Image.Image,
    highlights: Sequence[Boxed],
    *,
    color: tuple[int, int, int] = COLOR,
    width: int | None = None,
) -> Image.Image:
    """A copy of ``image`` (RGB) with ``highlights`` drawn; ``image`` is left unchanged.

    ``width``: outline width in pixels (default: about 1/400 of the image's longest side,
    at least 2), never more than half the box, so small words keep a visible inside.
    """
    base = image.convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = width if width is not None else max(2, round(max(base.size) / 400))
    for hl in highlights:
        px = _pixels(hl.box, base.size)
        if px is None:
            continue
        if hl.source == "visual":
            alpha = int(HEAT_ALPHA * max(0.15, min(1.0, float(hl.score))))
            draw.rectangle(px, fill=(*HEAT_COLOR, alpha))
            continue
        inner = min(line, (px[2] - px[0] + 1) // 2, (px[3] - px[1] + 1) // 2)
        draw.rectangle(px, fill=(*color, FILL_ALPHA), outline=(*color, 255), width=max(1, inner))
    return Image.alpha_composite(base, overlay).convert("RGB")
