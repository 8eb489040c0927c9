"""The ``pagelens`` commands that are one short wrapper each: search, docs, remove, export,
collections, app, dev make-model (``index`` is in :mod:`app.cli.index`).

Global options (``--collection``, ``--model``, ``--device``) come before the command and
also read ``PAGELENS_COLLECTION`` / ``PAGELENS_MODEL``; ``PAGELENS_HOME`` moves the folder
that holds named collections. Exit codes: 0 ok, 1 error, 2 usage, 3 some files refused
(or some of their pages).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
from app.cli.progress import TerminalProgress
from app.cli.root import cli
from indexer import config
from indexer.config import COLLECTION_ENV, MAX_UPLOAD_MB_ENV
from indexer.errors import UsageError
from retriever.escaping import for_terminal
from retriever.evidence.cache import EvidenceCache
from retriever.evidence.visual import NOTE as VISUAL_NOTE


@cli.command()
def search(
    ctx: typer.Context,
    question: str = typer.Argument(None, help="The question (may be omitted with --image)."),
    k: int = typer.Option(5, "-k", "--top", help="How many pages."),
    image: Path = typer.Option(None, "--image", help="Search by an image (with or without text)."),
    mode: str = typer.Option(None, "--mode", help="visual (default), text or hybrid."),
    documents: list[str] = typer.Option(None, "--doc", "-d", help="Only this document (repeat)."),
    pages: str = typer.Option(None, "--pages", help="Only these pages, e.g. 3-7."),
    as_json: bool = typer.Option(False, "--json", help="Print hits as JSON."),
    rerank: int = typer.Option(
        None,
        "--rerank",
        help="Rerank the top N first-stage pages with the configured reranker and show the "
        "best k of them (default with a reranker: 20; 0: off).",
    ),
    evidence: str = typer.Option(
        "text",
        "--evidence",
        help="Highlights on each hit: text (the query's words on the page), none, or visual "
        "(also score overlapping regions of each page with the model; approximate; cached).",
    ),
) -> None:
    """Find the pages that answer a question."""
    check_search_usage(
        question, image=image, mode=mode, k=k, pages=pages, rerank=rerank, evidence=evidence
    )
    opts = options(ctx)

    def body() -> None:
        retriever = open_retriever(opts, mode, rerank)
        if evidence == "visual":
            retriever.evidence_cache = EvidenceCache(folder=config.cache_dir() / "evidence")
        depth = rerank_depth(opts, retriever, rerank)
        hits = retriever.search(
            question,
            k,
            image=image,
            documents=documents or None,
            pages=pages,
            mode=mode,
            rerank=depth,
            notify=lambda line: say(f"note: {line}"),
            evidence=evidence,
            evidence_progress=TerminalProgress() if evidence == "visual" else None,
        )
        pending = retriever.pending() if retriever.embedder is not None else 0
        if as_json:
            print_json(
                {
                    "query": question,
                    "mode": mode or ("visual" if retriever.embedder else "text"),
                    "reranker": retriever.reranker.model_id
                    if depth != 0 and retriever.reranker
                    else None,
                    "pending": pending,
                    "evidence": evidence,
                    **({"evidence_note": VISUAL_NOTE} if evidence == "visual" else {}),
                    "hits": [h.as_dict() for h in hits],
                }
            )
            return
        if not hits:
            say(
                "no pages found"
                + (
                    ""
                    if retriever.store.stats().pages
                    else " (the collection is empty: run 'pagelens index PATH')"
                )
            )
        for rank, hit in enumerate(hits, start=1):
            mark = "  (text layer: not embedded yet)" if hit.pending else ""
            if "first_stage" in hit.scores:
                mark += f"  (first stage {hit.scores['first_stage']:.4f})"
            typer.echo(
                f"{rank:>2}. {hit.score:7.4f}  {for_terminal(hit.document)}  p.{hit.page}{mark}"
            )
            typer.echo(f"    {hit.image}")
            if hit.snippet:
                typer.echo(f"    {hit.snippet[:160]}")
            where = [h for h in hit.highlights if h.source == "visual"][:1]
            for h in where:
                box = ", ".join(f"{v:.2f}" for v in h.box)
                typer.echo(f"    where: [{box}] {h.text}, score {h.score:.4f}")
        if pending:
            say(f"note: {pending} page(s) still wait for vectors; run 'pagelens index' to finish")

    run_guarded(body)


@cli.command()
def docs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the documents in the collection."""
    opts = options(ctx)

    def body() -> None:
        store = opts.read_store()  # read-only: creates nothing
        documents = store.documents() if store is not None else []
        path = store.location if store is not None else opts.collection_dir
        if as_json:
            print_json({"collection": str(path), "documents": [d.as_dict() for d in documents]})
            return
        if not documents:
            say(f"collection {path} is empty")
        for d in documents:
            state = "" if d.ready else "  (incomplete: run index again)"
            if d.hidden:
                state = f"  ({d.status} by sync, not searched: run sync again)"
            typer.echo(
                f"{d.id:>4}  {for_terminal(d.name)}  {d.page_count} pages  "
                f"{d.pages_embedded}/{d.pages_stored} embedded  {d.added_at}{state}"
                f"  {for_terminal(d.path)}"
            )

    run_guarded(body)


