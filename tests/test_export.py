"""Hits -> prompt: the OpenAI messages, Markdown and ZIP exports on their own."""

from __future__ import annotations

import base64
import io
import json
import zipfile

import pytest
from PIL import Image

from retriever.export import (
    SYSTEM_PROMPT,
    ExportSettings,
    encode_page,
    page_filename,
    to_markdown,
    to_openai_messages,
    zip_bytes,
)
from retriever.search import Hit


@pytest.fixture
def hits(tmp_path):
    out = []
    for i, (doc, text) in enumerate([("Annual report.pdf", "Revenue grew 12%"), ("scan.png", "")]):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (2000, 1000), (40 * i, 120, 200)).save(path)
        out.append(
            Hit(doc, i + 1, f"/docs/{doc}", i + 3, 0.9 - i / 10, str(path), text[:20], 10 + i, text)
        )
    return out


def _decode(url: str) -> Image.Image:
    head, data = url.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


def test_openai_messages_cite_each_page_before_its_image(hits):
    messages = to_openai_messages("What grew?", hits, settings=ExportSettings(max_side=500))
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    content = messages[1]["content"]
    assert messages[1]["role"] == "user" and content[0]["text"] == "Question: What grew?"
    assert [c["type"] for c in content[1:]] == ["text", "image_url"] * 2
    assert content[1]["text"] == "[1] Annual report.pdf, p. 3"
    assert content[3]["text"] == "[2] scan.png, p. 4"
    image = _decode(content[2]["image_url"]["url"])
    assert image.format == "JPEG" and max(image.size) == 500  # downscaled, aspect kept
    assert image.size == (500, 250) and content[2]["image_url"]["detail"] == "high"
    json.dumps(messages)  # plain JSON, ready to send


def test_encode_page_formats_and_settings(hits):
    data, mime = encode_page(hits[0], ExportSettings(max_side=300, image_format="png"))
    assert mime == "image/png" and Image.open(io.BytesIO(data)).size == (300, 150)
    small = encode_page(hits[0], ExportSettings(quality=20))[0]
    assert len(small) < len(encode_page(hits[0], ExportSettings(quality=95))[0])
    with pytest.raises(ValueError, match="image_format"):
        ExportSettings(image_format="gif")
    with pytest.raises(ValueError, match="at least 64"):
        ExportSettings(max_side=10)


def test_markdown_has_sources_text_and_image_links(hits):
    md = to_markdown("What grew?", hits)
    assert md.startswith(SYSTEM_PROMPT) and "## Question\n\nWhat grew?" in md
    assert "1. Annual report.pdf, p. 3 (score 0.900)" in md
    assert "Revenue grew 12%" in md and "(this page has no text layer; see the image)" in md
    assert "](file://" in md  # local file links by default
    linked = to_markdown("q", hits, image_links=["pages/a.jpg", "pages/b.jpg"])
    assert "![scan.png, p. 4](pages/b.jpg)" in linked
    fenced = to_markdown("q", [Hit("d", 1, "/d", 1, 1.0, hits[0].image, "", 1, "a ``` b")])
    assert fenced.count("```") == 2  # page text cannot close the fence


def test_zip_holds_pages_prompt_and_messages(hits):
    settings = ExportSettings(max_side=256, image_format="webp")
    with zipfile.ZipFile(io.BytesIO(zip_bytes("What grew?", hits, settings=settings))) as zf:
        names = zf.namelist()
        assert names == [
            "pages/01-Annual_report-p3.webp",
            "pages/02-scan-p4.webp",
            "prompt.md",
            "messages.json",
        ]
        assert Image.open(io.BytesIO(zf.read(names[0]))).format == "WEBP"
        assert "](pages/02-scan-p4.webp)" in zf.read("prompt.md").decode()
        messages = json.loads(zf.read("messages.json"))
    assert messages[1]["content"][1]["text"] == "[1] Annual report.pdf, p. 3"
    assert page_filename(3, hits[0], ExportSettings()) == "03-Annual_report-p3.jpg"
