"""The reranking stage wired into every search: the library (order, scores, filters, k > N,
failure), the CLI (--rerank, the estimate, --json), /v1/search, MCP's search_pages, ask,
eval and PageLens, all with the deterministic FakeReranker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import UsageError
from indexer.model import FakeEmbedder
from indexer.model.rerank import FakeReranker
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.evaluate import evaluate, parse_queries
from retriever.rerank import CPU_SECONDS_PER_PAGE, DEFAULT_DEPTH, estimate_seconds
from retriever.search import Retriever

runner = CliRunner()

#: Page texts; the query "alpha beta gamma" has 3/3 words on A1 and B1, 2/3 on A3, 1/3 on
#: A2 and B2, 0/3 on A4: the FakeReranker's order is known, with ties to break.
A = ["alpha beta gamma", "alpha only here", "alpha beta twice", "nothing relevant at all"]
B = ["gamma beta alpha again", "beta words", "unrelated"]
QUERY = "alpha beta gamma"


class Broken:
    """A reranker whose server has gone away."""

    model_id = "broken-reranker"

    def score(self, query, pages):
        raise ConnectionError("connection refused by 127.0.0.1:9")


class WrongShape(FakeReranker):
    def score(self, query, pages):
        return np.zeros(len(pages) + 1, dtype=np.float32)


@pytest.fixture
def collection(tmp_path: Path, make_pdf) -> Path:
    folder = tmp_path / "coll"
    with open_collection(folder) as store:
        Indexer(store, FakeEmbedder()).add([make_pdf("a.pdf", A), make_pdf("b.pdf", B)])
    return folder


@pytest.fixture
def store(collection: Path):
    with open_collection(collection) as s:
        yield s


def words_share(text: str) -> float:
    wanted = set(QUERY.split())
    return len(wanted & set(text.lower().split())) / len(wanted)


# -- library ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["visual", "text", "hybrid"])
def test_order_is_rerank_score_ties_by_first_stage_rank(store, mode: str) -> None:
    first = Retriever(FakeEmbedder(), store).search(QUERY, 7, mode=mode)
    reranked = Retriever(FakeEmbedder(), store, reranker=FakeReranker()).search(
        QUERY, 5, mode=mode, rerank=7
    )
    rank = {h.page_id: i for i, h in enumerate(first)}
    expected = sorted(first, key=lambda h: (-words_share(h.text), rank[h.page_id]))[:5]
    assert [h.page_id for h in reranked] == [h.page_id for h in expected]
    for hit in reranked:
        before = next(h for h in first if h.page_id == hit.page_id)
        assert hit.scores["first_stage"] == pytest.approx(before.score)
        assert hit.scores["rerank"] == pytest.approx(words_share(hit.text))
        assert hit.score == hit.scores["rerank"]
        json.dumps(hit.as_dict())  # JSON-compatible: plain floats
        assert set(hit.as_dict()["scores"]) >= {"first_stage", "rerank"}


def test_only_the_first_n_are_reranked(store) -> None:
    fake = FakeReranker()
    first = Retriever(None, store).search(QUERY, 7, mode="text")
    hits = Retriever(None, store, reranker=fake).search(QUERY, 2, mode="text", rerank=3)
    assert fake.calls == [3]
    assert {h.page_id for h in hits} <= {h.page_id for h in first[:3]}


def test_default_depth_with_a_reranker_and_off_switch(store) -> None:
    fake = FakeReranker()
    retriever = Retriever(None, store, reranker=fake)
    retriever.search(QUERY, 3, mode="text")
    matching = len(Retriever(None, store).search(QUERY, DEFAULT_DEPTH, mode="text"))
    assert matching == 5 and fake.calls == [matching]  # every first-stage hit, up to 20
    off = retriever.search(QUERY, 3, mode="text", rerank=0)
    assert fake.calls == [matching]
    assert all("rerank" not in h.scores for h in off)
    assert [h.page_id for h in off] == [
        h.page_id for h in Retriever(None, store).search(QUERY, 3, mode="text")
    ]


def test_filters_hold(store) -> None:
    retriever = Retriever(FakeEmbedder(), store, reranker=FakeReranker())
    hits = retriever.search(QUERY, 3, documents=["b.pdf"], rerank=5)
    assert hits and {h.document for h in hits} == {"b.pdf"}
    hits = retriever.search(QUERY, 2, pages="2-3", rerank=4, mode="hybrid")
    assert hits and all(2 <= h.page <= 3 for h in hits)


def test_k_above_n_and_rerank_without_reranker_are_refused(store) -> None:
    with pytest.raises(UsageError, match="best 5 pages of only 3"):
        Retriever(None, store, reranker=FakeReranker()).search(QUERY, 5, mode="text", rerank=3)
    with pytest.raises(UsageError, match="needs a reranker"):
        Retriever(None, store).search(QUERY, 2, mode="text", rerank=3)
    with pytest.raises(UsageError):
        Retriever(None, store, reranker=FakeReranker()).search(QUERY, 2, mode="text", rerank=-1)


@pytest.mark.parametrize("bad", [Broken(), WrongShape()], ids=["raises", "wrong-shape"])
def test_failure_gives_first_stage_order_and_one_line(store, bad, caplog) -> None:
    first = Retriever(None, store).search(QUERY, 4, mode="text")
    said: list[str] = []
    hits = Retriever(None, store, reranker=bad).search(
        QUERY, 4, mode="text", rerank=6, notify=said.append
    )
    assert [h.page_id for h in hits] == [h.page_id for h in first]
    assert len(said) == 1 and "reranking failed" in said[0] and "\n" not in said[0]
    with caplog.at_level(logging.WARNING, logger="retriever.rerank"):
        again = Retriever(None, store, reranker=bad).search(QUERY, 4, mode="text", rerank=6)
    assert [h.page_id for h in again] == [h.page_id for h in first]
    assert len([r for r in caplog.records if "reranking failed" in r.message]) == 1


def test_pending_pages_are_reranked(tmp_path: Path, make_pdf) -> None:
    with open_collection(tmp_path / "c") as store:
        Indexer(store, FakeEmbedder()).add([make_pdf("a.pdf", A)])
        Indexer(store, None).add([make_pdf("b.pdf", B)], embed=False)
        hits = Retriever(FakeEmbedder(), store, reranker=FakeReranker()).search(QUERY, 3)
        assert hits[0].scores["rerank"] == 1.0
        assert any(h.pending and "rerank" in h.scores for h in hits)


def test_progress_is_reported(store) -> None:
    seen: list[tuple[int, int]] = []
    Retriever(None, store, reranker=FakeReranker()).search(
        QUERY, 2, mode="text", rerank=6, progress=lambda d, t: seen.append((d, t))
    )
    assert seen[0] == (0, 5) and seen[-1] == (5, 5)  # the 5 text hits, 4 at a time
    assert len(seen) == 3


def test_cpu_estimate() -> None:
    fake = FakeReranker()
    assert estimate_seconds(fake, 20) is None  # no device: remote or a double
    fake.device = "cpu"  # type: ignore[attr-defined]
    assert estimate_seconds(fake, 20) == pytest.approx(20 * CPU_SECONDS_PER_PAGE)
    fake.device = "cuda:0"  # type: ignore[attr-defined]
    assert estimate_seconds(fake, 20) is None
    fake.seconds_per_page = 0.5  # type: ignore[attr-defined]
    assert estimate_seconds(fake, 20) == pytest.approx(10.0)


def test_pagelens_search_and_ask_use_the_reranker(collection: Path, llm_stub) -> None:
    from pagelens import PageLens

    fake = FakeReranker()
    with PageLens(collection, embedder=FakeEmbedder(), reranker=fake) as lens:
        hits = lens.search(QUERY, 2, mode="text")
        assert hits[0].scores["rerank"] == 1.0 and fake.calls
        calls = len(fake.calls)
        lens.ask(QUERY, k=2, mode="text")
        assert len(fake.calls) == calls + 1  # ask reranked before choosing its pages


# -- eval ------------------------------------------------------------------------------


def test_eval_reports_with_and_without_reranking(store) -> None:
    queries = parse_queries(f"{QUERY}\tb.pdf\t1\nbeta words\tb.pdf\t2\n")
    result = evaluate(Retriever(None, store, reranker=FakeReranker()), queries, modes=["text"], k=5)
    assert set(result["modes"]) == {"text", "text+rerank"}
    assert result["reranker"] == "pagelens/fake-reranker"
    for row in result["modes"].values():
        assert {"recall@5", "ndcg@5"} <= set(row)
    plain = evaluate(Retriever(None, store), queries, modes=["text"], k=5)
    assert set(plain["modes"]) == {"text"} and "reranker" not in plain


# -- CLI -------------------------------------------------------------------------------


@pytest.fixture
def fake_loaded(monkeypatch: pytest.MonkeyPatch) -> FakeReranker:
    """The configured reranker, as configured_reranker() returns it (on the CPU: estimated)."""
    from indexer.model.rerank import loading

    fake = FakeReranker()
    fake.device = "cpu"  # type: ignore[attr-defined]
    monkeypatch.setattr(loading, "configured_reranker", lambda: fake)
    return fake


def cli_search(collection: Path, *args: str):
    return runner.invoke(
        cli, ["--collection", str(collection), "search", QUERY, "--mode", "text", *args]
    )


def test_cli_rerank(collection: Path, fake_loaded: FakeReranker) -> None:
    result = cli_search(collection, "-k", "2", "--rerank", "5", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["reranker"] == "pagelens/fake-reranker"
    assert all({"first_stage", "rerank"} <= set(h["scores"]) for h in out["hits"])
    assert out["hits"][0]["scores"]["rerank"] == 1.0
    assert "on the CPU" in result.stderr and "about" in result.stderr
    assert fake_loaded.calls == [5]
    # No --rerank: the default depth (all 5 text hits here); --rerank 0: off.
    assert cli_search(collection, "--json").exit_code == 0
    assert fake_loaded.calls[-1] == 5
    off = json.loads(cli_search(collection, "--rerank", "0", "--json").stdout)
    assert off["reranker"] is None and all("rerank" not in h.get("scores", {}) for h in off["hits"])


def test_cli_k_above_rerank_is_a_usage_error(collection: Path, fake_loaded) -> None:
    result = cli_search(collection, "-k", "5", "--rerank", "3")
    assert result.exit_code == 2 and "--rerank 5" in result.stderr
    assert not fake_loaded.calls


def test_cli_rerank_without_reranker_is_a_usage_error(collection: Path) -> None:
    result = cli_search(collection, "-k", "2", "--rerank", "3")
    assert result.exit_code == 2 and "PAGELENS_RERANK" in result.stderr


def test_cli_unavailable_reranker_goes_on(collection: Path, monkeypatch) -> None:
    monkeypatch.setenv("PAGELENS_RERANK_MODEL", str(collection / "no-such-model"))
    from indexer.errors import ModelNotAvailableError
    from indexer.model.rerank import loading

    def missing():
        raise ModelNotAvailableError("Cannot load the reranker: no weights here.")

    monkeypatch.setattr(loading, "configured_reranker", missing)
    result = cli_search(collection, "-k", "2", "--rerank", "5", "--json")
    assert result.exit_code == 0, result.output
    assert "no weights here" in result.stderr
    assert json.loads(result.stdout)["hits"]


def test_cli_failing_reranker_says_one_line(collection: Path, monkeypatch) -> None:
    from indexer.model.rerank import loading

    monkeypatch.setattr(loading, "configured_reranker", lambda: Broken())
    result = cli_search(collection, "-k", "2", "--json")
    assert result.exit_code == 0, result.output
    assert result.stderr.count("reranking failed") == 1
    assert len(json.loads(result.stdout)["hits"]) == 2


def test_cli_eval_reports_both(collection: Path, tmp_path: Path, fake_loaded) -> None:
    queries = tmp_path / "q.tsv"
    queries.write_text(f"{QUERY}\tb.pdf\t1\n")
    result = runner.invoke(
        cli,
        ["--collection", str(collection), "eval", str(queries), "--modes", "text", "--json"],
    )
    assert result.exit_code == 0, result.output
    assert set(json.loads(result.stdout)["modes"]) == {"text", "text+rerank"}


# -- API -------------------------------------------------------------------------------


@pytest.fixture
def api(collection: Path):
    from fastapi.testclient import TestClient

    from app.server import create_app

    def make(reranker=None):
        app = create_app(
            FakeEmbedder(),
            collection_resolver=lambda name: collection,
            prepare_queries=False,
            reranker=reranker,
        )
        return TestClient(app)

    return make


def test_api_search_rerank(api) -> None:
    fake = FakeReranker()
    with api(fake) as client:
        body = {"query": QUERY, "k": 2, "mode": "text", "rerank": 5}
        got = client.post("/v1/search", json=body)
        assert got.status_code == 200, got.text
        hits = got.json()["hits"]
        assert hits[0]["scores"]["rerank"] == 1.0 and "first_stage" in hits[0]["scores"]
        assert fake.calls == [5]
        assert client.post("/v1/search", json={**body, "rerank": 0}).json()["hits"][0][
            "scores"
        ].keys() == {"text"}
        refused = client.post("/v1/search", json={**body, "k": 6})
        assert refused.status_code == 400 and "rerank" in refused.text


def test_api_search_without_reranker_and_failure(api) -> None:
    body = {"query": QUERY, "k": 2, "mode": "text", "rerank": 5}
    with api() as client:
        assert client.post("/v1/search", json=body).status_code == 400
        assert client.post("/v1/search", json={**body, "rerank": None}).status_code == 200
    with api(Broken()) as client:
        got = client.post("/v1/search", json=body).json()
        assert len(got["hits"]) == 2 and len(got["warnings"]) == 1


# -- MCP -------------------------------------------------------------------------------


def test_mcp_search_pages_rerank(store) -> None:
    from app.mcp_server import LazyModel, _search_tool
    from retriever.export import ExportSettings

    fake = FakeReranker()
    tool = _search_tool(store, LazyModel(None), ExportSettings(), fake)
    result = tool(QUERY, k=2, mode="text", rerank=4)
    assert not result.is_error
    assert result.structured_content["hits"][0]["scores"]["rerank"] == 1.0
    assert fake.calls == [4]
    assert tool(QUERY, k=5, mode="text", rerank=3).is_error
    plain = _search_tool(store, LazyModel(None), ExportSettings(), None)
    assert plain(QUERY, k=2, mode="text", rerank=3).is_error
    failing = _search_tool(store, LazyModel(None), ExportSettings(), Broken())
    result = failing(QUERY, k=2, mode="text")
    assert not result.is_error and "reranking failed" in result.content[0].text
