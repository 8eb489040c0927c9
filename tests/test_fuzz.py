"""A bounded fuzz test: a few hundred damaged PDFs (fixed seed) through the real indexer.

Seeds are valid PDFs of several kinds (PyMuPDF-made text, fonts, images, drawings,
annotations, an owner-password one; and a real pdfTeX manual from Debian, tests/data). Each
is damaged by byte flips, truncation, chunk deletion or duplication, zeroed ranges, splices
of two files, and targeted damage to the xref table, ``startxref``, object headers, stream
lengths and the page tree. Every case must end as *indexed* (every page stored, once) or
*refused* with a known :class:`~indexer.errors.DocumentError` reason naming the file; any
other exception fails the test. The whole corpus runs in this process with the fake
embedder and tiny pages, and a sample runs in a subprocess too, where a hard crash
(a segfault in MuPDF) would show as the process dying.
"""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pymupdf
import pytest
from PIL import Image, ImageDraw

from indexer.maintenance.check import check
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.store import Collection
from tests.support.pdfs import TOPICS, make_image_only_pdf, make_owner_only_pdf

SEED = 20240611
CASES = 200  # generated-seed cases; plus REAL_CASES of the real manual
REAL_CASES = 16
TIME_CAP_S = 60.0  # the in-process loop stops here even if cases remain
SUBPROCESS_SAMPLE = 30
REASONS = {
    "not-found",
    "empty",
    "not-a-pdf",
    "unsupported",
    "damaged",
    "needs-password",
    "wrong-password",
    "no-pages",
    "too-large",
    "bad-image",
}
TINY = RenderSettings(max_pixels=8 * 28 * 28)
DATA = Path(__file__).with_name("data")
WORKER = Path(__file__).parent / "support" / "crash_worker.py"


