"""Measure how well each search mode finds the right pages, on a user's own labelled queries.

A query file is tab-separated, one query per line::

    # query<TAB>document<TAB>relevant pages
    query	document	pages                       (an optional header line)
    churn in 2023	report.pdf	2
    hydraulic pump	manual.pdf	3,5
    torque table	manual.pdf	7-9

``document`` names a document of the collection (by name, path or id, as ``--doc`` does);
``relevant pages`` are 1-based page numbers: ``3``, ``3,5``, ``3-5`` or a mix (``1,4-6``).
Blank lines and lines starting with ``#`` are ignored. Each query searches the whole
collection; a hit counts when it is one of the query's relevant pages of that document.

Metrics, for one query with relevant pages ``R`` and ranking ``r_1, r_2, ...`` (repeats of a
page count once, at their first rank), then averaged over queries (macro average):

* ``recall@k`` = ``|R ∩ {r_1..r_k}| / |R|``: the fraction of the relevant pages found in the
  top ``k`` (k = 1, 5, 10). With one relevant page per query it is the hit rate.
* ``ndcg@5`` = ``DCG@5 / IDCG@5`` with binary gains and a log2 discount:
  ``DCG@5 = sum over i=1..5 of [r_i in R] / log2(i + 1)``, and ``IDCG@5`` the same sum for
  the ideal ranking (every relevant page at the top): ``sum over i=1..min(5, |R|) of
  1 / log2(i + 1)``.
* ``mrr@10`` = ``1 / i`` for the first rank ``i <= 10`` holding a relevant page, else 0.

Searches go ``k`` deep (``evaluate(k=...)``, default 10); a metric whose cutoff is beyond
``k`` sees only the top ``k``. Visual and hybrid modes need the model: without one they are
skipped with a note and text mode is still evaluated. Compare resolution budgets by indexing
the same files into two collections with different ``--image-tokens`` and evaluating each.
With a reranker on the retriever, every mode is also evaluated reranked (``visual+rerank``),
so a user sees what reranking buys on their own documents and what it costs per query.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import DocumentNotFoundError, QueryError
from retriever.rerank import resolve_depth
from retriever.search import MODES, Retriever

#: Metric names, in table order.
METRICS = ("recall@1", "recall@5", "recall@10", "ndcg@5", "mrr@10")
#: How the table prints them.
METRIC_LABELS = {
    "recall@1": "R@1",
    "recall@5": "R@5",
    "recall@10": "R@10",
    "ndcg@5": "nDCG@5",
    "mrr@10": "MRR@10",
}


@dataclass(frozen=True)
class LabelledQuery:
    """One line of a query file: the question, its document and its relevant pages."""

    query: str
    document: str
    pages: frozenset[int]
    line: int = 0


# -- metrics ---------------------------------------------------------------------------


def _dedupe(ranking: Iterable[Hashable]) -> list[Hashable]:
    seen: set[Hashable] = set()
    out = []
    for item in ranking:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def recall_at_k(ranking: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """Fraction of the relevant items in the top ``k`` of ``ranking`` (0 if none relevant)."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    return len(relevant.intersection(_dedupe(ranking)[:k])) / len(relevant)


def ndcg_at_k(ranking: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """nDCG@k with binary gains and log2 discount; the ideal puts every relevant item first."""
    relevant = set(relevant)
    if not relevant:
        return 0.0
    dcg = sum(
        1.0 / math.log2(i + 1)
        for i, item in enumerate(_dedupe(ranking)[:k], start=1)
        if item in relevant
    )
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(k, len(relevant)) + 1))
    return dcg / ideal


def mrr_at_k(ranking: Sequence[Hashable], relevant: Iterable[Hashable], k: int) -> float:
    """Reciprocal rank of the first relevant item within the top ``k``, else 0."""
    relevant = set(relevant)
    for i, item in enumerate(_dedupe(ranking)[:k], start=1):
        if item in relevant:
            return 1.0 / i
    return 0.0


