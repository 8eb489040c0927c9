"""Tests for indexer.pages: pixel budgets, orientation, text layers, streaming, refusals."""

from __future__ import annotations

import hashlib
import inspect
import io
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import pymupdf
import pytest
from PIL import Image

from indexer.errors import DocumentError
from indexer.model import FakeEmbedder
from indexer.pages import (
    SUPPORTED_SUFFIXES,
    DocumentInfo,
    PageImage,
    PageRenderError,
    RenderSettings,
    extract_text,
    file_sha256,
    inspect_document,
    iter_input_files,
    normalize_text,
    render_page,
    render_pages,
)
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from tests.support.pdfs import (
    TOPICS,
    make_broken_xref_pdf,
    make_encrypted_pdf,
    make_garbage_text_pdf,
    make_huge_image_pdf,
    make_image_only_pdf,
    make_jpeg,
    make_many_pages_pdf,
    make_multipage_tiff,
    make_no_pages_pdf,
    make_owner_only_pdf,
    make_png,
    make_png_bomb,
    make_poster_pdf,
    make_rotated_pdf,
    make_strip_pdf,
    make_text_pdf,
    make_tiny_page_pdf,
    make_truncated_image,
    make_truncated_pdf,
    make_webp,
)

DEFAULT = RenderSettings()
BUDGET = DEFAULT.max_pixels


def words(text: str) -> str:
    return " ".join(text.split())


def area(image: Image.Image) -> int:
    return image.width * image.height


def assert_qwen_ok(image: Image.Image, settings: RenderSettings = DEFAULT) -> None:
    """What Qwen's smart_resize needs, and our budget ceiling."""
    assert image.mode == "RGB"
    assert min(image.size) >= 28
    assert max(image.size) / min(image.size) <= 200
    assert area(image) <= 1.1 * settings.max_pixels


def dark_share(image: Image.Image, box: tuple[int, int, int, int]) -> float:
    arr = np.asarray(image.crop(box).convert("L"))
    return float((arr < 100).mean())


def reason_of(exc_info: pytest.ExceptionInfo[DocumentError]) -> str:
    return exc_info.value.reason


# --------------------------------------------------------------------------------------
# Settings, files


def test_settings_for_tokens_and_dict() -> None:
    assert DEFAULT.max_pixels == 1280 * 28 * 28
    s = RenderSettings.for_tokens(256)
    assert s.max_pixels == 256 * 784
    d = s.as_dict()
    assert d["max_pixels"] == 256 * 784 and d["max_aspect_ratio"] == 200
    assert RenderSettings(**d) == s
    with pytest.raises(ValueError):
        RenderSettings(max_pixels=10)


def test_supported_suffixes() -> None:
    for suffix in (".pdf", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff"):
        assert suffix in SUPPORTED_SUFFIXES


def test_iter_input_files(tmp_path: Path) -> None:
    root = tmp_path / "docs"
    (root / "b" / "deep").mkdir(parents=True)
    (root / ".hidden").mkdir()
    make_text_pdf(root / "z.pdf", ["z"])
    make_text_pdf(root / "a.PDF", ["a"])
    make_png(root / "b" / "scan.png")
    make_text_pdf(root / "b" / "deep" / "c.pdf", ["c"])
    make_text_pdf(root / ".hidden" / "secret.pdf", ["s"])
    make_text_pdf(root / ".dotfile.pdf", ["d"])
    (root / "notes.log").write_text("not a document")
    explicit = tmp_path / "readme.log"
    explicit.write_text("named on purpose")

    got = list(iter_input_files([root, explicit, tmp_path / "missing.pdf", root / "z.pdf"]))
    rel = [p.relative_to(tmp_path).as_posix() for p in got]
    assert rel == [
        "docs/a.PDF",
        "docs/b/deep/c.pdf",
        "docs/b/scan.png",
        "docs/z.pdf",
        "readme.log",
        "missing.pdf",
    ]


def test_file_sha256(tmp_path: Path) -> None:
    path = make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_makers_are_deterministic(tmp_path: Path) -> None:
    a = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3]).read_bytes()
    b = make_text_pdf(tmp_path / "b.pdf", TOPICS[:3]).read_bytes()
    assert a == b


# --------------------------------------------------------------------------------------
# inspect_document


