"""Hits -> a prompt an LLM can answer from.

Three shapes of the same thing: the question, the ranked page images, and a citation per
page. (a) OpenAI Chat Completions ``messages`` (images as base64 data URLs), (b) a
Markdown prompt with the pages' text, (c) a ZIP with the images, ``prompt.md`` and
``messages.json``. Images are downscaled and re-encoded per :class:`ExportSettings`,
because LLM providers cap image sizes and bill by pixels.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from retriever.escaping import for_markdown
from retriever.evidence.draw import draw_highlights
from retriever.search import Hit

SYSTEM_PROMPT = (
    "You answer questions about the user's documents. The relevant pages are attached as "
    "images, each introduced by a citation line. Answer only from these pages. Cite the "
    "pages you use as [document, p. N]. If the pages do not contain the answer, say so."
)


@dataclass(frozen=True)
class ExportSettings:
    """How page images are sent: longest side in pixels, format, JPEG quality, detail, and
    whether each hit's highlights are drawn on its image (``draw_boxes``: the LLM's
    attention goes where the match is; drawn after downscaling, so the outlines stay crisp)."""

    max_side: int = 1568
    image_format: str = "jpeg"
    quality: int = 85
    detail: str = "high"
    draw_boxes: bool = False

    def __post_init__(self) -> None:
        if self.image_format not in ("jpeg", "png", "webp"):
            raise ValueError("image_format must be jpeg, png or webp")
        if self.max_side < 64:
            raise ValueError("max_side must be at least 64 pixels")


def citation(hit: Hit) -> str:
    return f"{hit.document}, p. {hit.page}"


def md_citation(hit: Hit) -> str:
    """:func:`citation` with the document name escaped for Markdown."""
    return f"{for_markdown(hit.document)}, p. {hit.page}"


def encode_page(hit: Hit, settings: ExportSettings = ExportSettings()) -> tuple[bytes, str]:
    """The page image as bytes in the export format, and its MIME type."""
    with Image.open(hit.image) as im:
        im = im.convert("RGB")
        im.thumbnail((settings.max_side, settings.max_side), Image.Resampling.LANCZOS)
        if settings.draw_boxes and hit.highlights:
            im = draw_highlights(im, hit.highlights)
        buf = io.BytesIO()
        fmt = settings.image_format.upper()
        kwargs = {"quality": settings.quality} if fmt in ("JPEG", "WEBP") else {}
        im.save(buf, format=fmt, **kwargs)
    return buf.getvalue(), f"image/{settings.image_format}"


def to_openai_messages(
    question: str, hits: Sequence[Hit], *, settings: ExportSettings = ExportSettings()
) -> list[dict]:
    """OpenAI Chat Completions ``messages``: system prompt, then the question and pages."""
    content: list[dict] = [{"type": "text", "text": f"Question: {question}"}]
    for i, hit in enumerate(hits, start=1):
        data, mime = encode_page(hit, settings)
        url = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
        content.append({"type": "text", "text": f"[{i}] {citation(hit)}"})
        content.append({"type": "image_url", "image_url": {"url": url, "detail": settings.detail}})
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": content},
    ]


def to_markdown(
    question: str, hits: Sequence[Hit], *, image_links: Sequence[str] | None = None
) -> str:
    """A Markdown prompt: instructions, question, citations, and each page's text.

    Document names are escaped for Markdown (a name is user data: it may hold HTML or a
    newline); page text stays inside a fenced block.
    """
    lines = [SYSTEM_PROMPT, "", "## Question", "", question, "", "## Sources", ""]
    for i, hit in enumerate(hits, start=1):
        lines.append(f"{i}. {md_citation(hit)} (score {hit.score:.3f})")
    lines += ["", "## Pages", ""]
    for i, hit in enumerate(hits, start=1):
        link = image_links[i - 1] if image_links else Path(hit.image).as_uri()
        link = link.replace("(", "%28").replace(")", "%29").replace(" ", "%20")
        lines += [f"### [{i}] {md_citation(hit)}", "", f"![{md_citation(hit)}]({link})", ""]
        text = hit.text.strip() or "(this page has no text layer; see the image)"
        lines += ["```text", text.replace("```", "'''"), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def page_filename(i: int, hit: Hit, settings: ExportSettings) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(hit.document).stem)[:60] or "document"
    ext = "jpg" if settings.image_format == "jpeg" else settings.image_format
    return f"{i:02d}-{stem}-p{hit.page}.{ext}"


def write_page_images(
    hits: Sequence[Hit], folder: str | os.PathLike[str], settings: ExportSettings
) -> list[str]:
    """Each hit's image, encoded per ``settings`` (highlights drawn with ``draw_boxes``),
    written into ``folder``; returns the paths relative to the folder's parent, for
    :func:`to_markdown`'s ``image_links`` (a Markdown prompt beside its page images)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    links = []
    for i, hit in enumerate(hits, start=1):
        name = page_filename(i, hit, settings)
        data, _ = encode_page(hit, settings)
        (folder / name).write_bytes(data)
        links.append(f"{folder.name}/{name}")
    return links


def to_zip(
    question: str,
    hits: Sequence[Hit],
    path: str | os.PathLike[str] | io.BytesIO,
    *,
    settings: ExportSettings = ExportSettings(),
) -> None:
    """A ZIP with ``pages/*``, ``prompt.md`` (linking them) and ``messages.json``."""
    names = [f"pages/{page_filename(i, h, settings)}" for i, h in enumerate(hits, start=1)]
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, hit in zip(names, hits, strict=True):
            data, _ = encode_page(hit, settings)
            zf.writestr(name, data)
        zf.writestr("prompt.md", to_markdown(question, hits, image_links=names))
        messages = to_openai_messages(question, hits, settings=settings)
        zf.writestr("messages.json", json.dumps(messages, indent=1))


def zip_bytes(
    question: str, hits: Sequence[Hit], *, settings: ExportSettings = ExportSettings()
) -> bytes:
    buf = io.BytesIO()
    to_zip(question, hits, buf, settings=settings)
    return buf.getvalue()
