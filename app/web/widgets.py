"""Presentation helpers for the web app: text formatting, highlighting, thumbnails.

No Streamlit import and no decisions about data: these turn library objects into strings
and bytes to show.
"""

from __future__ import annotations

import copy
import html
import io
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from PIL import Image

from indexer.pipeline import FileResult, Progress, format_duration
from retriever.evidence.draw import Boxed, draw_highlights


def app_version() -> str:
    try:
        from importlib.metadata import version

        return version("pagelens")
    except Exception:
        return "dev"


def short_model(model_id: str | None) -> str:
    """A model id as a person reads it: a hub id as is, a local folder by its last parts."""
    text = str(model_id or "?").rstrip("/\\")
    if Path(text).is_absolute():
        parts = Path(text).parts
        return "/".join(parts[-2:])
    return text


def when(iso: str | None) -> str:
    """``2024-05-01T12:03:00+00:00`` -> ``2024-05-01 12:03`` in local time."""
    if not iso:
        return "?"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def progress_text(p: Progress, label: str) -> str:
    parts = [f"{label}: {p.done}/{p.total} pages"]
    if p.rate:
        parts.append(f"{p.rate:.2f} pages/s")
    if p.eta_s is not None and p.done < p.total:
        parts.append(f"ETA {format_duration(p.eta_s)}")
    if p.file:
        parts.append(p.file)
    return " · ".join(parts)


def progress_value(p: Progress | None) -> float:
    if p is None or not p.total:
        return 0.0
    return max(0.0, min(1.0, p.done / p.total))


def file_entry(result: FileResult, names: dict[str, str]) -> dict:
    """A per-file status line for the upload log, with the file's original name."""
    name = names.get(result.path) or Path(result.path).name
    message = (result.message or "").replace(result.path, name)
    if message.startswith(f"{name}: "):
        message = message[len(name) + 2 :]
    return {
        "name": name,
        "path": result.path,
        "status": result.status,
        "reason": result.reason,
        "message": message,
        "pages": result.pages,
        "existing": result.name,
    }


def score_text(hit, mode: str) -> str:
    if "rerank" in hit.scores:  # both stages, so a user sees what the reranker changed
        parts = [
            f"rerank {hit.scores['rerank']:.4f}",
            f"first stage {hit.scores['first_stage']:.4f}",
        ]
    else:
        parts = [f"score {hit.score:.4f}"]
    if mode == "hybrid" and hit.scores and "rerank" not in hit.scores:
        parts += [f"{k} {v:.3f}" for k, v in sorted(hit.scores.items())]
    if getattr(hit, "pending", False):
        parts.append("found by its text (not embedded yet)")
    return " · ".join(parts)


def highlight_html(text: str, query: str) -> str:
    """The page text, HTML-escaped, with the query's words (3+ letters) marked."""
    words = sorted(
        {w for w in re.findall(r"\w+", query.lower()) if len(w) > 2}, key=len, reverse=True
    )
    if words:
        pattern = re.compile("|".join(re.escape(w) for w in words), re.IGNORECASE)
        pieces, last = [], 0
        for m in pattern.finditer(text):
            pieces.append(html.escape(text[last : m.start()]))
            pieces.append(f"<mark>{html.escape(m.group(0))}</mark>")
            last = m.end()
        pieces.append(html.escape(text[last:]))
        body = "".join(pieces)
    else:
        body = html.escape(text)
    return (
        '<div style="white-space: pre-wrap; max-height: 28rem; overflow-y: auto; '
        f'font-size: 0.9rem; line-height: 1.45">{body}</div>'
    )


def preview_messages(messages: list[dict], *, keep: int = 48) -> list[dict]:
    """A copy of OpenAI messages with the base64 images shortened, for display."""
    out = copy.deepcopy(messages)
    for message in out:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            url = part.get("image_url", {}).get("url") if isinstance(part, dict) else None
            if url and len(url) > keep:
                kb = len(url) * 3 / 4 / 1024
                part["image_url"]["url"] = f"{url[:keep]}… ({kb:.0f} kB of base64)"
    return out


def thumbnail_bytes(path: str | Path, max_side: int) -> bytes:
    """A JPEG of the image at ``path``, at most ``max_side`` pixels on its longest side."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def drawn_bytes(
    path: str | Path,
    max_side: int,
    highlights: Sequence[Boxed],
    *,
    color: tuple[int, int, int] | None = None,
) -> bytes:
    """A JPEG of the page at ``path`` (at most ``max_side`` px) with ``highlights`` drawn.

    The boxes are 0..1 of the page, so they are drawn on the scaled copy: the outline keeps
    its width on a thumbnail and the work is that of the small image."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    if color is None:
        im = draw_highlights(im, highlights)
    else:
        im = draw_highlights(im, highlights, color=color)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def image_bytes(image: Image.Image) -> bytes:
    """A computed image (the heat map) as a JPEG to show."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def page_icon() -> Image.Image:
    """The browser-tab icon, drawn here: Streamlit fetches ``:material/...:`` page icons from
    fonts.gstatic.com, and nothing the page shows may come from the internet."""
    from PIL import ImageDraw

    icon = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(icon)
    draw.ellipse((6, 6, 42, 42), outline=(255, 75, 75, 255), width=7)
    draw.line((37, 37, 58, 58), fill=(255, 75, 75, 255), width=9)
    return icon
