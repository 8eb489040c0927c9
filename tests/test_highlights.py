"""Text evidence for hits (issue 23): the boxes of a query's words on a page, drawn boxes
in exports and MCP, highlights in search --json and /v1/search, and answer citations'
quote boxes."""

from __future__ import annotations

import base64
import gzip
import io
import json
import unicodedata
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pages.mupdf import pymupdf
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from indexer.stores.text_terms import word_terms
from retriever.ask import parse_citations
from retriever.evidence import Highlight, draw_highlights, quote_highlights, text_highlights
from retriever.export import ExportSettings, encode_page, to_openai_messages
from retriever.search import Hit, Retriever


@dataclass(frozen=True)
class W:
    """A page word as :class:`indexer.pages.words.Word` has it (hand-made pages)."""

    text: str
    box: tuple[float, float, float, float]
    line: int
    source: str = "text"


def line_of(text: str, line: int, *, y: float | None = None, source: str = "text") -> list[W]:
    """The words of one line, laid out left to right (0.1 wide each, 0.02 gap)."""
    top = 0.05 + 0.06 * line if y is None else y
    return [
        W(word, (0.02 + 0.12 * i, top, 0.12 + 0.12 * i, top + 0.04), line, source)
        for i, word in enumerate(text.split())
    ]


PAGE = (
    line_of("Customers churned quickly in March", 0)
    + line_of("The churn rate rose while retention fell", 1)
    + line_of("Churning customers cite price", 2)
    + line_of("No information here", 3)
)


# -- matching ----------------------------------------------------------------------------


def test_stemming_matches_like_text_search():
    found = text_highlights(PAGE, "churn")
    assert [h.text for h in found] == ["churned", "churn", "Churning"]
    assert [h.box for h in found] == [PAGE[1].box, PAGE[6].box, PAGE[12].box]
    assert all(h.source == "text" and h.score == 1.0 for h in found)


def test_every_occurrence_and_phrase_merged_per_line():
    found = text_highlights(PAGE, "customer churn")
    # line 0: "Customers churned" adjacent -> one box; line 2: "Churning customers" -> one box
    assert [h.text for h in found] == ["Customers churned", "churn", "Churning customers"]
    first = found[0].box
    assert first == (PAGE[0].box[0], PAGE[0].box[1], PAGE[1].box[2], PAGE[1].box[3])
    # score: share of the query's distinct terms the box covers
    assert [h.score for h in found] == [1.0, 0.5, 1.0]


def test_absent_words_give_nothing():
    assert text_highlights(PAGE, "zebra giraffe") == []
    found = text_highlights(PAGE, "zebra price")
    assert [h.text for h in found] == ["price"] and found[0].score == 0.5
    assert text_highlights(PAGE, "form") == []  # not inside "information"
    assert text_highlights(None, "churn") == [] and text_highlights(PAGE, "  ") == []


def test_phrase_across_a_line_break_is_one_box_per_line():
    words = line_of("the monthly", 0) + line_of("revenue grew", 1)
    found = text_highlights(words, "monthly revenue")
    assert [(h.text, h.score) for h in found] == [("monthly", 1.0), ("revenue", 1.0)]
    assert found[0].box == words[1].box and found[1].box == words[2].box


def test_hyphenated_word_is_found_on_both_lines():
    words = line_of("customer reten-", 0) + line_of("tion improved", 1)
    found = text_highlights(words, "retention")
    assert [h.text for h in found] == ["reten-", "tion"]
    assert [h.box for h in found] == [words[1].box, words[2].box]


def test_ocr_source_is_kept():
    words = line_of("scanned invoice total", 0, source="ocr")
    assert [h.source for h in text_highlights(words, "invoice")] == ["ocr"]


def test_as_dict_keys_and_rounding():
    h = Highlight((0.123456, 0.2, 0.333333333, 0.4), "churn", "text", 2 / 3)
    assert h.as_dict() == {
        "box": [0.1235, 0.2, 0.3333, 0.4],
        "text": "churn",
        "source": "text",
        "score": 0.6667,
    }


