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


# --------------------------------------------------------------------------- decode budget
# Issue 22, finding 2: decoding memory is admitted by bytes (tests/test_decode_memory.py
# measures the server's peak with it).


def _jpeg(mode: str, size: tuple[int, int], **options) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 30, 5) if mode == "CMYK" else (200, 30, 90)).save(
        buf, format="JPEG", **options
    )
    return buf.getvalue()


def test_jpeg_layout_from_the_header():
    from indexer.pages.decoding import read_jpeg_layout

    cmyk = open_image(io.BytesIO(_jpeg("CMYK", (1000, 600), progressive=True)))
    layout = read_jpeg_layout(cmyk.fp)
    assert layout is not None and layout.sof == 0xC2 and layout.full_buffer
    assert (layout.width, layout.height, layout.sampling) == (1000, 600, [(1, 1)] * 4)
    assert layout.coefficient_bytes() == 4 * 125 * 75 * 128  # 2 bytes a sample, at full size
    assert cmyk.fp.tell() > 0  # the position Pillow left is kept
    baseline = open_image(io.BytesIO(_jpeg("RGB", (1000, 600))))
    layout = read_jpeg_layout(baseline.fp)
    assert layout is not None and layout.sof == 0xC0 and not layout.full_buffer
    assert layout.sampling == [(2, 2), (1, 1), (1, 1)] and layout.first_scan_components == 3
    # A sequential file whose first scan holds one component needs full buffers as well.
    assert type(layout)(0xC0, 1000, 600, [(1, 1)] * 3, scan=1).full_buffer
    assert read_jpeg_layout(io.BytesIO(b"\xff\xd8\xff\xda")) is None


def test_estimate_counts_progressive_coefficients():
    from indexer.pages.decoding import estimate_decode_bytes

    def estimate(data: bytes) -> int:
        im = open_image(io.BytesIO(data))
        size = im.size
        im.draft(None, (size[0] // 4, size[1] // 4))
        return estimate_decode_bytes(im, 250_000, full_size=size)

    baseline = estimate(_jpeg("RGB", (4000, 4000)))
    progressive = estimate(_jpeg("RGB", (4000, 4000), progressive=True, subsampling=0))
    cmyk = estimate(_jpeg("CMYK", (4000, 4000), progressive=True))
    assert baseline < 10 * 2**20
    assert progressive >= 4000 * 4000 * 3 * 2 > baseline
    assert cmyk >= 4000 * 4000 * 4 * 2


def test_decode_budget_admits_by_bytes():
    import threading
    import time

    from indexer.pages.decoding import DecodeBudget

    budget = DecodeBudget(100, wait_s=5)
    with pytest.raises(ImageRefusedError) as info, budget.reserve(101, "it"):
        pass
    assert info.value.reason == "too-large" and "more than" in str(info.value)
    order: list[str] = []
    with budget.reserve(60):

        def take(name: str, n: int) -> None:
            with budget.reserve(n):
                order.append(name)

        first = threading.Thread(target=take, args=("big", 70))
        first.start()
        time.sleep(0.1)
        second = threading.Thread(target=take, args=("small", 30))  # fits, but waits its turn
        second.start()
        time.sleep(0.1)
        assert order == [] and budget.reserved == 60
    first.join(5)
    second.join(5)
    assert order == ["big", "small"] and budget.reserved == 0 and budget.peak_reserved <= 100
    hurried = DecodeBudget(100, wait_s=0.05)
    with hurried.reserve(80), pytest.raises(ImageRefusedError) as info, hurried.reserve(30):
        pass
    assert info.value.reason == "busy"
    with hurried.reserve(100):  # a refused waiter leaves nothing behind
        pass


def test_decodes_wait_for_the_budget_and_large_ones_are_refused():
    import threading

    from indexer.pages.decoding import DecodeBudget, estimate_decode_bytes

    data = _jpeg("RGB", (3000, 3000), progressive=True)
    im = open_image(io.BytesIO(data))
    cost = estimate_decode_bytes(im, None)
    budget = DecodeBudget(cost + cost // 2)  # room for one at a time
    sizes: list[tuple[int, int]] = []
    threads = [
        threading.Thread(
            target=lambda: sizes.append(
                decode_image(io.BytesIO(data), target_pixels=None, budget=budget).size
            )
        )
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sizes == [(3000, 3000)] * 4
    assert cost <= budget.peak_reserved < 2 * cost  # never two at once
    with pytest.raises(ImageRefusedError) as info:
        decode_image(io.BytesIO(data), target_pixels=None, budget=DecodeBudget(cost // 2))
    assert info.value.reason == "too-large"
    assert "progressive RGB JPEG of 3000x3000 pixels" in str(info.value)


def test_server_answers_busy_and_too_large(monkeypatch):
    from app.server.errors import ApiError
    from app.server.images import ImageLoader
    from indexer.pages.decoding import DecodeBudget

    data = _jpeg("CMYK", (2000, 2000), progressive=True)
    small = DecodeBudget(10 * 2**20, wait_s=0.05)
    with pytest.raises(ApiError) as info:
        ImageLoader(fetcher=None, decode_budget=small).decode(data, "input[0].image")
    assert info.value.status == 400 and info.value.code == "image_too_large"
    assert "progressive CMYK JPEG" in info.value.message
    busy = DecodeBudget(200 * 2**20, wait_s=0.05)
    with busy.reserve(190 * 2**20), pytest.raises(ApiError) as info:
        ImageLoader(fetcher=None, decode_budget=busy).decode(data, "input[0].image")
    assert info.value.status == 503 and info.value.code == "server_overloaded"
    assert info.value.headers == {"Retry-After": "1"}
    loader = ImageLoader(fetcher=None, decode_budget=busy)
    assert loader.decode(data, "image").size == (2000, 2000)
