"""Makers of test documents: PDFs and images with known content, built with PyMuPDF and
Pillow into a folder the test owns (usually ``tmp_path``).

Every maker takes the output path first, writes the file, and returns its ``Path``. Output is
deterministic (same bytes for the same arguments), except for encrypted PDFs, whose
encryption uses random salts. Pages carry distinctive sentences (see :data:`TOPICS`) so that
search tests can check which page was found::

    from tests.support.pdfs import TOPICS, make_text_pdf
    pdf = make_text_pdf(tmp_path / "a.pdf", TOPICS[:3])   # page 2 is about TOPICS[1]
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

from indexer.pages.mupdf import pymupdf

#: One distinctive topic sentence per line; use them as page texts.
TOPICS: list[str] = [
    "Honeybees communicate the direction of flowers through a waggle dance.",
    "The Treaty of Westphalia ended the Thirty Years War in 1648.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose.",
    "A sourdough starter is a culture of wild yeast and lactic acid bacteria.",
    "Quarterly revenue grew 14 percent, driven by cloud subscriptions in Europe.",
    "The Mariana Trench is the deepest known point in Earth's oceans.",
    "Torque equals the force applied multiplied by the lever arm distance.",
    "Vincent van Gogh painted The Starry Night in the asylum at Saint-Remy.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The patient was prescribed amoxicillin for a bacterial ear infection.",
    "Volcanic eruptions can lower global temperatures by injecting sulfate aerosols.",
    "The chess opening known as the Sicilian Defence begins 1.e4 c5.",
]

LETTER = (612.0, 792.0)


def _save(doc: pymupdf.Document, path: str | Path, **kwargs: object) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs.setdefault("garbage", 3)
    kwargs.setdefault("deflate", True)
    doc.save(path, no_new_id=True, **kwargs)
    doc.close()
    return path


def _text_page(doc: pymupdf.Document, text: str, size: tuple[float, float] = LETTER) -> None:
    page = doc.new_page(width=size[0], height=size[1])
    margin = min(size) * 0.1
    rect = pymupdf.Rect(margin, margin, size[0] - margin, size[1] - margin)
    fontsize = max(1.0, min(14.0, min(size) / 30))
    if page.insert_textbox(rect, text, fontsize=fontsize, fontname="helv") < 0:
        # Does not fit (tiny page): put it on one line anyway; clipping is fine.
        page.insert_text((margin, size[1] / 2), text, fontsize=fontsize, fontname="helv")


def make_text_pdf(
    path: str | Path,
    pages: list[str],
    *,
    title: str | None = None,
    size: tuple[float, float] = LETTER,
) -> Path:
    """A born-digital PDF: one page per string, with a real text layer."""
    doc = pymupdf.open()
    for text in pages:
        _text_page(doc, text, size)
    if title is not None:
        doc.set_metadata({"title": title})
    return _save(doc, path)


def _text_bitmap(text: str, size: tuple[float, float] = LETTER, dpi: int = 100) -> bytes:
    """PNG bytes of a page showing ``text``, made by rendering a text page (so the glyphs
    look like a scan of print)."""
    doc = pymupdf.open()
    _text_page(doc, text, size)
    pix = doc[0].get_pixmap(dpi=dpi, colorspace=pymupdf.csGRAY, alpha=False)
    data = pix.tobytes("png")
    doc.close()
    return data


def make_image_only_pdf(path: str | Path, n: int = 2, texts: list[str] | None = None) -> Path:
    """A scanned-like PDF: each page is one image of text, with no text layer.

    Page ``i`` shows ``texts[i]`` (default: ``TOPICS`` in turn).
    """
    texts = texts or [TOPICS[i % len(TOPICS)] for i in range(n)]
    doc = pymupdf.open()
    for text in texts[:n]:
        page = doc.new_page(width=LETTER[0], height=LETTER[1])
        page.insert_image(page.rect, stream=_text_bitmap(text))
    return _save(doc, path)


def make_rotated_pdf(
    path: str | Path, rotation: int = 90, text: str = "ROTATED PAGE " + TOPICS[6]
) -> Path:
    """A portrait Letter page carrying ``/Rotate rotation``: the content is drawn upright on
    the unrotated page (with a black bar along its top edge), so a reader shows it turned by
    ``rotation`` degrees clockwise, landscape for 90 and 270."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    # A big black bar along the top edge of the unrotated page, to locate "up" in pixels.
    page.draw_rect(pymupdf.Rect(0, 0, LETTER[0], 60), color=None, fill=(0, 0, 0))
    page.insert_textbox(pymupdf.Rect(72, 100, 540, 700), text, fontsize=16, fontname="helv")
    page.set_rotation(rotation)
    return _save(doc, path)


