"""``pagelens eval``: compare search modes on a user's own labelled queries."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli.common import options, print_json, run_guarded, say
from app.cli.root import cli


@cli.command("eval")
def eval_cmd(
    ctx: typer.Context,
    queries: Path = typer.Argument(  # noqa: B008
        ..., help="TSV file: query<TAB>document<TAB>relevant pages (3, 3,5 or 3-5) per line."
    ),
    modes: str = typer.Option(
        "visual,text,hybrid", "--modes", help="Comma-separated modes to compare."
    ),
    k: int = typer.Option(10, "-k", "--top", help="Search depth per query."),
    details: bool = typer.Option(False, "--details", help="With --json: per-query rows too."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    rerank: int = typer.Option(
        None,
        "--rerank",
        help="With a configured reranker: also evaluate each mode reranking the top N "
        "(default 20, at least -k; 0: no reranked rows).",
    ),
) -> None:
    """Measure recall@1/5/10, nDCG@5 and MRR@10 of each search mode on labelled queries
    (and, with a configured reranker, of each mode reranked)."""
    from indexer.errors import ModelNotAvailableError, QueryError
    from retriever.evaluate import evaluate, format_table, load_queries
    from retriever.search import Retriever

    opts = options(ctx)

    def body() -> None:
        wanted = [m.strip() for m in modes.split(",") if m.strip()]
        if not wanted:
            raise QueryError("--modes needs at least one of visual, text, hybrid.")
        labelled = load_queries(queries)
        store = opts.store(create=False)
        embedder = None
        if any(m != "text" for m in wanted):
            try:
                embedder = opts.embedder()
            except ModelNotAvailableError as exc:
                say(f"note: {exc}")
                say("note: the model could not be loaded; evaluating text mode only.")
                if "text" not in wanted:
                    wanted.append("text")
        reranker = opts.reranker() if rerank != 0 else None
        if rerank and reranker is None and not opts.reranker_unavailable:
            say("note: no reranker is configured (PAGELENS_RERANK_MODEL or _URL): no +rerank rows")
        retriever = Retriever(embedder, store, reranker=reranker)
        result = evaluate(
            retriever,
            labelled,
            modes=wanted,
            k=k,
            details=details and as_json,
            rerank=rerank if reranker is not None else 0,
        )
        for note in result["notes"]:
            say(f"note: {note}")
        if result["skipped"]:
            say(f"note: {len(result['skipped'])} query line(s) skipped (unknown document)")
        if as_json:
            print_json(result)
            return
        say(f"{result['queries']} queries, searched {result['k']} deep")
        if result.get("reranker"):
            say(f"'+rerank' rows: the same search reranked by {result['reranker']}")
        typer.echo(format_table(result))

    run_guarded(body)
