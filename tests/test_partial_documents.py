"""A page that fails to render no longer refuses its whole document (issue #15).

Every page that renders is indexed; the failed one is a placeholder with its reason (no
image, no vector), reported per file with its page number (exit 3), and
``pagelens check --repair`` retries it.
"""

from __future__ import annotations

import json

import pymupdf
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.maintenance.check import check
from indexer.maintenance.repair import repair
from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from tests.support.pdfs import TOPICS, make_text_pdf

runner = CliRunner()


@pytest.fixture
def bad_page_3(monkeypatch):
    """Page 3 (of any PDF) fails to render while ``state["broken"]`` is true."""
    state = {"broken": True}
    real = pymupdf.Page.get_pixmap

    def flaky(self, *args, **kwargs):
        if state["broken"] and self.number == 2:
            raise RuntimeError("code=2: broken content stream")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", flaky)
    return state


def test_other_pages_are_indexed_and_the_failed_one_recorded(tmp_path, bad_page_3, open_store):
    pdf = make_text_pdf(tmp_path / "manual.pdf", TOPICS[:5])
    store = open_store()
    report = Indexer(store, FakeEmbedder()).add([pdf])
    (result,) = report.files
    assert result.status == "partial" and result.failed_pages == [3]
    assert "page 3" in result.message
    assert store.stored_page_numbers(result.document_id) == {1, 2, 4, 5}
    (placeholder,) = store.failed_pages()
    assert (placeholder["document"], placeholder["page"]) == ("manual.pdf", 3)
    assert "broken content stream" in placeholder["reason"]
    assert store.stats().pending == 0  # no vector wanted for the placeholder
    assert store.documents()[0].ready
    hits = store.search_text(TOPICS[3].split()[0], 5)
    assert hits  # the pages after the bad one are searchable

    problems = {p.kind for p in check(store).problems}
    assert problems == {"page-failed"}
    bad_page_3["broken"] = False
    with store.writing():
        repair(store, embedder=FakeEmbedder())
    assert store.stored_page_numbers(result.document_id) == {1, 2, 3, 4, 5}
    assert store.failed_pages() == []
    assert check(store).ok
    store.close()


def test_cli_reports_the_page_exits_3_and_repair_retries(
    tmp_path, bad_page_3, monkeypatch, store_spec, tiny_model_dir
):
    from app.cli import common as cli_common
    from indexer.errors import ModelNotAvailableError

    def no_weights(self):
        raise ModelNotAvailableError("Cannot load the GME model: its weights are not here.")

    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    # The model's files name its width (a Milvus collection needs it before the first
    # page), but it cannot be loaded: --text-only stores pages, repair cannot embed them.
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setattr(cli_common.Options, "embedder", no_weights)
    pdf = make_text_pdf(tmp_path / "docs" / "manual.pdf", TOPICS[:4])
    result = runner.invoke(cli, ["index", "--text-only", str(pdf)])
    assert result.exit_code == 3, result.output
    assert "manual.pdf p.3" in result.output and "check --repair" in result.output
    docs = json.loads(runner.invoke(cli, ["docs", "--json"]).stdout)["documents"]
    assert docs[0]["status"] == "ready"
    still = runner.invoke(cli, ["check", "--repair", "--json"])
    assert "page-failed" in still.output
    bad_page_3["broken"] = False
    fixed = runner.invoke(cli, ["check", "--repair"])
    assert "manual.pdf: rendered 1 page(s) again" in fixed.output
    after = json.loads(runner.invoke(cli, ["check", "--json"]).stdout)
    assert [p["kind"] for p in after["problems"]] == ["vectors-pending"]  # --text-only
    docs = json.loads(runner.invoke(cli, ["docs", "--json"]).stdout)["documents"]
    assert docs[0]["pages"] == 4


def test_a_file_whose_every_page_fails_is_refused(tmp_path, monkeypatch, open_store):
    def broken(self, *args, **kwargs):
        raise RuntimeError("nothing renders")

    monkeypatch.setattr(pymupdf.Page, "get_pixmap", broken)
    pdf = make_text_pdf(tmp_path / "dead.pdf", TOPICS[:2])
    store = open_store()
    (result,) = Indexer(store, FakeEmbedder()).add([pdf]).files
    assert result.status == "refused" and result.reason == "damaged"
    assert store.documents() == [] and store.failed_pages() == []
    store.close()


def test_ray_render_task_keeps_the_pages_that_render(tmp_path, bad_page_3):
    """The Ray path renders in tasks: a bad page there is a placeholder too."""
    from indexer.pages import RenderSettings
    from indexer.ray.tasks import render_task as _render_task

    pdf = make_text_pdf(tmp_path / "manual.pdf", TOPICS[:5])
    result = _render_task(str(pdf), None, RenderSettings(), [2, 3, 4, 5])
    assert result[0] == "ok"
    assert [page[0] for page in result[1]] == [2, 4, 5]
    assert [(n, "broken content stream" in why) for n, why in result[2]] == [(3, True)]