def make_encrypted_pdf(
    path: str | Path,
    user_pw: str = "user-secret",
    owner_pw: str = "owner-secret",
    pages: list[str] | None = None,
) -> Path:
    """A PDF that needs ``user_pw`` (or ``owner_pw``) to be opened (AES-256)."""
    doc = pymupdf.open()
    for text in pages or TOPICS[:2]:
        _text_page(doc, text)
    return _save(
        doc,
        path,
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        user_pw=user_pw,
        owner_pw=owner_pw,
    )


def make_owner_only_pdf(
    path: str | Path, owner_pw: str = "owner-secret", pages: list[str] | None = None
) -> Path:
    """Encrypted with an owner password only (permissions: no printing, no copying):
    anyone can open it without a password."""
    doc = pymupdf.open()
    for text in pages or TOPICS[2:4]:
        _text_page(doc, text)
    return _save(
        doc,
        path,
        encryption=pymupdf.PDF_ENCRYPT_AES_256,
        owner_pw=owner_pw,
        user_pw="",
        permissions=pymupdf.PDF_PERM_ACCESSIBILITY,
    )


def _plain_pdf_bytes(pages: list[str]) -> bytes:
    doc = pymupdf.open()
    for text in pages:
        _text_page(doc, text)
    data = doc.tobytes(garbage=3, deflate=False, no_new_id=True)
    doc.close()
    return data


def make_broken_xref_pdf(path: str | Path, pages: list[str] | None = None) -> Path:
    """A valid PDF whose xref table offsets and ``startxref`` are wrong (as after a careless
    edit or an FTP ASCII transfer). MuPDF rebuilds the xref and finds every page."""
    data = _plain_pdf_bytes(pages or TOPICS[:3])
    at = data.rindex(b"\nxref")
    table = re.sub(rb"\d{10} 00000 n", b"0000000003 00000 n", data[at:])
    table = re.sub(rb"startxref\s+\d+", b"startxref\n123456", table)
    path = Path(path)
    path.write_bytes(data[:at] + table)
    return path


def make_truncated_pdf(path: str | Path, keep: float = 0.2) -> Path:
    """The first ``keep`` share of a 3-page PDF, as after an interrupted download. With the
    default 0.2 not even the page tree survives, so MuPDF cannot repair it."""
    data = _plain_pdf_bytes(TOPICS[:3])
    path = Path(path)
    path.write_bytes(data[: max(16, int(len(data) * keep))])
    return path


def make_many_pages_pdf(path: str | Path, n: int = 300) -> Path:
    """``n`` small text pages; page ``i`` (1-based) says "Page i" and a topic sentence."""
    doc = pymupdf.open()
    for i in range(1, n + 1):
        page = doc.new_page(width=LETTER[0], height=LETTER[1])
        page.insert_text((72, 72), f"Page {i}", fontsize=18, fontname="helv")
        page.insert_text((72, 110), TOPICS[(i - 1) % len(TOPICS)], fontsize=11, fontname="helv")
    return _save(doc, path)