def test_inspect_text_pdf(tmp_path: Path) -> None:
    path = make_text_pdf(tmp_path / "a.pdf", TOPICS[:4], title="Field notes")
    info = inspect_document(path)
    assert isinstance(info, DocumentInfo)
    assert info == DocumentInfo(
        path=path,
        kind="pdf",
        page_count=4,
        sha256=file_sha256(path),
        title="Field notes",
        encrypted=False,
    )
    assert inspect_document(make_text_pdf(tmp_path / "b.pdf", ["x"])).title is None


def test_inspect_images(tmp_path: Path) -> None:
    info = inspect_document(make_multipage_tiff(tmp_path / "fax.tiff", n=3))
    assert (info.kind, info.page_count, info.encrypted, info.title) == ("image", 3, False, None)
    assert inspect_document(make_png(tmp_path / "a.png")).page_count == 1
    assert inspect_document(make_jpeg(tmp_path / "a.jpg")).page_count == 1
    assert inspect_document(make_webp(tmp_path / "a.webp")).page_count == 1


def test_content_decides_not_suffix(tmp_path: Path) -> None:
    pdf = make_text_pdf(tmp_path / "download", [TOPICS[0]])  # no suffix at all
    assert inspect_document(pdf).kind == "pdf"
    png_named_pdf = make_png(tmp_path / "odd.png").rename(tmp_path / "odd.pdf")
    assert inspect_document(png_named_pdf).kind == "image"


# --------------------------------------------------------------------------------------
# Pixel budget


@pytest.mark.parametrize("size", [(612, 792), (792, 612), (595.3, 841.9), (1224, 792)])
@pytest.mark.parametrize("tokens", [256, 1280, 2048])
def test_pdf_pages_fill_the_budget(tmp_path: Path, size: tuple[float, float], tokens: int) -> None:
    settings = RenderSettings.for_tokens(tokens)
    path = make_text_pdf(tmp_path / "a.pdf", [TOPICS[0]], size=size)
    page = render_page(path, 1, settings=settings)
    assert isinstance(page, PageImage)
    assert settings.max_pixels <= area(page.image) <= 1.1 * settings.max_pixels
    assert_qwen_ok(page.image, settings)
    # Aspect ratio preserved (within a pixel of rounding).
    assert abs(page.image.width / page.image.height - size[0] / size[1]) < 0.01
    assert (page.width_pt, page.height_pt) == pytest.approx(size)


def test_poster_stays_within_budget(tmp_path: Path) -> None:
    path = make_poster_pdf(tmp_path / "poster.pdf")  # 250 x 500 inches
    start = time.perf_counter()
    page = render_page(path, 1)
    assert time.perf_counter() - start < 5
    assert (page.width_pt, page.height_pt) == (18000, 36000)
    assert BUDGET <= area(page.image) <= 1.1 * BUDGET
    assert_qwen_ok(page.image)
    assert "Mariana Trench" in words(page.text)


def test_tiny_page_is_zoomed_to_min_side(tmp_path: Path) -> None:
    page = render_page(make_tiny_page_pdf(tmp_path / "tiny.pdf"), 1)
    assert page.image.size == (28, 28)
    assert_qwen_ok(page.image)
    # The blue square in its middle was rendered (zoomed), not padded in.
    assert np.asarray(page.image)[14, 14].tolist() == [0, 0, 255]


def test_small_page_zoom_is_capped(tmp_path: Path) -> None:
    # 20 x 20 pt: reaching the budget would need zoom 50; max_zoom (16) stops at 320 px.
    page = render_page(make_tiny_page_pdf(tmp_path / "stamp.pdf", 20, 20), 1)
    assert page.image.size == (320, 320)
    # A 1-inch label is below the cap, so it gets the full budget.
    page = render_page(make_tiny_page_pdf(tmp_path / "label.pdf", 72, 72), 1)
    assert BUDGET <= area(page.image) <= 1.1 * BUDGET