def query_metrics(ranking: Sequence[Hashable], relevant: Iterable[Hashable]) -> dict[str, float]:
    """All of :data:`METRICS` for one ranking."""
    relevant = set(relevant)
    return {
        "recall@1": recall_at_k(ranking, relevant, 1),
        "recall@5": recall_at_k(ranking, relevant, 5),
        "recall@10": recall_at_k(ranking, relevant, 10),
        "ndcg@5": ndcg_at_k(ranking, relevant, 5),
        "mrr@10": mrr_at_k(ranking, relevant, 10),
    }


# -- query files -----------------------------------------------------------------------


def parse_pages(text: str) -> frozenset[int]:
    """``"3"``, ``"3,5"``, ``"3-5"``, ``"1, 4-6"`` -> page numbers; ValueError otherwise."""
    pages: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)\s*(?:-\s*(\d+))?", part)
        if not m:
            raise ValueError(f"'{text}' is not a page list like 3, 3,5 or 3-5")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if first < 1 or last < first:
            raise ValueError(f"'{part}' is not a valid page range (pages start at 1)")
        if last - first > 100_000:
            raise ValueError(f"'{part}' is an implausibly long page range")
        pages.update(range(first, last + 1))
    return frozenset(pages)


def parse_queries(text: str, *, source: str = "queries") -> list[LabelledQuery]:
    """Parse the TSV format described in the module docstring."""
    out: list[LabelledQuery] = []
    first_data_line = True
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        header = first_data_line and fields[0].lower() in ("query", "question")
        first_data_line = False
        if header:
            continue
        if len(fields) != 3 or not fields[0] or not fields[1]:
            raise QueryError(
                f"{source}, line {number}: expected 'query<TAB>document<TAB>pages' "
                f"(3 tab-separated fields), got {len(fields)} field(s)."
            )
        try:
            pages = parse_pages(fields[2])
        except ValueError as exc:
            raise QueryError(f"{source}, line {number}: {exc}.") from None
        out.append(LabelledQuery(fields[0], fields[1], pages, number))
    return out