def make_poster_pdf(
    path: str | Path, width_in: float = 250.0, height_in: float = 500.0, text: str = TOPICS[5]
) -> Path:
    """One enormous page (default 250 x 500 inches = 18,000 x 36,000 pt, beyond the 200-inch
    limit of the PDF spec but accepted by MuPDF) with huge text."""
    size = (width_in * 72.0, height_in * 72.0)
    doc = pymupdf.open()
    page = doc.new_page(width=size[0], height=size[1])
    page.insert_textbox(
        pymupdf.Rect(size[0] * 0.05, size[1] * 0.05, size[0] * 0.95, size[1] * 0.95),
        text,
        fontsize=size[0] / 25,
        fontname="helv",
    )
    return _save(doc, path)


def make_tiny_page_pdf(path: str | Path, width_pt: float = 1.0, height_pt: float = 1.0) -> Path:
    """One page of ``width_pt x height_pt`` points (default 1 x 1), with a blue square filling
    its middle half."""
    doc = pymupdf.open()
    page = doc.new_page(width=width_pt, height=height_pt)
    square = pymupdf.Rect(width_pt / 4, height_pt / 4, width_pt * 3 / 4, height_pt * 3 / 4)
    page.draw_rect(square, color=None, fill=(0, 0, 1))
    return _save(doc, path)


def make_strip_pdf(path: str | Path, width_pt: float = 14400.0, height_pt: float = 10.0) -> Path:
    """One page far beyond 200:1 (default 1440:1), e.g. a ticker tape or a bad crop box."""
    doc = pymupdf.open()
    page = doc.new_page(width=width_pt, height=height_pt)
    page.insert_text((5, height_pt * 0.8), TOPICS[11], fontsize=height_pt * 0.7, fontname="helv")
    return _save(doc, path)