def test_extreme_aspect_is_padded_to_200(tmp_path: Path) -> None:
    page = render_page(make_strip_pdf(tmp_path / "strip.pdf"), 1)  # 1440:1
    image = page.image
    assert image.width > image.height
    assert 199 <= image.width / image.height <= 200
    assert BUDGET <= area(image) <= 1.1 * BUDGET
    assert_qwen_ok(image)
    arr = np.asarray(image)
    assert (arr[0] == 255).all() and (arr[-1] == 255).all()  # white padding top and bottom
    assert "Sicilian" in page.text
    # Also at a tiny token budget, where min_side is what limits the ratio.
    small = RenderSettings.for_tokens(4)
    image = render_page(make_strip_pdf(tmp_path / "strip2.pdf"), 1, settings=small).image
    assert_qwen_ok(image, small)


def test_huge_embedded_image_renders_within_budget(tmp_path: Path) -> None:
    path = make_huge_image_pdf(tmp_path / "huge.pdf", side=20_000)
    start = time.perf_counter()
    page = render_page(path, 1)
    elapsed = time.perf_counter() - start
    assert elapsed < 10
    assert BUDGET <= area(page.image) <= 1.1 * BUDGET
    assert "Starry Night" in page.text
    # The stripes are there: both light and dark rows.
    grey = np.asarray(page.image.convert("L"))
    assert grey.min() < 100 and grey.max() > 150


# --------------------------------------------------------------------------------------
# Rotation


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_pages_come_out_as_a_reader_sees_them(tmp_path: Path, rotation: int) -> None:
    upright = render_page(make_rotated_pdf(tmp_path / "r0.pdf", rotation=0), 1)
    rotated = render_page(make_rotated_pdf(tmp_path / "r.pdf", rotation=rotation), 1)
    w, h = rotated.image.size
    if rotation in (90, 270):
        assert w > h  # a portrait page turned landscape
        assert (rotated.width_pt, rotated.height_pt) == (792, 612)
    else:
        assert w < h
    # The black bar on the unrotated page's top edge goes where a clockwise turn puts it.
    edge = {
        90: (w - 20, 0, w, h),  # right
        180: (0, h - 20, w, h),  # bottom
        270: (0, 0, 20, h),  # left
    }[rotation]
    assert dark_share(rotated.image, edge) > 0.9
    assert dark_share(rotated.image, (0, 0, w, 10)) < 0.2  # and not along the top
    # Same pixels as the upright rendering turned clockwise by the same angle.
    expected = upright.image.rotate(-rotation, expand=True).resize(rotated.image.size)
    diff = np.abs(np.asarray(expected, dtype=np.int16) - np.asarray(rotated.image, dtype=np.int16))
    assert diff.mean() < 8
    assert "ROTATED PAGE Torque" in words(rotated.text)


# --------------------------------------------------------------------------------------
# Text


def test_text_layer_matches_pages(tmp_path: Path) -> None:
    path = make_text_pdf(tmp_path / "a.pdf", TOPICS[:5])
    pages = list(render_pages(path))
    assert [p.number for p in pages] == [1, 2, 3, 4, 5]
    for page, topic in zip(pages, TOPICS[:5], strict=True):
        assert words(page.text) == topic
        assert extract_text(path, page.number) == page.text


def test_scanned_pages_have_no_text(tmp_path: Path) -> None:
    path = make_image_only_pdf(tmp_path / "scan.pdf", 2)
    pages = list(render_pages(path))
    assert [p.text for p in pages] == ["", ""]
    # ...but the pixels are there: dark glyphs on white.
    assert dark_share(pages[0].image, (0, 0, *pages[0].image.size)) > 0.001
    assert extract_text(path, 1) == ""


def test_garbage_text_layer_is_dropped(tmp_path: Path) -> None:
    path = make_garbage_text_pdf(tmp_path / "garbage.pdf")
    raw = pymupdf.open(path)[0].get_text()
    assert raw.strip()  # MuPDF's default flags do give *something*...
    assert render_page(path, 1).text == ""  # ...which we refuse as garbage
    assert extract_text(path, 1) == ""