def test_quote_sequence_match_tolerates_line_breaks_and_hyphens():
    words = line_of("Overall the churn rate", 0) + line_of("rose sharp-", 1) + line_of("ly.", 2)
    found = quote_highlights(words, "the churn rate rose sharply")
    assert [h.text for h in found] == ["the churn rate", "rose sharp-", "ly."]
    assert quote_highlights(words, "the rate rose") == []  # not in this order on the page
    assert quote_highlights(words, "") == []


# -- drawing and exports -----------------------------------------------------------------


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return np.any(np.asarray(a.convert("RGB")) != np.asarray(b.convert("RGB")), axis=2)


def _inside(mask_shape: tuple[int, int], boxes: list[tuple[float, ...]]) -> np.ndarray:
    h, w = mask_shape
    inside = np.zeros(mask_shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[int(y0 * h) : round(y1 * h), int(x0 * w) : round(x1 * w)] = True
    return inside


@pytest.mark.parametrize("background", [(255, 255, 255), (0, 0, 0), (200, 60, 30)])
def test_drawn_boxes_change_the_image_exactly_inside_the_boxes(background):
    image = Image.new("RGB", (400, 300), background)
    boxes = [(0.1, 0.1, 0.4, 0.2), (0.5, 0.6, 0.9, 0.8)]
    drawn = draw_highlights(image, [Highlight(b, "x", "text", 1.0) for b in boxes])
    changed = _changed(image, drawn)
    inside = _inside(changed.shape, boxes)
    assert changed[inside].mean() > 0.99  # outline and translucent fill: every pixel visible
    assert not changed[~inside].any()
    assert image.getpixel((0, 0)) == background  # the original is left alone


def test_visual_regions_are_a_heat_map():
    image = Image.new("RGB", (100, 100), (255, 255, 255))
    strong = draw_highlights(image, [Highlight((0, 0, 0.5, 0.5), "", "visual", 1.0)])
    weak = draw_highlights(image, [Highlight((0, 0, 0.5, 0.5), "", "visual", 0.2)])
    r, g, b = strong.getpixel((25, 25))
    assert r == 255 and g < 200 and g == b  # a red wash
    assert weak.getpixel((25, 25))[1] > g  # fainter for a lower score
    assert strong.getpixel((75, 75)) == (255, 255, 255)


@pytest.fixture
def page_hit(tmp_path):
    path = tmp_path / "page.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (500, 400, 3), dtype=np.uint8)).save(path)
    hls = tuple(text_highlights(PAGE, "churn"))
    return Hit("a.pdf", 1, "/a.pdf", 1, 0.5, str(path), "", 7, "", highlights=hls, words=PAGE)


def test_exports_draw_boxes_only_inside_the_boxes(page_hit):
    plain_settings = ExportSettings(max_side=1000, image_format="png")
    plain, _ = encode_page(page_hit, plain_settings)
    drawn, _ = encode_page(page_hit, replace(plain_settings, draw_boxes=True))
    a, b = Image.open(io.BytesIO(plain)), Image.open(io.BytesIO(drawn))
    changed = _changed(a, b)
    inside = _inside(changed.shape, [h.box for h in page_hit.highlights])
    assert changed[inside].mean() > 0.9 and not changed[~inside].any()
    # the OpenAI messages carry the drawn image; without the option, the plain one
    msgs = to_openai_messages("q", [page_hit], settings=replace(plain_settings, draw_boxes=True))
    url = msgs[1]["content"][2]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == drawn
    msgs = to_openai_messages("q", [page_hit], settings=plain_settings)
    assert base64.b64decode(msgs[1]["content"][2]["image_url"]["url"].split(",", 1)[1]) == plain


def test_hit_as_dict_always_has_highlights(page_hit):
    out = page_hit.as_dict()
    assert out["highlights"] == [h.as_dict() for h in page_hit.highlights]
    assert replace(page_hit, highlights=()).as_dict()["highlights"] == []
    assert "words" not in out


# -- answer citations --------------------------------------------------------------------


def test_citation_carries_the_boxes_of_a_quote(page_hit):
    other = replace(page_hit, document="b.pdf", page_id=8, words=tuple(line_of("Prices rose", 0)))
    answer = (
        'Churn went up: "The churn rate rose while retention fell" [a.pdf, p. 1]. '
        "Prices are discussed too [b.pdf, p. 1]."
    )
    cites = parse_citations(answer, [page_hit, other])
    assert [c.document for c in cites] == ["a.pdf", "b.pdf"]
    assert [h.text for h in cites[0].highlights] == ["The churn rate rose while retention fell"]
    assert cites[0].highlights[0].box == (PAGE[5].box[0], PAGE[5].box[1], *PAGE[11].box[2:])
    assert cites[1].highlights == ()  # nothing on b.pdf's page is quoted
    assert cites[0].as_dict()["highlights"][0]["text"].startswith("The churn")


def test_citation_boxes_for_a_sentence_copied_verbatim(page_hit):
    answer = "Churning customers cite price, [1]. Nothing else is said."
    (cite,) = parse_citations(answer, [page_hit])
    assert [h.text for h in cite.highlights] == ["Churning customers cite price"]
    plain = parse_citations("It is about prices [1].", [page_hit])[0]
    assert plain.highlights == ()


# -- real PDFs: boxes where PyMuPDF finds the words, on both engines ---------------------

REAL_PDFS = [
    # a copy of Debian's shared-mime-info spec, committed so the test needs no doc package
    Path(__file__).parent / "data" / "shared-mime-info-spec.pdf",
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
    Path("/usr/share/doc/fontconfig/fontconfig-user.pdf.gz"),
    Path("/usr/share/doc/zlib1g-dev/crc-doc.1.0.pdf.gz"),
]
SETTINGS = RenderSettings.for_tokens(256)


def _real_pages(folder: Path) -> list[Path]:
    """The first text pages (up to 3) of each real PDF found on this machine, copied
    unchanged into one file per PDF (the pages are the originals, not made for the test)."""
    out = []
    for source in REAL_PDFS:
        if not source.exists():
            continue
        data = gzip.decompress(source.read_bytes()) if source.suffix == ".gz" else None
        src = pymupdf.open(stream=data, filetype="pdf") if data else pymupdf.open(source)
        keep = [i for i in range(min(src.page_count, 12)) if len(src[i].get_text("words")) > 40]
        dest = pymupdf.open()
        for i in keep[:3]:
            dest.insert_pdf(src, from_page=i, to_page=i)
        if dest.page_count:
            path = folder / (source.name.removesuffix(".gz").removesuffix(".pdf") + ".pdf")
            dest.save(path)
            out.append(path)
        dest.close()
        src.close()
    if not out:
        pytest.skip("no real PDF found")
    return out


def _iou(a: Sequence[float], b: Sequence[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _true_boxes(page: pymupdf.Page, needle: str) -> list[tuple[float, ...]]:
    """PyMuPDF's ``search_for`` on the source page, mapped to 0..1 of the stored image
    (unpadded pages only: the image is the page, rotated as a reader sees it)."""
    rect, matrix = page.rect, page.rotation_matrix
    out = []
    for r in page.search_for(needle):
        r = r * matrix
        out.append((r.x0 / rect.width, r.y0 / rect.height, r.x1 / rect.width, r.y1 / rect.height))
    return out


def _query_words(page: pymupdf.Page, n: int = 4) -> list[str]:
    """Words of the page whose every occurrence PyMuPDF's substring search finds as a whole
    word, and whose stem no other word of the page shares (so the truth is exact)."""
    words = [w[4] for w in page.get_text("words")]
    clean = [w.strip(".,;:()[]\"'") for w in words]
    stems = word_terms([unicodedata.normalize("NFKC", c) for c in clean])  # as text search
    out: list[str] = []
    for word, terms in zip(clean, stems, strict=True):
        if not (word.isalpha() and len(word) >= 5 and len(terms) == 1) or word in out:
            continue
        same_stem = [c for c, t in zip(clean, stems, strict=True) if t == terms]
        folded = unicodedata.normalize("NFKC", word).lower()
        containing = [w for w in words if folded in unicodedata.normalize("NFKC", w).lower()]
        if all(c.lower() == word.lower() for c in same_stem) and len(containing) == len(same_stem):
            if len(_true_boxes(page, word)) == len(same_stem):
                out.append(word)
        if len(out) == n:
            break
    return out


def _phrase(page: pymupdf.Page) -> str | None:
    """Two adjacent plain words of one line (the first such pair PyMuPDF finds as a pair)."""
    words = page.get_text("words")
    for a, b in zip(words, words[1:], strict=False):
        if (a[5], a[6]) != (b[5], b[6]) or not (a[4].isalpha() and b[4].isalpha()):
            continue
        if min(len(a[4]), len(b[4])) >= 4 and _true_boxes(page, f"{a[4]} {b[4]}"):
            return f"{a[4]} {b[4]}"
    return None


def _check_against_truth(store, pdfs: list[Path]) -> dict:
    """Every highlight of every query overlaps a true position (IoU >= 0.5) and every true
    position is highlighted; returns the highlights seen, for comparing engines."""
    retriever = Retriever(None, store)
    visual = Retriever(FakeEmbedder(), store)
    seen: dict = {}
    checked = phrases = 0
    for pdf in pdfs:
        with pymupdf.open(pdf) as doc:
            for number, page in enumerate(doc, start=1):
                for word in _query_words(page):
                    typed = unicodedata.normalize("NFKC", word)  # "ﬁ" on the page, "fi" typed
                    hits = retriever.search(
                        typed, 5, mode="text", documents=[pdf.name], pages=str(number)
                    )
                    assert len(hits) == 1, (pdf.name, number, word)
                    truth = _true_boxes(page, word)
                    found = [h.box for h in hits[0].highlights]
                    assert len(found) == len(truth), (pdf.name, number, word, found, truth)
                    for box in found:
                        assert max(_iou(box, t) for t in truth) >= 0.5, (word, box, truth)
                    for t in truth:
                        assert max(_iou(box, t) for box in found) >= 0.5, (word, t, found)
                    texts = {h.text.strip(".,;:()[]\"'").lower() for h in hits[0].highlights}
                    assert {unicodedata.normalize("NFKC", t) for t in texts} == {typed.lower()}
                    seen[(pdf.name, number, word)] = [h.as_dict() for h in hits[0].highlights]
                    (by_vector,) = visual.search(
                        typed, 1, mode="visual", documents=[pdf.name], pages=str(number)
                    )
                    assert by_vector.highlights == hits[0].highlights  # visual hits too
                    checked += 1
                phrase = _phrase(page)
                if phrase:  # two adjacent words: one box where PyMuPDF finds the pair
                    (hit,) = retriever.search(
                        phrase, 5, mode="text", documents=[pdf.name], pages=str(number)
                    )
                    boxes = [h.box for h in hit.highlights if h.score == 1.0]
                    for t in _true_boxes(page, phrase):
                        assert max(_iou(box, t) for box in boxes) >= 0.5, (phrase, t, boxes)
                    phrases += 1
                absent = retriever.search("zyzzyvaquux " + word, 5, mode="text", pages=str(number))
                for hit in absent:  # the absent word is boxed nowhere
                    assert all("zyzzyvaquux" not in h.text.lower() for h in hit.highlights)
    assert checked >= 10 and phrases >= 3
    return seen


def test_real_pdfs_boxes_match_pymupdf_on_both_engines(tmp_path, milvus_server):
    pdfs = _real_pages(tmp_path)
    local = open_collection(str(tmp_path / "local"))
    remote = open_collection(f"milvus://{milvus_server.address}/t_hl_{uuid.uuid4().hex[:10]}")
    try:
        results = []
        for store in (local, remote):
            Indexer(store, FakeEmbedder(), settings=SETTINGS).add(pdfs)
            results.append(_check_against_truth(store, pdfs))
        assert results[0] == results[1]  # the same highlights from both engines
    finally:
        local.close()
        remote.drop()
        remote.close()


# -- entry points: search --json, /v1/search, MCP, ask -----------------------------------

CHURN = [
    "Quarterly revenue grew in Europe.",
    "Customer churn in 2023 rose to nine percent. Churned customers cited price.",
    "Replace the hydraulic pump every year.",
]


def _index(spec_or_path: str, make_pdf) -> None:
    store = open_collection(spec_or_path)
    try:
        Indexer(store, FakeEmbedder(), settings=SETTINGS).add([make_pdf("report.pdf", CHURN)])
    finally:
        store.close()


def test_search_json_carries_highlights(store_spec, make_pdf):
    from typer.testing import CliRunner

    from app.cli import cli

    _index(store_spec, make_pdf)
    runner = CliRunner()

    def search(*extra: str):
        args = ["--collection", store_spec, "search", "churn", "--mode", "text", *extra]
        return runner.invoke(cli, args, catch_exceptions=False)

    result = search("--json")
    assert result.exit_code == 0, result.output
    (hit,) = json.loads(result.stdout)["hits"]
    assert hit["page"] == 2
    assert [h["text"] for h in hit["highlights"]] == ["churn", "Churned"]
    for h in hit["highlights"]:
        assert set(h) == {"box", "text", "source", "score"} and h["source"] == "text"
        x0, y0, x1, y1 = h["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    none = search("--json", "--evidence", "none")
    assert json.loads(none.stdout)["hits"][0]["highlights"] == []
    visual = search("--evidence", "visual")
    # merged with visual evidence: refused with text mode (the model scores the regions)
    assert visual.exit_code == 2 and "drop --mode text" in visual.output
    assert search("--evidence", "bogus").exit_code == 2


def test_api_search_highlights_and_evidence(make_pdf):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from indexer.config import collection_path

    _index(str(collection_path("reports")), make_pdf)
    with TestClient(create_app(FakeEmbedder(), max_wait_ms=1)) as client:

        def search(**extra):
            body = {"query": "churn", "mode": "text", "collection": "reports", **extra}
            return client.post("/v1/search", json=body)

        r = search()
        assert r.status_code == 200, r.text
        hit = r.json()["hits"][0]
        assert [h["text"] for h in hit["highlights"]] == ["churn", "Churned"]
        visual = search(mode="visual", k=3)
        by_page = {h["page"]: h["highlights"] for h in visual.json()["hits"]}
        assert by_page[2] == hit["highlights"] and by_page[1] == by_page[3] == []
        assert search(evidence="none").json()["hits"][0]["highlights"] == []
        refused = search(evidence="visual")
        # merged with visual evidence: refused with text mode (the model scores the regions)
        assert refused.status_code == 400 and "needs the model" in refused.text
        assert refused.json()["error"]["param"] == "evidence"
        assert search(evidence="bogus").status_code in (400, 422)


def _decode_png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def test_mcp_tools_carry_highlights_and_draw_boxes(tmp_path, make_pdf):
    import anyio
    from mcp import Client

    from app.mcp_server import build_server

    _index(str(tmp_path / "col"), make_pdf)
    store = open_collection(str(tmp_path / "col"))
    server = build_server(store, None, image_settings=ExportSettings(image_format="png"))

    async def session():
        async with Client(server) as client:
            base = {"question": "churn", "k": 1, "mode": "text"}
            plain = await client.call_tool("search_pages", base)
            drawn = await client.call_tool("search_pages", base | {"draw_boxes": True})
            page = {"document": "report.pdf", "page": 2, "query": "churn"}
            got = await client.call_tool("get_page", page)
            got_drawn = await client.call_tool("get_page", page | {"draw_boxes": True})
            return plain, drawn, got, got_drawn

    try:
        plain, drawn, got, got_drawn = anyio.run(session)
    finally:
        store.close()
    highlights = plain.structured_content["hits"][0]["highlights"]
    assert [h["text"] for h in highlights] == ["churn", "Churned"]
    assert got.structured_content["highlights"] == highlights
    for a, b in ((plain, drawn), (got, got_drawn)):
        image_a = _decode_png(next(c.data for c in a.content if c.type == "image"))
        image_b = _decode_png(next(c.data for c in b.content if c.type == "image"))
        changed = _changed(image_a, image_b)
        boxes = [tuple(h["box"]) for h in highlights]
        inside = _inside(
            changed.shape,
            [(x0 - 0.01, y0 - 0.01, x1 + 0.01, y1 + 0.01) for x0, y0, x1, y1 in boxes],
        )
        assert changed.any() and not changed[~inside].any()


QUOTING = (
    'The report says: "Customer churn in 2023 rose to nine percent" [report.pdf, p. 2]. '
    "Revenue is mentioned too [report.pdf, p. 1]."
)


def test_ask_citations_carry_quote_boxes(tmp_path, make_pdf, llm_stub):
    from typer.testing import CliRunner

    from app.cli import cli

    _index(str(tmp_path / "col"), make_pdf)
    llm_stub.answer = QUOTING
    runner = CliRunner()
    args = ["--collection", str(tmp_path / "col"), "ask", "churn revenue", "--mode", "text"]
    result = runner.invoke(cli, [*args, "--json", "-k", "2"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    cites = json.loads(result.stdout)["citations"]
    assert [(c["page"], [h["text"] for h in c["highlights"]]) for c in cites] == [
        (2, ["Customer churn in 2023 rose to nine percent."]),
        (1, []),
    ]
    assert cites[0]["highlights"][0]["score"] == 1.0
    plain = llm_stub.last.images
    runner.invoke(cli, [*args, "--json", "-k", "2", "--boxes"], catch_exceptions=False)
    assert len(llm_stub.last.images) == 2 and llm_stub.last.images != plain


def test_api_ask_citations_carry_quote_boxes(make_pdf, llm_stub):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from indexer.config import collection_path
    from retriever.ask import LLMSettings

    _index(str(collection_path("reports")), make_pdf)
    llm_stub.answer = QUOTING
    app = create_app(FakeEmbedder(), max_wait_ms=1, llm=LLMSettings.from_env())
    with TestClient(app) as client:
        body = {"question": "churn revenue", "k": 2, "mode": "text", "collection": "reports"}
        r = client.post("/v1/ask", json=body)
    assert r.status_code == 200, r.text
    first = r.json()["citations"][0]
    assert [h["text"] for h in first["highlights"]] == [
        "Customer churn in 2023 rose to nine percent."
    ]


def test_cli_export_boxes_in_zip_and_markdown(tmp_path, make_pdf):
    import zipfile

    from typer.testing import CliRunner

    from app.cli import cli

    _index(str(tmp_path / "col"), make_pdf)
    runner = CliRunner()
    base = ["--collection", str(tmp_path / "col"), "export", "churn", "--mode", "text", "-k", "1"]
    png = ["--image-format", "png", "--max-side", "4000"]

    def export(out: Path, fmt: str, *extra: str) -> None:
        result = runner.invoke(cli, [*base, "-f", fmt, "-o", str(out), *png, *extra])
        assert result.exit_code == 0, result.output

    export(tmp_path / "plain.zip", "zip")
    export(tmp_path / "boxes.zip", "zip", "--boxes")
    images = []
    for name in ("plain.zip", "boxes.zip"):
        with zipfile.ZipFile(tmp_path / name) as zf:
            (page,) = [n for n in zf.namelist() if n.startswith("pages/")]
            images.append(Image.open(io.BytesIO(zf.read(page))).convert("RGB"))
    store = open_collection(str(tmp_path / "col"))
    try:
        (hit,) = Retriever(None, store).search("churn", 1, mode="text")
    finally:
        store.close()
    changed = _changed(*images)
    inside = _inside(changed.shape, [h.box for h in hit.highlights])
    assert changed[inside].mean() > 0.9 and not changed[~inside].any()

    export(tmp_path / "prompt.md", "markdown", "--boxes")
    drawn = sorted((tmp_path / "prompt_pages").iterdir())
    assert (
        len(drawn) == 1
        and f"(prompt_pages/{drawn[0].name})" in (tmp_path / "prompt.md").read_text()
    )
    assert not _changed(Image.open(drawn[0]), images[1]).any()
    refused = runner.invoke(cli, [*base, "-f", "markdown", "-o", "-", "--boxes"])
    assert refused.exit_code == 2


def test_bench_highlights_section():
    from bench.highlights_phase import run_highlights

    section = run_highlights(4, reps=1)
    assert section["k"] == 4 and section["boxes"] >= 4  # each page ends "churn revenue"
    for key in ("search_ms_without", "search_ms_with", "highlights_cpu_ms_per_search"):
        assert isinstance(section[key], float)
