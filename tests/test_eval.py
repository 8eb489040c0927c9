"""Evaluation: metrics against hand-computed values, the query-file format, evaluate() on a
small labelled set, and ``pagelens eval``."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import CollectionError, QueryError
from indexer.model import FakeEmbedder
from indexer.pipeline import Indexer
from retriever.evaluate import (
    evaluate,
    format_table,
    load_queries,
    mrr_at_k,
    ndcg_at_k,
    parse_pages,
    parse_queries,
    query_metrics,
    recall_at_k,
)
from retriever.search import Retriever
from tests.support.pdfs import TOPICS, make_text_pdf

runner = CliRunner()


def test_metrics_hand_computed():
    relevant = {2, 5}
    ranking = [5, 1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert recall_at_k(ranking, relevant, 1) == 0.5
    assert recall_at_k(ranking, relevant, 5) == 1.0
    assert mrr_at_k(ranking, relevant, 10) == 1.0
    # DCG = 1/log2(2) + 1/log2(4); IDCG = 1/log2(2) + 1/log2(3)
    assert ndcg_at_k(ranking, relevant, 5) == pytest.approx(
        (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    )

    # one relevant page at rank 3
    ranking = [7, 8, 4, 1, 2]
    assert recall_at_k(ranking, {4}, 1) == 0.0
    assert recall_at_k(ranking, {4}, 5) == 1.0
    assert mrr_at_k(ranking, {4}, 10) == pytest.approx(1 / 3)
    assert ndcg_at_k(ranking, {4}, 5) == pytest.approx(1 / math.log2(4))  # = 0.5

    # three relevant, found at ranks 2 and 6 (6 is beyond nDCG@5, within recall@10)
    ranking = [9, 1, 8, 7, 6, 2, 5, 4, 3, 10]
    rel = {1, 2, 11}
    assert recall_at_k(ranking, rel, 5) == pytest.approx(1 / 3)
    assert recall_at_k(ranking, rel, 10) == pytest.approx(2 / 3)
    assert mrr_at_k(ranking, rel, 10) == 0.5
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranking, rel, 5) == pytest.approx((1 / math.log2(3)) / ideal)

    # nothing relevant in the top 10; repeats count once
    assert mrr_at_k(list(range(20, 40)), {1}, 10) == 0.0
    assert recall_at_k([3, 3, 3, 1], {1, 3}, 2) == 1.0
    assert ndcg_at_k([1, 2, 3], {1, 2, 3}, 5) == pytest.approx(1.0)
    assert query_metrics([], {1}) == dict.fromkeys(
        ("recall@1", "recall@5", "recall@10", "ndcg@5", "mrr@10"), 0.0
    )
    # relevant at rank 11 is outside MRR@10 and recall@10
    assert mrr_at_k(list(range(100, 110)) + [1], {1}, 10) == 0.0


def test_parse_pages_and_queries(tmp_path):
    assert parse_pages("3") == {3}
    assert parse_pages("3,5") == {3, 5}
    assert parse_pages("3-5") == {3, 4, 5}
    assert parse_pages(" 1, 4 - 6 ") == {1, 4, 5, 6}
    for bad in ("", "0", "5-3", "x", "3;4", "-2"):
        with pytest.raises(ValueError):
            parse_pages(bad)
    text = (
        "# labelled by hand\n"
        "query\tdocument\tpages\n"
        "\n"
        "churn in 2023\treport.pdf\t2\n"
        "  # indented comment\n"
        "pump\tmanual.pdf\t3-4,7\r\n"
    )
    queries = parse_queries(text)
    assert [(q.query, q.document, sorted(q.pages), q.line) for q in queries] == [
        ("churn in 2023", "report.pdf", [2], 4),
        ("pump", "manual.pdf", [3, 4, 7], 6),
    ]
    with pytest.raises(QueryError, match="line 2"):
        parse_queries("a\tb\t1\nonly two\tfields\n")
    with pytest.raises(QueryError, match="line 1"):
        parse_queries("a\tb\tpage one\n")
    path = tmp_path / "q.tsv"
    path.write_text("\ufeffwhat\tdoc.pdf\t1\n", encoding="utf-8")  # BOM from spreadsheets
    assert load_queries(path)[0].query == "what"
    with pytest.raises(QueryError, match="does not exist"):
        load_queries(tmp_path / "missing.tsv")
    (tmp_path / "empty.tsv").write_text("# nothing\n")
    with pytest.raises(QueryError, match="no queries"):
        load_queries(tmp_path / "empty.tsv")


LABELLED = [
    ("waggle dance honeybees", "bio.pdf", "1"),
    ("Treaty of Westphalia", "history.pdf", "1"),
    ("photosynthesis glucose sunlight", "bio.pdf", "2"),
    ("sourdough starter yeast", "food.pdf", "1"),
    ("cloud subscriptions revenue", "history.pdf", "2"),
    ("Mariana Trench", "bio.pdf", "3"),
]


@pytest.fixture
def labelled_collection(tmp_path):
    folder = tmp_path / "docs"
    make_text_pdf(folder / "bio.pdf", [TOPICS[0], TOPICS[2], TOPICS[5]])
    make_text_pdf(folder / "history.pdf", [TOPICS[1], TOPICS[4]])
    make_text_pdf(folder / "food.pdf", [TOPICS[3], TOPICS[8]])
    qfile = tmp_path / "queries.tsv"
    qfile.write_text(
        "query\tdocument\tpages\n" + "".join(f"{q}\t{d}\t{p}\n" for q, d, p in LABELLED)
    )
    return folder, qfile


def test_evaluate_text_and_hybrid_find_the_right_pages(labelled_collection, open_store):
    folder, qfile = labelled_collection
    store = open_store()
    embedder = FakeEmbedder()
    Indexer(store, embedder).add([folder])
    queries = load_queries(qfile)
    result = evaluate(Retriever(embedder, store), queries, k=10, details=True)
    assert result["queries"] == 6 and result["skipped"] == []
    assert set(result["modes"]) == {"visual", "text", "hybrid"}
    for mode in ("text", "hybrid"):
        metrics = result["modes"][mode]
        assert metrics["recall@1"] == 1.0 and metrics["mrr@10"] == 1.0
        assert metrics["ndcg@5"] == 1.0 and metrics["recall@10"] == 1.0
    for metrics in result["modes"].values():
        assert 0.0 <= metrics["recall@1"] <= metrics["recall@5"] <= metrics["recall@10"] <= 1.0
        assert metrics["ms_per_query"] >= 0
    rows = [r for r in result["per_query"] if r["mode"] == "text"]
    assert [r["first_relevant_rank"] for r in rows] == [1] * 6
    table = format_table(result)
    assert table.splitlines()[0].split()[:6] == ["mode", "R@1", "R@5", "R@10", "nDCG@5", "MRR@10"]
    assert "hybrid" in table


def test_evaluate_without_model_and_unknown_documents(labelled_collection, open_store, engine):
    folder, qfile = labelled_collection
    store = open_store()
    if engine == "milvus":
        # The documented difference: a Milvus page row holds its vector field, so the first
        # pages need the model's width (the CLI records the configured model's); here the
        # model is recorded, and only its weights are missing.
        with pytest.raises(CollectionError, match="has no model yet"):
            Indexer(store, None).add([folder], embed=False)
        fake = FakeEmbedder()
        store.bind_model(fake.model_id, fake.dim)
    Indexer(store, None).add([folder], embed=False)
    queries = [*load_queries(qfile), *parse_queries("lost\tnope.pdf\t1\n")]
    result = evaluate(Retriever(None, store), queries, modes=["visual", "text", "hybrid"])
    assert list(result["modes"]) == ["text"] and result["modes"]["text"]["recall@1"] == 1.0
    assert any("visual mode skipped" in n for n in result["notes"])
    assert result["skipped"] == [{"line": 1, "query": "lost", "document": "nope.pdf"}]
    assert result["queries"] == 6
    with pytest.raises(QueryError, match="Unknown mode"):
        evaluate(Retriever(None, store), queries, modes=["fuzzy"])
    with pytest.raises(QueryError, match="nothing to evaluate"):
        evaluate(Retriever(None, store), parse_queries("x\tnope.pdf\t1\n"), modes=["text"])


def test_eval_cli(
    labelled_collection, tiny_model_dir, monkeypatch, store_spec, reuse_loaded_models
):
    folder, qfile = labelled_collection
    monkeypatch.setenv("PAGELENS_COLLECTION", store_spec)
    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("PAGELENS_IMAGE_TOKENS", "16")
    assert runner.invoke(cli, ["index", str(folder)]).exit_code == 0
    result = runner.invoke(cli, ["eval", str(qfile), "--json", "-k", "5"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["queries"] == 6 and data["k"] == 5
    assert set(data["modes"]) == {"visual", "text", "hybrid"}
    assert data["modes"]["text"]["recall@1"] == 1.0
    assert set(data["modes"]["hybrid"]) >= {"recall@1", "recall@5", "recall@10", "ndcg@5", "mrr@10"}

    result = runner.invoke(cli, ["eval", str(qfile), "--modes", "text,hybrid"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "nDCG@5" in lines[0] and "MRR@10" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["text", "hybrid"]
    assert "6 queries" in result.stderr

    result = runner.invoke(cli, ["eval", str(qfile), "--modes", "bogus"])
    assert result.exit_code == 1 and "Unknown mode" in result.output
    bad = qfile.with_name("bad.tsv")
    bad.write_text("q\tbio.pdf\tone\n")
    result = runner.invoke(cli, ["eval", str(bad)])
    assert result.exit_code == 1 and "line 1" in result.output

    # the model cannot be loaded: text mode is still evaluated, with a note
    monkeypatch.setenv("PAGELENS_MODEL", str(qfile.parent / "no-such-model"))
    result = runner.invoke(cli, ["eval", str(qfile), "--json"])
    assert result.exit_code == 0, result.output
    assert list(json.loads(result.stdout)["modes"]) == ["text"]
    assert "text mode only" in result.stderr