def test_normalize_text() -> None:
    assert normalize_text("") == ""
    assert normalize_text("Hello\x00 world\x07, here\x1b we go") == "Hello world , here we go"
    assert normalize_text("\x00\x01\x02\x03\x04 ab") == ""  # mostly control codes: garbage
    assert normalize_text("  one   two\t\tthree  \r\n\n\n\n\nfour\f") == "one two three\n\nfour"
    assert normalize_text("\ufb01nance of\u00a0the o\ufb03ce") == "finance of the office"
    assert normalize_text("soft\u00adhyphen zero\u200bwidth") == "softhyphen zerowidth"
    assert normalize_text("\ufffd\ufffd\ufffd\ufffd ab") == ""
    assert normalize_text("\ue000\ue001\ue002\ue003 x") == ""
    assert normalize_text("a rare \ufffd in good text") == "a rare in good text"
    assert normalize_text(" \n\t ") == ""
    assert normalize_text("line one\nline two") == "line one\nline two"


def test_extract_text_of_image_is_empty(tmp_path: Path) -> None:
    assert extract_text(make_png(tmp_path / "a.png"), 1) == ""
    with pytest.raises(ValueError):
        extract_text(make_png(tmp_path / "b.png"), 2)


# --------------------------------------------------------------------------------------
# Streaming


def test_render_pages_streams_lazily(tmp_path: Path) -> None:
    path = make_many_pages_pdf(tmp_path / "many.pdf", 300)
    assert inspect_document(path).page_count == 300
    gen = render_pages(path)
    assert inspect.isgenerator(gen)
    start = time.perf_counter()
    first = list(itertools.islice(gen, 3))
    elapsed = time.perf_counter() - start
    gen.close()
    assert [p.number for p in first] == [1, 2, 3]
    assert words(first[2].text).startswith("Page 3 ")
    assert elapsed < 3  # three pages, not three hundred

    picked = list(render_pages(path, pages=[300, 5, 150]))
    assert [p.number for p in picked] == [300, 5, 150]
    assert [words(p.text).split()[:2] for p in picked] == [
        ["Page", "300"],
        ["Page", "5"],
        ["Page", "150"],
    ]
    assert render_page(path, 42).number == 42
    with pytest.raises(ValueError):
        list(render_pages(path, pages=[301]))
    with pytest.raises(ValueError):
        render_page(path, 0)


def test_nothing_is_opened_before_iteration(tmp_path: Path) -> None:
    gen = render_pages(tmp_path / "missing.pdf")  # no error yet: a lazy generator
    with pytest.raises(DocumentError) as exc:
        next(gen)
    assert reason_of(exc) == "not-found"


def test_page_render_failure_names_the_page(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])
    real = pymupdf.Page.get_pixmap

    def flaky(self: pymupdf.Page, *args: object, **kwargs: object) -> pymupdf.Pixmap:
        if self.number == 1:  # 0-based: page 2
            raise RuntimeError("code=2: broken content stream")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", flaky)
    gen = render_pages(path)
    assert next(gen).number == 1
    with pytest.raises(PageRenderError) as exc:
        next(gen)
    assert isinstance(exc.value, DocumentError)
    assert (exc.value.reason, exc.value.page) == ("damaged", 2)
    assert "page 2" in str(exc.value) and "a.pdf" in str(exc.value)
    rest = list(render_pages(path, pages=range(3, 4)))  # how a caller skips the bad page
    assert [p.number for p in rest] == [3]


# --------------------------------------------------------------------------------------
# Damaged, encrypted and refused files