@cli.command()
def remove(
    ctx: typer.Context,
    document: str = typer.Argument(..., help="Document name or id."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Remove a document: its pages, vectors and images."""
    opts = options(ctx)

    def body() -> None:
        store = opts.store(create=False)
        with store.writing(on_wait=say):
            doc = store.remove_document(document)
        if as_json:
            print_json({"removed": doc.as_dict()})
        else:
            say(f"removed {for_terminal(doc.name)} ({doc.page_count} pages)")

    run_guarded(body)


@cli.command()
def export(
    ctx: typer.Context,
    question: str = typer.Argument(..., help="The question."),
    fmt: str = typer.Option("openai", "--format", "-f", help="openai, markdown or zip."),
    output: Path = typer.Option(..., "--output", "-o", help="File to write ('-' for stdout)."),
    k: int = typer.Option(5, "-k", "--top"),
    mode: str = typer.Option(None, "--mode", help="visual (default), text or hybrid."),
    documents: list[str] = typer.Option(None, "--doc", "-d"),
    pages: str = typer.Option(None, "--pages"),
    max_side: int = typer.Option(1568, "--max-side", help="Longest image side sent, pixels."),
    image_format: str = typer.Option("jpeg", "--image-format", help="jpeg, png or webp."),
    quality: int = typer.Option(85, "--quality", help="JPEG/WebP quality."),
    boxes: bool = typer.Option(
        False, "--boxes", help="Draw the query's matches (highlights) on the page images."
    ),
) -> None:
    """Search, then write the question and pages as an LLM prompt."""
    import json

    from retriever.export import (
        ExportSettings,
        to_markdown,
        to_openai_messages,
        to_zip,
        write_page_images,
    )

    if fmt not in ("openai", "markdown", "zip"):
        fail(f"unknown format '{fmt}': use openai, markdown or zip", 2)
    check_search_usage(question, mode=mode, k=k, pages=pages)
    opts = options(ctx)

    def body() -> None:
        try:
            settings = ExportSettings(
                max_side=max_side, image_format=image_format, quality=quality, draw_boxes=boxes
            )
        except ValueError as exc:
            fail(str(exc), 2)
        hits = open_retriever(opts, mode).search(
            question, k, documents=documents or None, pages=pages, mode=mode
        )
        if not hits:
            fail("no pages found to export")
        if fmt == "zip":
            if str(output) == "-":
                fail("a ZIP needs a file: -o bundle.zip", 2)
            to_zip(question, hits, output, settings=settings)
        else:
            links = None
            if fmt == "markdown" and boxes:
                # the drawn images go beside the prompt (the stored ones stay untouched)
                if str(output) == "-":
                    fail("--boxes with markdown writes page images: -o prompt.md", 2)
                folder = output.parent / f"{output.stem}_pages"
                links = write_page_images(hits, folder, settings)
            text = (
                json.dumps(to_openai_messages(question, hits, settings=settings), indent=1)
                if fmt == "openai"
                else to_markdown(question, hits, image_links=links)
            )
            if str(output) == "-":
                sys.stdout.write(text)
                return
            output.write_text(text, encoding="utf-8")
        say(f"wrote {output} ({len(hits)} pages, {fmt})")

    run_guarded(body)


@cli.command("collections")
def collections_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List the collections under PAGELENS_HOME."""
    from indexer.config import home, list_collections

    names = list_collections()
    if as_json:
        print_json({"home": str(home()), "collections": names})
    else:
        for name in names:
            typer.echo(name)


@cli.command(
    "app",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def app_cmd(
    ctx: typer.Context,
    host: str = typer.Option(
        None,
        "--host",
        help="Address to listen on (default 127.0.0.1: this computer only). Any other "
        "address exposes the app and requires PAGELENS_APP_PASSWORD.",
    ),
    port: int = typer.Option(
        None, "--port", help="Port to listen on (default 8501), as 'pagelens serve --port'."
    ),
) -> None:
    """Start the web app on this computer (Streamlit options pass through, e.g.
    --server.maxUploadSize 500). Private by default: loopback only, no usage statistics."""
    from app.web import launch as app_launch

    args = list(ctx.args)
    if port is not None:
        if not 1 <= port <= 65535:
            fail(f"--port must be between 1 and 65535, not {port}", 2)
        if any(a == "--server.port" or a.startswith("--server.port=") for a in args):
            fail("give --port or --server.port, not both", 2)
        args += ["--server.port", str(port)]
    opts = options(ctx)
    script = Path(__file__).parent.parent / "streamlit_app.py"
    env = os.environ.copy()
    if opts.collection:
        env[COLLECTION_ENV] = opts.collection
    env.update(opts.settings.to_env())
    limit = config.get(MAX_UPLOAD_MB_ENV, env)
    if limit and not any("maxUploadSize" in a for a in args):
        # Streamlit's own upload cap must be at least PageLens's limit.
        env.setdefault("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", limit)
    try:
        launch = app_launch.plan(str(script), args, host=host, environ=env)
    except UsageError as exc:
        fail(str(exc), 2)
    if launch.warning:
        typer.secho(launch.warning, err=True, fg=typer.colors.RED, bold=True)
    argv = [sys.executable, "-m", "app.web.launch", *launch.args]
    os.execvpe(argv[0], argv, env)


dev = typer.Typer(help="Developer tools.", no_args_is_help=True)
cli.add_typer(dev, name="dev")


@dev.command("make-model")
def make_model(
    folder: Path = typer.Argument(..., help="Where to write the checkpoint."),
    size: str = typer.Option("tiny", "--size", help="tiny (tests) or full (GME-2B shape)."),
) -> None:
    """Write a random-weight GME checkpoint (no download), e.g. for trying PageLens out."""
    from indexer.model.gme.random import build_random_gme

    path = run_guarded(lambda: build_random_gme(folder, size=size))
    say(f"wrote a random-weight {size} GME checkpoint to {path}; use it with PAGELENS_MODEL={path}")
