"""``pagelens ask``: search, send the pages to the configured vision LLM, stream the answer.

Where the pages go is the user's choice (``PAGELENS_LLM_URL``, ``PAGELENS_LLM_MODEL``,
``PAGELENS_LLM_API_KEY``; see :mod:`retriever.ask`); without a URL nothing is sent and the
command says how to configure one, before loading anything.
"""

from __future__ import annotations

from dataclasses import replace

import typer

from app.cli.common import (
    check_search_usage,
    fail,
    open_retriever,
    options,
    print_json,
    rerank_depth,
    run_guarded,
    say,
)
from app.cli.root import cli
from retriever.escaping import for_terminal


@cli.command("ask")
def ask_cmd(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="The question."),
    k: int = typer.Option(5, "-k", "--top", help="How many pages to send."),
    mode: str = typer.Option(None, "--mode", help="visual (default), text or hybrid."),
    documents: list[str] = typer.Option(None, "--doc", "-d", help="Only this document (repeat)."),
    pages: str = typer.Option(None, "--pages", help="Only these pages, e.g. 3-7."),
    llm_url: str = typer.Option(
        None, "--llm-url", help="OpenAI-compatible base URL (default: PAGELENS_LLM_URL)."
    ),
    llm_model: str = typer.Option(
        None, "--llm-model", help="The LLM's model name (default: PAGELENS_LLM_MODEL)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help='Print {"answer", "citations", "hits"} as JSON (not streamed).'
    ),
    boxes: bool = typer.Option(
        False, "--boxes", help="Draw the query's matches (highlights) on the page images sent."
    ),
) -> None:
    """Answer a question from the best pages with a vision LLM, citing them."""
    from retriever.ask import (
        LLMNotConfiguredError,
        LLMSettings,
        ask,
        ask_stream,
        check_page_count,
    )

    check_search_usage(question, mode=mode, k=k, pages=pages)  # exit 2 before anything loads
    opts = options(ctx)

    def body() -> None:
        settings = LLMSettings.from_env(url=llm_url, model=llm_model)
        if boxes:
            settings = replace(settings, image=replace(settings.image, draw_boxes=True))
        if not settings.configured:
            raise LLMNotConfiguredError()
        check_page_count(k, settings)  # before loading the model or searching
        # With a configured reranker, the pages sent are the best k of the reranked top
        # (the default depth): the LLM reads few pages, so the right one must be among them.
        retriever = open_retriever(opts, mode)
        hits = retriever.search(
            question,
            k,
            documents=documents or None,
            pages=pages,
            mode=mode,
            rerank=rerank_depth(opts, retriever, None),
            notify=lambda line: say(f"note: {line}"),
        )
        if not hits:
            fail("no pages found to ask about; try other words or another --mode")
        say(f"sending {len(hits)} page(s) to {settings.destination()} ...")
        if as_json:
            print_json(ask(question, hits, settings=settings).as_dict())
            return
        stream = ask_stream(question, hits, settings=settings)
        for piece in stream:
            typer.echo(piece, nl=False)
        typer.echo("")
        answer = stream.result()
        typer.echo("")
        if not answer.citations:
            typer.echo("Cited pages: none (the answer cites no page)")
            typer.echo("Pages sent:")
            for i, hit in enumerate(hits, start=1):
                typer.echo(f"  [{i}] {for_terminal(hit.document)}, p. {hit.page}  {hit.image}")
            return
        typer.echo("Cited pages:")
        for c in answer.citations:
            if c.sent:
                typer.echo(f"  {c.document}, p. {c.page}  {c.image}")
            else:
                what = f"{c.document}, p. {c.page}" if c.document else f"[{c.text}]"
                typer.echo(f"  ! {what}: not among the pages sent; not verified")

    run_guarded(body)
