"""One decoder for every user image (indexer/pages/raster.py): the format allow-list holds for
image documents, query images (CLI, app, library) and the API alike."""

from __future__ import annotations

import io

import pytest
from PIL import EpsImagePlugin, Image

from indexer.errors import DocumentError, QueryError
from indexer.pages import render_pages
from indexer.pages.raster import ALLOWED_FORMATS, ImageRefusedError, decode_image, open_image
from retriever.search import load_query_image

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n"


@pytest.fixture
def eps_opened(monkeypatch):
    opened: list[int] = []
    real = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(
        EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or real(self)
    )
    return opened


def test_allow_list_is_the_issue_list():
    assert set(ALLOWED_FORMATS) == {"PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"}


def test_eps_disguised_as_png_document_is_refused(tmp_path, eps_opened):
    fake = tmp_path / "scan.png"
    fake.write_bytes(EPS)
    with pytest.raises(DocumentError) as info:
        list(render_pages(fake))
    assert info.value.reason == "bad-image"
    assert eps_opened == []


def test_query_images_use_the_allow_list(tmp_path, eps_opened):
    fake = tmp_path / "q.png"
    fake.write_bytes(EPS)
    with pytest.raises(QueryError, match="PNG, JPEG"):
        load_query_image(fake)
    upload = io.BytesIO(EPS)
    upload.name = "upload.png"  # a Streamlit UploadedFile has a name
    with pytest.raises(QueryError, match="upload.png"):
        load_query_image(upload)
    assert eps_opened == []
    good = io.BytesIO()
    Image.new("RGB", (3000, 2000), "white").save(good, format="PNG")
    good.seek(0)
    assert load_query_image(good).size == (1500, 1000)  # kept near GME's budget


def test_open_image_is_lazy_and_decode_is_capped():
    buf = io.BytesIO()
    Image.new("L", (5000, 4000)).save(buf, format="PNG")
    im = open_image(io.BytesIO(buf.getvalue()))
    assert im.size == (5000, 4000) and im.format == "PNG"
    with pytest.raises(ImageRefusedError) as info:
        decode_image(io.BytesIO(buf.getvalue()), max_pixels=10_000_000)
    assert info.value.reason == "too-large"
    small = io.BytesIO()
    Image.effect_noise((300, 300), 50).save(small, format="PNG")
    with pytest.raises(ImageRefusedError) as info:
        decode_image(io.BytesIO(small.getvalue()[:2000]))
    assert info.value.reason == "unreadable"