def _seed_pdfs(folder: Path) -> list[bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    out: list[bytes] = []

    doc = pymupdf.open()  # text in three built-in fonts, uncompressed (readable structure)
    for i, font in enumerate(("helv", "tiro", "cour")):
        page = doc.new_page()
        page.insert_textbox(pymupdf.Rect(50, 50, 550, 700), TOPICS[i] * 3, fontname=font)
    out.append(doc.tobytes(garbage=0, deflate=False, no_new_id=True))
    doc.close()

    doc = pymupdf.open()  # compressed, with an image, drawings and annotations
    page = doc.new_page()
    img = Image.new("RGB", (120, 80), "white")
    ImageDraw.Draw(img).ellipse((10, 10, 110, 70), fill=(200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "JPEG")
    page.insert_image(pymupdf.Rect(72, 72, 300, 230), stream=buf.getvalue())
    page.draw_rect(pymupdf.Rect(320, 72, 500, 200), color=(0, 0, 1), fill=(0.9, 0.9, 1))
    page.insert_text((72, 300), TOPICS[4], fontname="helv", fontsize=12)
    page.add_text_annot((400, 400), "a note")
    page.add_highlight_annot(pymupdf.Rect(72, 288, 300, 304))
    page2 = doc.new_page(width=400, height=300)
    page2.insert_text((20, 40), TOPICS[5], fontname="tiro", fontsize=10)
    page2.set_rotation(90)
    out.append(doc.tobytes(garbage=3, deflate=True, no_new_id=True))
    doc.close()

    out.append(make_image_only_pdf(folder / "scan.pdf", n=2).read_bytes())
    out.append(make_owner_only_pdf(folder / "owner.pdf").read_bytes())
    # an object-stream / xref-stream file (PDF 1.5 style)
    doc = pymupdf.open(folder / "scan.pdf")
    out.append(doc.tobytes(garbage=3, deflate=True, use_objstms=1, no_new_id=True))
    doc.close()
    return out


def _mutate(data: bytes, rnd: random.Random, other: bytes) -> tuple[str, bytes]:
    n = len(data)
    kind = rnd.choice(
        [
            "flip",
            "flip",
            "truncate",
            "delete",
            "duplicate",
            "zero",
            "splice",
            "xref",
            "startxref",
            "objheader",
            "length",
            "pagetree",
        ]
    )
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(rnd.randint(1, 24)):
            buf[rnd.randrange(n)] ^= rnd.randint(1, 255)
    elif kind == "truncate":
        buf = buf[: rnd.randrange(1, n)]
    elif kind == "delete":
        a = rnd.randrange(n)
        del buf[a : a + rnd.randint(1, max(1, n // 8))]
    elif kind == "duplicate":
        a = rnd.randrange(n)
        chunk = buf[a : a + rnd.randint(1, max(1, n // 8))]
        at = rnd.randrange(n)
        buf[at:at] = chunk
    elif kind == "zero":
        a = rnd.randrange(n)
        b = min(n, a + rnd.randint(1, max(1, n // 6)))
        buf[a:b] = bytes(b - a)
    elif kind == "splice":
        cut = rnd.randrange(1, n)
        buf = buf[:cut] + bytearray(other[rnd.randrange(len(other)) :])
    elif kind == "xref":
        at = data.rfind(b"xref")
        if at < 0:
            at = rnd.randrange(n)
        for _ in range(rnd.randint(1, 10)):
            i = at + rnd.randrange(max(1, min(400, n - at)))
            if i < len(buf):
                buf[i] = rnd.choice(b"0123456789 fn\n")
    elif kind == "startxref":
        buf = bytearray(
            re.sub(rb"startxref\s+\d+", b"startxref\n%d" % rnd.randint(0, 2 * n), bytes(buf))
        )
    elif kind == "objheader":
        matches = [m.start() for m in re.finditer(rb"\d+ 0 obj", data)]
        for at in rnd.sample(matches, min(len(matches), rnd.randint(1, 3))):
            buf[at : at + 1] = rnd.choice([b"9", b"x", b""])
    elif kind == "length":
        buf = bytearray(
            re.sub(
                rb"/Length \d+",
                lambda m: b"/Length %d" % rnd.randint(0, 10**6),
                bytes(buf),
                count=rnd.randint(1, 3),
            )
        )
    elif kind == "pagetree":
        repl = rnd.choice(
            [
                b"/Count 0",
                b"/Count 99999",
                b"/Count -1",
                b"/Kids []",
                b"/Type /Catalog",
                b"/Parent 1 0 R",
            ]
        )
        pat = rnd.choice([rb"/Count \d+", rb"/Kids \[[^\]]*\]", rb"/Type\s*/Page\b"])
        buf = bytearray(re.sub(pat, repl, bytes(buf), count=1))
    return kind, bytes(buf)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("fuzz")
    rnd = random.Random(SEED)
    seeds = _seed_pdfs(folder / "seeds")
    real = (DATA / "camlidl-manual.pdf").read_bytes()
    files = []
    for number in range(CASES + REAL_CASES):
        base = real if number >= CASES else seeds[number % len(seeds)]
        kind, data = _mutate(base, rnd, seeds[rnd.randrange(len(seeds))])
        path = folder / f"case{number:03d}-{kind}.pdf"
        path.write_bytes(data)
        files.append(path)
    return files


def _assert_clean(result, store: Collection) -> None:
    name = Path(result.path).name
    if result.status == "refused":
        assert result.reason in REASONS, (name, result.reason, result.message)
        assert name in result.message, result.message
        return
    assert result.status in ("added", "skipped"), (name, result)
    doc = store.document(result.document_id)
    assert doc.ready and result.pages == doc.page_count >= 1
    assert store.stored_page_numbers(doc.id) == set(range(1, doc.page_count + 1))


def test_fuzzed_pdfs_are_indexed_or_refused_cleanly(corpus, tmp_path):
    store = Collection(tmp_path / "coll")
    indexer = Indexer(store, FakeEmbedder(), settings=TINY, commit_every=4)
    started = time.monotonic()
    outcomes: dict[str, int] = {}
    done = 0
    for path in corpus:
        if time.monotonic() - started > TIME_CAP_S:
            break
        try:
            report = indexer.add([path])
        except Exception as exc:  # anything but a clean refusal is a bug
            pytest.fail(f"{path.name}: {type(exc).__name__}: {exc}")
        assert len(report.files) == 1
        result = report.files[0]
        _assert_clean(result, store)
        key = result.status if result.status != "refused" else f"refused:{result.reason}"
        outcomes[key] = outcomes.get(key, 0) + 1
        done += 1
    assert done >= min(len(corpus), 100), f"only {done} cases ran in {TIME_CAP_S}s"
    # both outcomes occur: the corpus is neither all-fatal nor all-harmless
    assert (
        outcomes.get("added", 0) > 10
        and sum(v for k, v in outcomes.items() if k.startswith("refused")) > 10
    ), outcomes
    report = check(store)
    assert report.ok, report.as_dict()  # refusals mid-render left nothing behind
    print(f"fuzz: {done} cases in {time.monotonic() - started:.1f}s: {outcomes}")


def test_fuzzed_sample_in_a_subprocess(corpus):
    """A segfault or abort in MuPDF would kill this process instead of failing a test."""
    sample = random.Random(SEED + 1).sample(corpus, SUBPROCESS_SAMPLE)
    proc = subprocess.run(
        [sys.executable, str(WORKER), "fuzz", *map(str, sample)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=WORKER.parents[2],
    )
    assert proc.returncode == 0, f"indexing process died ({proc.returncode}): {proc.stderr[-2000:]}"
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "DONE"
    results = [json.loads(line) for line in lines[:-1]]
    assert len(results) == len(sample)
    for entry in results:
        assert entry["status"] in ("added", "refused"), entry
        if entry["status"] == "refused":
            assert entry["reason"] in REASONS, entry