def load_queries(path: str | Path) -> list[LabelledQuery]:
    """Read a query file (UTF-8, a BOM is fine); :class:`QueryError` on a bad line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise QueryError(f"Query file {path} does not exist.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise QueryError(f"Query file {path} cannot be read as UTF-8 text ({exc}).") from None
    queries = parse_queries(text, source=str(path))
    if not queries:
        raise QueryError(f"Query file {path} holds no queries (query<TAB>document<TAB>pages).")
    return queries


# -- evaluation ------------------------------------------------------------------------


def evaluate(
    retriever: Retriever,
    queries: Sequence[LabelledQuery],
    *,
    modes: Sequence[str] = MODES,
    k: int = 10,
    details: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
    rerank: int | None = None,
) -> dict:
    """Run every query in every mode and average :data:`METRICS` per mode.

    With a reranker on the retriever, each mode runs twice, without and with reranking
    (rows ``visual`` and ``visual+rerank``: what reranking buys on these queries, at what
    cost per query); ``rerank`` is its depth (None: the default, at least ``k``; 0: no
    reranked rows).

    Returns ``{"queries": n, "k": k, "modes": {mode: {metric: value, ..., "ms_per_query":
    ms}}, "skipped": [...], "notes": [...]}``; with ``details``, also ``"per_query"`` rows.
    Queries naming a document the collection lacks are skipped (listed in ``skipped``);
    modes that need the model are skipped with a note when the retriever has none.
    """
    if k < 1:
        raise QueryError("k must be at least 1.")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise QueryError(f"Unknown mode(s) {', '.join(unknown)}; use {', '.join(MODES)}.")
    notes: list[str] = []
    runnable = []
    for mode in dict.fromkeys(modes):
        if mode != "text" and retriever.embedder is None:
            notes.append(f"{mode} mode skipped: the model is not loaded (text mode needs none).")
        else:
            runnable.append(mode)
    if retriever.embedder is not None and set(runnable) & {"visual", "hybrid"}:
        pending = retriever.pending()
        if pending:
            notes.append(
                f"{pending} page(s) have no vector yet: visual and hybrid modes cannot find "
                "them (run 'pagelens index' to finish)."
            )

    resolved: list[tuple[LabelledQuery, set[tuple[int, int]]]] = []
    skipped: list[dict] = []
    doc_ids: dict[str, int] = {}
    for q in queries:
        if q.document not in doc_ids:
            try:
                doc_ids[q.document] = retriever.store.document(q.document).id
            except DocumentNotFoundError as exc:
                doc_ids[q.document] = -1
                notes.append(str(exc))
        doc_id = doc_ids[q.document]
        if doc_id < 0:
            skipped.append({"line": q.line, "query": q.query, "document": q.document})
            continue
        resolved.append((q, {(doc_id, p) for p in q.pages}))
    if not resolved:
        raise QueryError("No query names a document of this collection; nothing to evaluate.")

    results: dict[str, dict[str, float]] = {}
    rows: list[dict] = []
    said: list[str] = []  # a failing reranker says so once, not once per query
    for label, mode, depth in _runs(retriever, runnable, k, rerank):
        results[label] = _run_mode(
            retriever,
            resolved,
            label=label,
            mode=mode,
            k=k,
            depth=depth,
            rows=rows if details else None,
            notify=lambda line: said.append(line) if line not in said else None,
            progress=progress,
        )
    notes.extend(said)
    out: dict = {
        "queries": len(resolved),
        "k": k,
        "modes": results,
        "skipped": skipped,
        "notes": notes,
    }
    if retriever.reranker is not None and rerank != 0:
        out["reranker"] = retriever.reranker.model_id
    if details:
        out["per_query"] = rows
    return out


def _runs(
    retriever: Retriever, modes: Sequence[str], k: int, rerank: int | None
) -> list[tuple[str, str, int]]:
    """``(label, mode, rerank depth)`` of each row: every mode without reranking, each
    followed by its reranked twin when the retriever has a reranker."""
    depth = resolve_depth(rerank, k, retriever.reranker) if retriever.reranker else 0
    runs = []
    for mode in modes:
        runs.append((mode, mode, 0))
        if depth:
            runs.append((f"{mode}+rerank", mode, depth))
    return runs


def _run_mode(
    retriever: Retriever,
    resolved: Sequence[tuple[LabelledQuery, set[tuple[int, int]]]],
    *,
    label: str,
    mode: str,
    k: int,
    depth: int,
    rows: list[dict] | None,
    notify: Callable[[str], None],
    progress: Callable[[str, int, int], None] | None,
) -> dict[str, float]:
    """One row of the table: every query searched in ``mode`` (reranking ``depth`` pages),
    the metrics averaged; per-query rows appended to ``rows`` when given."""
    sums = dict.fromkeys(METRICS, 0.0)
    started = time.perf_counter()
    for i, (q, relevant) in enumerate(resolved, start=1):
        hits = retriever.search(q.query, k, mode=mode, rerank=depth, notify=notify)
        ranking = [(h.document_id, h.page) for h in hits]
        scores = query_metrics(ranking, relevant)
        for name, value in scores.items():
            sums[name] += value
        if rows is not None:
            rank = next((r for r, item in enumerate(ranking, 1) if item in relevant), None)
            rows.append(
                {
                    "mode": label,
                    "line": q.line,
                    "query": q.query,
                    "document": q.document,
                    "relevant": sorted(q.pages),
                    "first_relevant_rank": rank,
                    "top": [[h.document, h.page] for h in hits[:5]],
                    **{n: round(v, 6) for n, v in scores.items()},
                }
            )
        if progress:
            progress(label, i, len(resolved))
    elapsed = time.perf_counter() - started
    n = len(resolved)
    result = {name: round(value / n, 6) for name, value in sums.items()}
    result["ms_per_query"] = round(1000 * elapsed / n, 3)
    return result


def format_table(result: dict) -> str:
    """The per-mode metrics as an aligned text table (one row per mode)."""
    headers = ["mode", *(METRIC_LABELS[m] for m in METRICS), "ms/query"]
    lines = [headers]
    for mode, values in result["modes"].items():
        lines.append(
            [
                mode,
                *(f"{values[m]:.3f}" for m in METRICS),
                f"{values.get('ms_per_query', 0.0):.1f}",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(headers))]
    text = []
    for row in lines:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        text.append("  ".join(cells))
    return "\n".join(text)