def test_broken_xref_is_repaired(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    path = make_broken_xref_pdf(tmp_path / "broken.pdf", TOPICS[:3])
    with caplog.at_level(logging.DEBUG, logger="indexer.pages"):
        assert inspect_document(path).page_count == 3
        texts = [words(p.text) for p in render_pages(path)]
    assert texts == TOPICS[:3]
    assert "repair" in caplog.text  # MuPDF's chatter went to logging...
    out, err = capfd.readouterr()
    assert "repair" not in err and "repair" not in out  # ...not to the terminal


def test_encrypted_pdf(tmp_path: Path) -> None:
    path = make_encrypted_pdf(tmp_path / "secret.pdf", user_pw="open-sesame", owner_pw="boss")
    with pytest.raises(DocumentError) as exc:
        inspect_document(path)
    assert reason_of(exc) == "needs-password"
    assert "secret.pdf" in str(exc.value)
    with pytest.raises(DocumentError) as exc:
        list(render_pages(path, password="wrong"))
    assert reason_of(exc) == "wrong-password"
    info = inspect_document(path, password="open-sesame")
    assert (info.page_count, info.encrypted) == (2, True)
    assert words(render_page(path, 2, password="open-sesame").text) == TOPICS[1]
    assert words(extract_text(path, 1, password="boss")) == TOPICS[0]


def test_owner_only_pdf_opens_without_password(tmp_path: Path) -> None:
    path = make_owner_only_pdf(tmp_path / "locked-printing.pdf")
    info = inspect_document(path)
    assert (info.page_count, info.encrypted) == (2, True)
    assert [words(p.text) for p in render_pages(path)] == TOPICS[2:4]


def _refusal(path: Path, **kwargs: object) -> DocumentError:
    with pytest.raises(DocumentError) as exc:
        inspect_document(path, **kwargs)  # type: ignore[arg-type]
    assert str(path.name) in str(exc.value)
    with pytest.raises(DocumentError) as exc2:
        list(render_pages(path, **kwargs))  # type: ignore[arg-type]
    assert exc2.value.reason == exc.value.reason
    return exc.value


def test_refusals(tmp_path: Path) -> None:
    assert _refusal(tmp_path / "missing.pdf").reason == "not-found"
    (tmp_path / "empty.pdf").write_bytes(b"")
    assert _refusal(tmp_path / "empty.pdf").reason == "empty"
    (tmp_path / "page.pdf").write_text("<!DOCTYPE html><html><body>Login</body></html>")
    assert _refusal(tmp_path / "page.pdf").reason == "not-a-pdf"
    (tmp_path / "notes.log").write_text("just some notes")
    assert _refusal(tmp_path / "notes.log").reason == "unsupported"
    (tmp_path / "fake.png").write_text("not really a png")
    assert _refusal(tmp_path / "fake.png").reason == "bad-image"
    assert _refusal(make_truncated_pdf(tmp_path / "cut.pdf")).reason == "damaged"
    assert _refusal(make_no_pages_pdf(tmp_path / "none.pdf")).reason == "no-pages"
    big = make_text_pdf(tmp_path / "big.pdf", TOPICS[:2])
    assert _refusal(big, settings=RenderSettings(max_file_bytes=100)).reason == "too-large"
    (tmp_path / "folder.pdf").mkdir()
    assert _refusal(tmp_path / "folder.pdf").reason == "unsupported"


def test_truncated_pdf_with_enough_left_is_repaired(tmp_path: Path) -> None:
    path = make_truncated_pdf(tmp_path / "mostly.pdf", keep=0.95)
    assert inspect_document(path).page_count == 3
    assert len(list(render_pages(path))) == 3


# --------------------------------------------------------------------------------------
# Image files


def test_small_png_is_not_upscaled(tmp_path: Path) -> None:
    page = render_page(make_png(tmp_path / "a.png", (800, 600)), 1)
    assert page.image.size == (800, 600)
    assert (page.width_pt, page.height_pt, page.text) == (800, 600, "")
    assert np.asarray(page.image)[5, 400].tolist() == [200, 0, 0]  # red bar at the top


def test_big_images_are_downscaled_to_budget(tmp_path: Path) -> None:
    for path in (
        make_jpeg(tmp_path / "photo.jpg", (6000, 4000)),
        make_png(tmp_path / "scan.png", (3000, 4000)),
    ):
        page = render_page(path, 1)
        assert BUDGET <= area(page.image) <= 1.1 * BUDGET
        assert_qwen_ok(page.image)
        ratio = page.image.width / page.image.height
        assert abs(ratio - (page.width_pt / page.height_pt)) < 0.01


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = make_jpeg(tmp_path / "phone.jpg", (800, 600), exif_orientation=6)
    page = render_page(path, 1)
    w, h = page.image.size
    assert (w, h) == (600, 800)  # stored landscape, shown portrait
    assert (page.width_pt, page.height_pt) == (600, 800)
    # Orientation 6 = rotate 90 clockwise to display: the stored top bar ends up on the right.
    green = np.asarray(page.image)[:, w - 10, 1].mean()
    assert green > 120 and np.asarray(page.image)[:, w - 10, 0].mean() < 60


def test_transparency_becomes_white(tmp_path: Path) -> None:
    page = render_page(make_png(tmp_path / "t.png", (400, 300), mode="RGBA"), 1)
    arr = np.asarray(page.image)
    assert (arr[:, 300:] == 255).all()
    assert arr[5, 100].tolist() == [200, 0, 0]


def test_sixteen_bit_png(tmp_path: Path) -> None:
    arr = (np.linspace(0, 65535, 256, dtype=np.uint16)[None, :]).repeat(64, axis=0)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    image = render_page(path, 1).image
    grey = np.asarray(image.convert("L"))
    assert grey[0, 0] < 5 and grey[0, -1] > 250


def test_multipage_tiff_pages(tmp_path: Path) -> None:
    path = make_multipage_tiff(tmp_path / "fax.tif", n=3)
    pages = list(render_pages(path))
    assert [p.number for p in pages] == [1, 2, 3]
    assert all(p.image.size == (600, 800) and p.text == "" for p in pages)
    assert render_page(path, 3).image.tobytes() == pages[2].image.tobytes()
    assert pages[0].image.tobytes() != pages[1].image.tobytes()
    backwards = list(render_pages(path, pages=[3, 1]))
    assert [p.image.tobytes() for p in backwards] == [
        pages[2].image.tobytes(),
        pages[0].image.tobytes(),
    ]


def test_webp(tmp_path: Path) -> None:
    assert render_page(make_webp(tmp_path / "a.webp"), 1).image.size == (640, 480)


def test_elongated_image_is_padded(tmp_path: Path) -> None:
    path = make_png(tmp_path / "receipt.png", (30, 9000))  # 300:1
    image = render_page(path, 1).image
    assert image.height == 9000 and image.width == 45
    assert_qwen_ok(image)


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_truncated_image_is_bad_image(tmp_path: Path, kind: str) -> None:
    path = make_truncated_image(tmp_path / f"cut.{kind.lower()}", kind)
    assert inspect_document(path).page_count == 1  # the header still reads
    with pytest.raises(DocumentError) as exc:
        render_page(path, 1)
    assert reason_of(exc) == "bad-image"


def test_decompression_bomb_is_too_large(tmp_path: Path) -> None:
    before = Image.MAX_IMAGE_PIXELS
    with pytest.raises(DocumentError) as exc:
        inspect_document(make_png_bomb(tmp_path / "bomb.png"))
    assert reason_of(exc) == "too-large"
    assert Image.MAX_IMAGE_PIXELS == before  # Pillow's global limit is restored
    small_limit = RenderSettings(max_image_pixels=1000)
    with pytest.raises(DocumentError) as exc:
        inspect_document(make_png(tmp_path / "a.png"), settings=small_limit)
    assert reason_of(exc) == "too-large"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_large_but_legitimate_image_header_is_accepted(tmp_path: Path) -> None:
    # 12,000 x 12,000 declared: over Pillow's warning threshold, under our pixel limit and
    # within the decode budget (greyscale: ~3 bytes a pixel while decoding). Only the
    # header is read by inspect_document, so a header-only file suffices here. (20,000 x
    # 20,000 is over the budget: test_huge_image_document_is_refused_by_the_decode_budget.)
    bomb = make_png_bomb(tmp_path / "big.png", side=12_000)
    assert inspect_document(bomb).page_count == 1


def test_huge_image_document_is_refused_by_the_decode_budget(tmp_path: Path) -> None:
    """A PNG whose header claims 20,000 x 20,000 pixels (under the pixel limit, but ~1.1 GiB
    to decode) is refused by name, from its header, when inspected and when rendered: no
    decode is ever started (a header-only file would otherwise fail as ``bad-image``)."""
    from indexer.pages import raster

    (tmp_path / "docs").mkdir()
    bomb = make_png_bomb(tmp_path / "docs" / "poster.png", side=20_000)
    with pytest.raises(DocumentError) as exc:
        inspect_document(bomb)
    assert reason_of(exc) == "too-large"
    assert "poster.png" in str(exc.value) and "512 MiB" in str(exc.value)
    with pytest.raises(DocumentError) as exc:
        next(render_pages(bomb))
    assert reason_of(exc) == "too-large" and "allows for decoding images" in str(exc.value)
    assert raster.DECODE_BUDGET.reserved == 0
    make_png(tmp_path / "docs" / "fine.png")
    store = open_collection(str(tmp_path / "c"))
    try:
        report = Indexer(store, FakeEmbedder()).add([tmp_path / "docs"])
        outcome = {Path(f.path).name: (f.status, f.reason) for f in report.files}
        assert outcome == {"poster.png": ("refused", "too-large"), "fine.png": ("added", None)}
    finally:
        store.close()


def test_image_document_decodes_hold_the_decode_budget(tmp_path: Path, monkeypatch) -> None:
    """Each frame's decode reserves its estimate in the process's budget (shared with the
    API's image inputs) and gives it back; with the budget held elsewhere past its wait,
    the page is refused as ``busy`` by name, not decoded over the budget."""
    import threading

    from indexer.pages import raster
    from indexer.pages.decoding import DecodeBudget

    budget = DecodeBudget(64 * 2**20, wait_s=0.2)
    monkeypatch.setattr(raster, "DECODE_BUDGET", budget)
    scan = make_multipage_tiff(tmp_path / "scan.tiff", n=2)
    assert [p.number for p in render_pages(scan)] == [1, 2]
    assert budget.peak_reserved > 2 * 2**20 and budget.reserved == 0
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.reserve(budget.capacity - 2**20):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        held.wait(10)
        with pytest.raises(DocumentError) as exc:
            render_page(scan, 2)
        assert reason_of(exc) == "busy" and "page 2 of" in str(exc.value)
        assert "scan.tiff" in str(exc.value)
    finally:
        release.set()
        holder.join()
    assert render_page(scan, 2).number == 2 and budget.reserved == 0


def test_jpeg_draft_bounds_memory(tmp_path: Path) -> None:
    # A 12,000 x 8,000 JPEG (96 Mpx) decodes at 1/8 scale via draft: fast, small.
    buffer = io.BytesIO()
    Image.new("L", (12_000, 8_000), 200).save(buffer, "JPEG", quality=50)
    path = tmp_path / "big.jpg"
    path.write_bytes(buffer.getvalue())
    start = time.perf_counter()
    page = render_page(path, 1)
    assert time.perf_counter() - start < 3
    assert BUDGET <= area(page.image) <= 1.1 * BUDGET


def test_process_wide_switches_are_left_as_found(tmp_path: Path, monkeypatch) -> None:
    """MuPDF's stderr switches and Pillow's bomb limit are process-wide: PageLens flips them
    only while it needs them (and Pillow's only for images past Pillow's own limit)."""
    import pymupdf

    from indexer.pages import pdf as pages_mod  # where MuPDF is opened

    tools = pymupdf.TOOLS
    before = (tools.mupdf_display_errors(), tools.mupdf_display_warnings())
    tools.mupdf_display_errors(True)
    tools.mupdf_display_warnings(True)
    try:
        seen: list[tuple[bool, bool]] = []
        real_open = pages_mod.pymupdf.open

        def spy_open(*args, **kwargs):
            seen.append((tools.mupdf_display_errors(), tools.mupdf_display_warnings()))
            return real_open(*args, **kwargs)

        pdf = make_text_pdf(tmp_path / "a.pdf", ["one", "two"])
        monkeypatch.setattr(pages_mod.pymupdf, "open", spy_open)
        assert inspect_document(pdf).page_count == 2
        assert [p.number for p in render_pages(pdf)] == [1, 2]
        assert extract_text(pdf, 2) == "two"
        assert seen and set(seen) == {(False, False)}  # quiet while MuPDF works...
        assert (tools.mupdf_display_errors(), tools.mupdf_display_warnings()) == (True, True)
    finally:  # ...and as the process had it afterwards
        tools.mupdf_display_errors(before[0])
        tools.mupdf_display_warnings(before[1])

    writes: list[object] = []

    class Watched(type(Image)):  # record every assignment to Image.MAX_IMAGE_PIXELS
        def __setattr__(cls, name, value):
            if name == "MAX_IMAGE_PIXELS":
                writes.append(value)
            super().__setattr__(name, value)

    limit = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "__class__", Watched)
    render_page(make_png(tmp_path / "small.png"), 1)
    assert writes == []  # an ordinary image never touches Pillow's global
    with pytest.raises(DocumentError) as exc:  # opened under our limit, then over the budget
        inspect_document(make_png_bomb(tmp_path / "big.png", side=20_000))
    assert reason_of(exc) == "too-large"
    assert writes == [RenderSettings().max_image_pixels, limit]  # raised, then put back
