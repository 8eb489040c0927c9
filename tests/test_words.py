"""Word boxes at index time (indexer.pages.words): every stored word sits where the word is
on the stored page image, on real PDFs not made for these tests.

The truth is PyMuPDF's ``search_for`` on the source page (the word's position found by
searching, not by the word list the boxes come from), mapped to the stored image with a
zoom and padding the test derives from the image's own size. Two quirks of ``search_for``
are allowed for, and bounded: it cannot find a word hyphenated at a line end ("pa-"), and
it merges repeats on one line (". . ." leaders) into one hit, which then covers the word.
Independently of ``search_for``, every box must hold ink on the stored image.

Rotated pages and a CropBox are made by modifying a real PDF with PyMuPDF; the padded page
is a strip cut from a real page with a tight aspect-ratio limit; OCR pages are a real page
rendered to a bitmap (an image file, and an image-only PDF).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from indexer.maintenance.repair import repair
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings, Word, decode_words, encode_words, render_page
from indexer.pages.mupdf import TEXT_FLAGS, pymupdf
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from indexer.stores.types import EncodedImage, encode_png

DATA = Path(__file__).parent / "data"
CAMLIDL = DATA / "camlidl-manual.pdf"  # a manual (pdfTeX, Type 1 fonts), committed
#: Real PDFs of Debian documentation packages, used where installed: a manual and a spec.
SYSTEM_PDFS = [
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
]
CASES = [(CAMLIDL, [1, 5, 12])] + [(p, [1, 3, 8]) for p in SYSTEM_PDFS]


def _iou(a: tuple, b: tuple) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _covered(word: tuple, hit: tuple) -> float:
    ix = max(0.0, min(word[2], hit[2]) - max(word[0], hit[0]))
    iy = max(0.0, min(word[3], hit[3]) - max(word[1], hit[1]))
    return ix * iy / max((word[2] - word[0]) * (word[3] - word[1]), 1e-12)


def _truth(page, text: str, size, zoom: tuple[float, float], offset=(0.0, 0.0)) -> list:
    """Where ``search_for`` finds ``text``, on the stored image, in 0..1."""
    width, height = size
    out = []
    for r in page.search_for(text, flags=TEXT_FLAGS):
        r = r * page.rotation_matrix  # search_for answers in unrotated page space
        out.append(
            (
                (r.x0 * zoom[0] + offset[0]) / width,
                (r.y0 * zoom[1] + offset[1]) / height,
                (r.x1 * zoom[0] + offset[0]) / width,
                (r.y1 * zoom[1] + offset[1]) / height,
            )
        )
    return out


def _grow(box: tuple, size) -> tuple:
    """One pixel of slack on each side: tiny boxes (a dot) are otherwise judged on rounding."""
    w, h = size
    return (box[0] - 1 / w, box[1] - 1 / h, box[2] + 1 / w, box[3] + 1 / h)


def _compare(words: list[Word], page, size, zoom, offset=(0.0, 0.0), *, min_len: int = 1):
    """(checked, not found, misplaced) words against the truth."""
    checked, missing, wrong = 0, [], []
    for w in words:
        if len(w.text) < min_len:
            continue
        hits = _truth(page, w.text, size, zoom, offset)
        if not hits:
            missing.append(w.text)
            continue
        checked += 1
        best = max(_iou(_grow(w.box, size), _grow(h, size)) for h in hits)
        merged = max(_covered(w.box, h) for h in hits)
        if best < 0.5 and merged < 0.8:
            wrong.append((w.text, round(best, 2)))
    return checked, missing, wrong


def _inked(image: Image.Image, words: list[Word]) -> list[str]:
    """Words whose box on the stored image holds no dark pixel."""
    grey = image.convert("L")
    w, h = grey.size
    empty = []
    for word in words:
        x0, y0, x1, y1 = word.box
        crop = grey.crop((int(x0 * w), int(y0 * h), int(x1 * w) + 1, int(y1 * h) + 1))
        if crop.getextrema()[0] > 200:  # thin glyphs ("|") antialias to grey
            empty.append(word.text)
    return empty


def _modified(src: Path, tmp: Path, number: int, change) -> Path:
    doc = pymupdf.open(src)
    change(doc[number - 1])
    out = tmp / f"modified-{src.stem}.pdf"
    doc.save(out)
    doc.close()
    return out


def _assert_placed(path: Path, number: int, settings: RenderSettings | None = None):
    page_image = render_page(path, number, settings=settings or RenderSettings())
    words = page_image.words
    assert len(words) > 10 and all(w.source == "text" for w in words)
    with pymupdf.open(path) as doc:
        page = doc[number - 1]
        width, height = page_image.image.size
        zoom = width / page.rect.width
        offset = ((width - page.rect.width * zoom) / 2, (height - page.rect.height * zoom) / 2)
        checked, missing, wrong = _compare(words, page, (width, height), (zoom, zoom), offset)
    assert checked >= 0.98 * len(words), missing
    assert len(wrong) <= 0.01 * len(words), wrong
    assert _inked(page_image.image, words) == []
    return page_image


@pytest.mark.parametrize(("path", "numbers"), CASES, ids=lambda v: getattr(v, "stem", None))
def test_boxes_sit_on_their_words_in_real_pdfs(path: Path, numbers: list[int]) -> None:
    if not path.is_file():
        pytest.skip(f"{path} is not installed here")
    for number in numbers:
        _assert_placed(path, number)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_rotated_pages(tmp_path: Path, rotation: int) -> None:
    path = _modified(CAMLIDL, tmp_path, 5, lambda p: p.set_rotation(rotation))
    page = _assert_placed(path, 5)
    upright = render_page(CAMLIDL, 5)
    assert [w.text for w in page.words] == [w.text for w in upright.words]
    # Independently of search_for: each box is its upright box turned clockwise.
    turn = {
        90: lambda b: (1 - b[3], b[0], 1 - b[1], b[2]),
        180: lambda b: (1 - b[2], 1 - b[3], 1 - b[0], 1 - b[1]),
        270: lambda b: (b[1], 1 - b[2], b[3], 1 - b[0]),
    }[rotation]
    for w, u in zip(page.words, upright.words, strict=True):
        assert w.box == pytest.approx(turn(u.box), abs=2e-3)


def test_cropbox_differs_from_mediabox(tmp_path: Path) -> None:
    path = _modified(CAMLIDL, tmp_path, 5, lambda p: p.set_cropbox(pymupdf.Rect(60, 100, 500, 600)))
    page = _assert_placed(path, 5)
    assert len(page.words) < len(render_page(CAMLIDL, 5).words)  # words outside are dropped
    assert all(0.0 <= v <= 1.0 for w in page.words for v in w.box)


def test_padded_strip_page(tmp_path: Path) -> None:
    """A strip of a real page, with an aspect-ratio limit that pads it (as GME's 200:1
    limit pads extreme pages): the boxes move with the centred content."""
    path = _modified(CAMLIDL, tmp_path, 5, lambda p: p.set_cropbox(pymupdf.Rect(50, 320, 550, 400)))
    settings = RenderSettings(max_aspect_ratio=3.0)
    page = _assert_placed(path, 5, settings)
    width, height = page.image.size
    assert width / height == pytest.approx(3.0, rel=0.01)  # padded from 500:80
    boxes = [w.box for w in page.words]
    assert min(b[1] for b in boxes) > 0.1 and max(b[3] for b in boxes) < 0.9  # in the middle


def _scan(tmp_path: Path, dpi: int = 150) -> tuple[Path, Path]:
    """A real page as a bitmap (bigger than GME's budget: it is downscaled) and as an
    image-only PDF: pages that only OCR can read."""
    with pymupdf.open(CAMLIDL) as doc:
        pix = doc[4].get_pixmap(dpi=dpi)
        png = tmp_path / "scan.png"
        pix.save(png)
        out = pymupdf.open()
        page = out.new_page(width=doc[4].rect.width, height=doc[4].rect.height)
        page.insert_image(page.rect, filename=str(png))
        pdf = tmp_path / "scan.pdf"
        out.save(pdf)
    return png, pdf


def test_ocr_pages_get_tesseract_boxes(tmp_path: Path) -> None:
    if shutil.which("tesseract") is None:
        pytest.skip("Tesseract is not installed")
    settings = RenderSettings(ocr=True)
    for path in _scan(tmp_path):
        page_image = render_page(path, 1, settings=settings)
        words = page_image.words
        assert len(words) > 100 and {w.source for w in words} == {"ocr"}
        with pymupdf.open(CAMLIDL) as doc:
            page = doc[4]
            width, height = page_image.image.size
            zoom = (width / page.rect.width, height / page.rect.height)
            checked, _, wrong = _compare(words, page, (width, height), zoom, min_len=3)
        assert checked > 100
        # OCR boxes come from Tesseract's lines, which now and then span two lines of a
        # downscaled bitmap: nearly all, not all.
        assert len(wrong) <= 0.06 * checked, wrong
        assert len(_inked(page_image.image, words)) <= 0.02 * len(words)
    assert render_page(path, 1).words == []  # without OCR a scan has no words


def test_encode_decode_round_trip_and_size() -> None:
    page = render_page(CAMLIDL, 12)
    data = encode_words(page.words)
    back = decode_words(data)
    assert [(w.text, w.line, w.source) for w in back] == [
        (w.text, w.line, w.source) for w in page.words
    ]
    for a, b in zip(back, page.words, strict=True):
        assert max(abs(x - y) for x, y in zip(a.box, b.box, strict=True)) <= 0.5 / 65535 + 1e-9
    assert len(data) < 0.1 * len(encode_png(page.image))
    assert len(data) < 12 * len(page.words)  # compact: about 10 bytes a word
    odd = [Word("naïve", (0.0, 0.4, 1.0, 1.0), 7, "ocr"), Word("", (0.2, 0.2, 0.6, 0.8), 0)]
    assert decode_words(encode_words(odd)) == odd  # multiples of 1/65535 are exact
    assert decode_words(encode_words([])) == []
    for bad in (b"", b"PLW1garbage", data[:-3], b"XXXX" + data[4:]):
        with pytest.raises(ValueError):
            decode_words(bad)


def _index(spec: str, files: list[Path]):
    store = open_collection(spec)
    with store.writing():
        Indexer(store, FakeEmbedder()).add(files)
    return store


def _words_by_page(store) -> dict:
    pages = store.pages(with_text=False)
    docs = {d.id: d.name for d in store.documents()}
    words = store.page_words_many([p.id for p in pages])
    return {(docs[p.document_id], p.number): words.get(p.id) for p in pages}


def test_engines_store_the_same_words(tmp_path: Path, milvus_server) -> None:
    src = tmp_path / "docs"
    src.mkdir()
    shutil.copy(CAMLIDL, src / "manual.pdf")
    local = _index(str(tmp_path / "local"), [src])
    remote = _index(f"milvus://{milvus_server.address}/t_words_parity", [src])
    try:
        a, b = _words_by_page(local), _words_by_page(remote)
        assert len(a) == 26 and all(a.values())
        assert a == b
        stored = local.page_words(local.pages()[4].id)
        rendered = render_page(CAMLIDL, 5).words
        assert stored is not None and [w.text for w in stored] == [w.text for w in rendered]
        remote.remove_document("manual.pdf")
        assert remote.page_words_many([p.id for p in local.pages()]) == {}
    finally:
        remote.drop()
        remote.close()
        local.close()


def test_repair_adds_boxes_to_pages_stored_without(open_store, tmp_path: Path, make_pdf):
    src = tmp_path / "docs"
    src.mkdir()
    shutil.copy(CAMLIDL, src / "manual.pdf")
    gone = make_pdf("gone.pdf", ["Honeybees dance.", "Penguins huddle."])
    store = open_store()
    with store.writing():
        Indexer(store, FakeEmbedder()).add([src / "manual.pdf", gone])
    before = _words_by_page(store)
    assert all(before.values())
    # Store every page again as the previous version did: image and text, no words.
    with store.writing():
        for doc in store.documents():
            pages = store.pages(doc.id)
            store.add_pages(
                doc.id,
                [
                    (p.number, p.text, EncodedImage(store.image_bytes(p), p.width, p.height))
                    for p in pages
                ],
            )
    assert set(_words_by_page(store).values()) == {None}
    gone.unlink()
    report = repair(store)
    notes = [n for n in report.repaired if n["kind"] == "word-boxes"]
    assert notes == [
        {
            "kind": "word-boxes",
            "detail": notes[0]["detail"],
            "document": "manual.pdf",
            "count": 26,
        }
    ]
    after = _words_by_page(store)
    assert {k: v for k, v in after.items() if k[0] == "manual.pdf"} == {
        k: v for k, v in before.items() if k[0] == "manual.pdf"
    }
    assert after[("gone.pdf", 1)] is None and after[("gone.pdf", 2)] is None
    assert store.stats().embedded == store.stats().pages  # nothing was embedded again
    assert repair(store).repaired == []  # nothing left to do


def test_old_collection_shows_no_words(tmp_path: Path) -> None:
    folder = tmp_path / "col"
    shutil.copytree(DATA / "release-2-collection" / "col", folder)
    store = open_collection(folder)
    ids = [p.id for p in store.pages(with_text=False)]
    assert ids and store.page_words_many(ids) == {}
    assert store.page_words(ids[0]) is None
    with store.writing():
        store.set_page_words(ids[0], [Word("x", (0.2, 0.2, 0.4, 0.6), 0)])
    assert store.page_words(ids[0]) == [Word("x", (0.2, 0.2, 0.4, 0.6), 0)]