def make_huge_image_pdf(path: str | Path, side: int = 20_000) -> Path:
    """A Letter page filled by one ``side x side`` pixel image (1-bit grey stripes, so the
    file stays tiny: the image is written as a FlateDecode stream compressed row by row)."""
    row_bytes = (side + 7) // 8
    packer = zlib.compressobj(6)
    chunks = []
    light, dark = b"\xf0" * row_bytes, b"\x0f" * row_bytes
    for y in range(side):
        chunks.append(packer.compress(dark if (y // max(1, side // 40)) % 2 else light))
    chunks.append(packer.flush())
    stream = b"".join(chunks)

    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    placeholder = io.BytesIO()
    Image.new("L", (8, 8), 255).save(placeholder, "PNG")
    page.insert_image(page.rect, stream=placeholder.getvalue())
    xref = page.get_images()[0][0]
    doc.update_stream(xref, stream, compress=False)
    for key, value in (
        ("Width", str(side)),
        ("Height", str(side)),
        ("BitsPerComponent", "1"),
        ("ColorSpace", "/DeviceGray"),
        ("Filter", "/FlateDecode"),
        ("DecodeParms", "null"),
        ("SMask", "null"),
    ):
        doc.xref_set_key(xref, key, value)
    page.insert_text((72, 72), TOPICS[7], fontsize=12, fontname="helv")
    return _save(doc, path, garbage=0, deflate=False)


def make_garbage_text_pdf(path: str | Path) -> Path:
    """A page whose font maps its glyphs to no Unicode (custom glyph names, no ToUnicode),
    so the text layer extracts as replacement characters: it must be treated as absent."""
    doc = pymupdf.open()
    page = doc.new_page(width=LETTER[0], height=LETTER[1])
    names = " ".join(f"/zq{i}" for i in range(26))
    font_xref = doc.get_new_xref()
    doc.update_object(
        font_xref,
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica "
        f"/Encoding << /Type /Encoding /Differences [65 {names}] >> >>",
    )
    content = b"BT /FG 24 Tf 72 700 Td (ABCDEFGHIJ KLMNOPQRST UVWXYZ ABCDEFG) Tj ET"
    content_xref = doc.get_new_xref()
    doc.update_object(content_xref, "<< >>")
    doc.update_stream(content_xref, content)
    page_xref = page.xref
    doc.xref_set_key(page_xref, "Contents", f"{content_xref} 0 R")
    doc.xref_set_key(page_xref, "Resources", f"<< /Font << /FG {font_xref} 0 R >> >>")
    return _save(doc, path)


# --------------------------------------------------------------------------------------
# Image files


def _topic_image(size: tuple[int, int], text: str, color: tuple[int, int, int]) -> Image.Image:
    image = Image.new("RGB", size, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0, 0, w - 1, max(1, h // 10)), fill=color)  # a bar marks the top edge
    draw.text((max(1, w // 20), h // 3), text, fill=(0, 0, 0))
    return image


def make_png(
    path: str | Path,
    size: tuple[int, int] = (800, 600),
    text: str = TOPICS[0],
    *,
    mode: str = "RGB",
) -> Path:
    """A PNG with a red bar at the top and ``text``; ``mode`` "RGBA" makes the right half
    transparent (it must come out white)."""
    image = _topic_image(size, text, (200, 0, 0))
    if mode == "RGBA":
        image = image.convert("RGBA")
        alpha = Image.new("L", size, 255)
        alpha.paste(0, (size[0] // 2, 0, size[0], size[1]))
        image.putalpha(alpha)
    elif mode != "RGB":
        image = image.convert(mode)
    path = Path(path)
    image.save(path, "PNG")
    return path


def make_jpeg(
    path: str | Path,
    size: tuple[int, int] = (800, 600),
    text: str = TOPICS[1],
    *,
    exif_orientation: int | None = None,
    quality: int = 85,
) -> Path:
    """A JPEG with a green bar along the top of the *stored* pixels; with
    ``exif_orientation`` (1-8) the viewer is told to rotate/flip it."""
    image = _topic_image(size, text, (0, 160, 0))
    kwargs: dict[str, object] = {"quality": quality}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kwargs["exif"] = exif.tobytes()
    path = Path(path)
    image.save(path, "JPEG", **kwargs)
    return path


def make_multipage_tiff(
    path: str | Path, n: int = 3, size: tuple[int, int] = (600, 800), texts: list[str] | None = None
) -> Path:
    """A multi-page TIFF (one frame per page, like a fax or a scanner's output)."""
    texts = texts or [TOPICS[i % len(TOPICS)] for i in range(n)]
    frames = [_topic_image(size, f"Page {i + 1}: {t}", (0, 0, 200)) for i, t in enumerate(texts)]
    path = Path(path)
    frames[0].save(path, "TIFF", save_all=True, append_images=frames[1:], compression="tiff_lzw")
    return path


def make_webp(path: str | Path, size: tuple[int, int] = (640, 480), text: str = TOPICS[2]) -> Path:
    """A lossless WebP."""
    path = Path(path)
    _topic_image(size, text, (120, 0, 120)).save(path, "WEBP", lossless=True)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def make_png_bomb(path: str | Path, side: int = 100_000) -> Path:
    """A tiny PNG whose header declares ``side x side`` pixels (default 1e10): a
    decompression bomb that must be refused before any decoding."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale
    body = zlib.compress(b"\x00" * 1024)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", body)
        + _png_chunk(b"IEND", b"")
    )
    path = Path(path)
    path.write_bytes(data)
    return path


def make_truncated_image(path: str | Path, kind: str = "PNG") -> Path:
    """A PNG or JPEG cut off half way: the header reads, the pixels do not."""
    buffer = io.BytesIO()
    _topic_image((400, 300), TOPICS[3], (0, 0, 0)).save(buffer, kind)
    data = buffer.getvalue()
    path = Path(path)
    path.write_bytes(data[: len(data) // 2])
    return path


def make_no_pages_pdf(path: str | Path) -> Path:
    """A well-formed PDF whose page tree is empty (PyMuPDF refuses to save one, so it is
    written by hand)."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [] /Count 0 >>",
    ]
    out = bytearray(b"%PDF-1.7\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref_at,
    )
    path = Path(path)
    path.write_bytes(bytes(out))
    return path
