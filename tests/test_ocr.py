"""Optional OCR of pages without a text layer. The "not installed" path is always tested
(Tesseract hidden); real OCR runs where Tesseract is installed (scripts/install.sh --dev
installs it)."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.model import FakeEmbedder
from indexer.pages import (
    OcrUnavailableError,
    RenderSettings,
    extract_text,
    ocr_tessdata,
    render_pages,
)
from indexer.pipeline import Indexer
from indexer.store import Collection
from retriever.search import Retriever
from tests.support.pdfs import TOPICS, make_image_only_pdf, make_png, make_text_pdf

runner = CliRunner()
HAVE_TESSERACT = shutil.which("tesseract") is not None
needs_tesseract = pytest.mark.skipif(not HAVE_TESSERACT, reason="Tesseract is not installed")


@pytest.fixture
def no_tesseract(monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    monkeypatch.delenv("TESSDATA_PREFIX", raising=False)


def test_ocr_is_off_by_default(tmp_path):
    assert RenderSettings().ocr is False and RenderSettings().ocr_language == "eng"
    scan = make_image_only_pdf(tmp_path / "scan.pdf", 1)
    assert [p.text for p in render_pages(scan)] == [""]
    assert extract_text(scan, 1) == ""


def test_missing_tesseract_is_a_clear_error(no_tesseract, tmp_path):
    with pytest.raises(OcrUnavailableError, match="Tesseract") as info:
        ocr_tessdata("eng")
    assert "apt-get install tesseract-ocr" in str(info.value)
    scan = make_image_only_pdf(tmp_path / "scan.pdf", 1)
    with pytest.raises(OcrUnavailableError):
        next(render_pages(scan, settings=RenderSettings(ocr=True)))
    with pytest.raises(OcrUnavailableError):
        extract_text(scan, 1, settings=RenderSettings(ocr=True))
    store = Collection(tmp_path / "coll")
    with pytest.raises(OcrUnavailableError):
        Indexer(store, FakeEmbedder(), settings=RenderSettings(ocr=True)).add([scan])
    assert store.stats().documents == 0  # refused before touching the collection
    # without OCR, nothing needs Tesseract
    Indexer(store, FakeEmbedder()).add([scan])
    assert store.stats().pages == 1


def test_cli_ocr_without_tesseract(no_tesseract, tmp_path):
    scan = make_image_only_pdf(tmp_path / "scan.pdf", 1)
    result = runner.invoke(cli, ["index", "--text-only", "--ocr", str(scan)])
    assert result.exit_code == 1
    assert result.output.strip().startswith("error:") and "Tesseract" in result.output
    assert "Traceback" not in result.output
    assert runner.invoke(cli, ["docs", "--json"]).exit_code == 0
    assert json.loads(runner.invoke(cli, ["docs", "--json"]).stdout)["documents"] == []


def test_bad_language_names(tmp_path):
    for bad in ("", "../etc", "eng+", "e n g"):
        with pytest.raises(OcrUnavailableError, match="language"):
            ocr_tessdata(bad)


@needs_tesseract
def test_missing_language_data():
    with pytest.raises(OcrUnavailableError, match="no data for language zzz"):
        ocr_tessdata("eng+zzz")
    assert ocr_tessdata("eng")


@needs_tesseract
def test_ocr_makes_scans_searchable(tmp_path):
    scan = make_image_only_pdf(tmp_path / "docs" / "scan.pdf", 2, texts=TOPICS[:2])
    born_digital = make_text_pdf(tmp_path / "docs" / "digital.pdf", [TOPICS[5]])
    settings = RenderSettings(ocr=True)
    texts = [p.text for p in render_pages(scan, settings=settings)]
    assert "waggle dance" in texts[0] and "Westphalia" in texts[1]
    assert "Westphalia" in extract_text(scan, 2, settings=settings)
    # pages that have a text layer keep it (no OCR)
    assert [p.text for p in render_pages(born_digital, settings=settings)] == [TOPICS[5]]
    png = make_png(tmp_path / "photo.png", size=(1200, 900), text=TOPICS[3])
    assert "sourdough" in next(render_pages(png, settings=settings)).text.lower()

    store = Collection(tmp_path / "coll")
    Indexer(store, None, settings=settings).add([tmp_path / "docs"], embed=False)
    hits = Retriever(None, store).search("Westphalia treaty", 3, mode="text")
    assert (hits[0].document, hits[0].page) == ("scan.pdf", 2)
    assert store.render_settings()["ocr"] is True


@needs_tesseract
def test_cli_index_ocr(tmp_path):
    scan = make_image_only_pdf(tmp_path / "docs" / "scan.pdf", 2, texts=TOPICS[2:4])
    result = runner.invoke(cli, ["index", "--text-only", "--ocr", str(scan)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(cli, ["search", "sourdough starter", "--mode", "text", "--json"])
    hits = json.loads(result.stdout)["hits"]
    assert (hits[0]["document"], hits[0]["page"]) == ("scan.pdf", 2)
    # the choice is kept for the collection; --no-ocr turns it off for what comes next
    later = make_image_only_pdf(tmp_path / "docs" / "later.pdf", 1, texts=[TOPICS[6]])
    assert runner.invoke(cli, ["index", "--text-only", str(later)]).exit_code == 0
    result = runner.invoke(cli, ["search", "torque lever", "--mode", "text", "--json"])
    assert json.loads(result.stdout)["hits"][0]["document"] == "later.pdf"
    last = make_image_only_pdf(tmp_path / "docs" / "last.pdf", 1, texts=[TOPICS[7]])
    assert runner.invoke(cli, ["index", "--text-only", "--no-ocr", str(last)]).exit_code == 0
    result = runner.invoke(cli, ["search", "Starry Night", "--mode", "text", "--json"])
    assert json.loads(result.stdout)["hits"] == []
