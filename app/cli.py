"""The ``pagelens`` command: one short wrapper per library call.

Global options (``--collection``, ``--model``, ``--device``) come before the command and
also read ``PAGELENS_COLLECTION`` / ``PAGELENS_MODEL``; ``PAGELENS_HOME`` moves the folder
that holds named collections. Exit codes: 0 ok, 1 error, 2 usage, 3 some files refused
(or some of their pages).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

import typer

from app.cli_common import (
    EXIT_REFUSED,
    Options,
    check_search_usage,
    fail,
    open_retriever,
    options,
    plural,
    print_json,
    run_guarded,
    say,
)
from app.cli_root import cli
from app.progress import TerminalProgress
from indexer.errors import ModelNotAvailableError, UsageError
from retriever.escaping import for_terminal


@cli.command()
def index(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(
        None,
        help="PDF or image files, or folders (recursive). None: embed the pages that wait "
        "for vectors.",
    ),
    password: str = typer.Option(None, "--password", help="Password for encrypted PDFs."),
    text_only: bool = typer.Option(
        False,
        "--text-only",
        help="Store pages and text now (searchable with --mode text); "
        "embed later with 'pagelens index' again.",
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Pages per model batch (default: the largest that fits the free memory, "
        "GPU memory on CUDA; -v shows the choice).",
    ),
    ocr: bool = typer.Option(
        None,
        "--ocr/--no-ocr",
        help="OCR pages without a text layer (scans, images) with "
        "Tesseract; the choice is kept for the collection. Default: as before (off).",
    ),
    ocr_language: str = typer.Option(
        None, "--ocr-language", help="Tesseract language(s) for --ocr, e.g. eng or eng+deu."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    ray_address: str = typer.Option(
        None,
        "--ray",
        metavar="ADDRESS",
        help="Run the job on Ray: 'local' (start Ray on this machine), 'auto' (the cluster "
        "this machine belongs to) or HOST:PORT / ray://HOST:PORT. Needs pagelens[ray].",
    ),
    ray_actors: int = typer.Option(
        None, "--ray-actors", help="With --ray: embedding actors (default: one per GPU, else 1)."
    ),
    ray_actor_cpus: float = typer.Option(
        None,
        "--ray-actor-cpus",
        help="With --ray: CPUs per actor (default: 1 with a GPU; without GPUs, what is left "
        "after keeping a quarter of the CPUs, at least one, for rendering).",
    ),
    ray_cpus: int = typer.Option(
        None,
        "--ray-cpus",
        min=1,
        help="With --ray local: logical CPUs of the Ray instance it starts (default: all of "
        "this machine's), to leave the rest to other work.",
    ),
) -> None:
    """Add files and folders to the collection (resumes interrupted jobs)."""
    from indexer.pipeline import Indexer

    opts = options(ctx)
    _check_ray_usage(opts, ray_address, ray_actors, ray_actor_cpus, ray_cpus)

    def body() -> None:

        from indexer.pages import ocr_tessdata

        if ocr and ocr_language:
            ocr_tessdata(ocr_language)  # a clear error before any slow work
        store = opts.store()
        if ray_address is not None:
            report = _index_on_ray(
                opts,
                store,
                paths,
                ray_address,
                ray_actors,
                ray_actor_cpus,
                ray_cpus,
                password,
                text_only,
                batch_size or 4,  # Ray actors: pages per actor call (memory is theirs)
                ocr,
                ocr_language,
            )
            _print_index_report(report, store, as_json)
            return
        try:
            embedder = None if text_only else opts.embedder()
        except ModelNotAvailableError as exc:
            # Without weights the pages and their text are still worth storing now: text
            # search works at once, and the next 'pagelens index' (or the app) embeds them.
            say(f"note: {exc}")
            say(
                "note: storing pages and text now (text search works at once); visual search "
                "fills in once the model is available: run 'pagelens index' again, or open "
                "'pagelens app'."
            )
            embedder = None
        if embedder is None and opts.is_milvus and store.dim is None:
            _bind_declared_model(opts, store)
        if not paths:
            _embed_pending_only(store, embedder, as_json)
            return
        indexer = Indexer(
            store, embedder, settings=opts.render_settings(embedder), batch_size=batch_size
        )
        if ocr is not None or ocr_language:
            indexer.settings = dataclasses.replace(
                indexer.settings,
                ocr=indexer.settings.ocr if ocr is None else ocr,
                ocr_language=ocr_language or indexer.settings.ocr_language,
            )
            if indexer.settings.ocr:
                ocr_tessdata(indexer.settings.ocr_language)
            if store.render_settings() is not None:
                with store.writing(on_wait=say):
                    store.set_render_settings(indexer.settings.as_dict())
        report = indexer.add(
            paths,
            password=password,
            embed=embedder is not None,
            progress=TerminalProgress(),
            on_wait=say,
            on_file=lambda r: say(_file_line(r)),
        )
        _print_index_report(report, store, as_json)

    run_guarded(body)


def _bind_declared_model(opts: Options, store) -> None:
    """A Milvus page row holds its vector field, so a Milvus collection needs the model's
    width before its first page: a text-only index (``--text-only``, or no weights yet)
    records the configured model, identified from its files without loading it, as a
    local collection would at its first embedding. Without the files the store's own
    error says what to do."""
    from indexer.identity import declared_dim, identify

    source = opts.settings.model_source
    if opts.settings.embedder_url or (dim := declared_dim(source)) is None:
        return
    ident = identify(source)
    with store.writing(on_wait=say):
        store.bind_model(source, dim, fingerprint=ident.fingerprint, revision=ident.revision)


def _check_ray_usage(
    opts: Options,
    address: str | None,
    actors: int | None,
    actor_cpus: float | None,
    cpus: int | None,
) -> None:
    """Usage errors of ``index``'s Ray options (exit code 2), before anything starts."""
    if address is None and (actors is not None or actor_cpus is not None or cpus is not None):
        fail("--ray-actors, --ray-actor-cpus and --ray-cpus go with --ray ADDRESS", 2)
    if cpus is not None and address != "local":
        fail("--ray-cpus sizes the instance that --ray local starts; a cluster has its own", 2)
    if address is not None and opts.embedder_url:
        fail(
            "--ray embeds on the Ray cluster's actors and --embedder on an endpoint: "
            "use one or the other",
            2,
        )


def _embed_pending_only(store, embedder, as_json: bool) -> None:
    """``pagelens index`` without paths: embed the pages that wait for vectors."""
    from indexer.pipeline import Indexer, IndexReport

    report = IndexReport()
    if embedder is not None:
        Indexer(store, embedder).embed_pending(progress=TerminalProgress(), report=report)
    report.pending = store.stats().pending
    _print_index_report(report, store, as_json)


def _index_on_ray(
    opts: Options,
    store,
    paths: list[Path],
    address: str,
    actors: int | None,
    actor_cpus: float | None,
    cpus: int | None,
    password: str | None,
    text_only: bool,
    batch_size: int,
    ocr: bool | None,
    ocr_language: str | None,
):
    """``index --ray``: the same job on a Ray cluster (indexer/ray_job.py)."""

    from indexer.ray_job import RayIndexer, RayOptions, check_address

    ray_options = RayOptions(
        address=check_address(address), actors=actors, actor_cpus=actor_cpus, num_cpus=cpus
    )
    load = opts.settings.load_options()
    model = opts.settings.model_source
    say(f"indexing on Ray ({address}); each actor loads {model} ...")
    with RayIndexer(
        store,
        model=model,
        load=load,
        ray_options=ray_options,
        settings=opts.render_settings(),
        batch_size=batch_size,
    ) as job:
        if ocr is not None or ocr_language:
            job.settings = dataclasses.replace(
                job.settings,
                ocr=job.settings.ocr if ocr is None else ocr,
                ocr_language=ocr_language or job.settings.ocr_language,
            )
            if store.render_settings() is not None:
                with store.writing(on_wait=say):
                    store.set_render_settings(job.settings.as_dict())
        return job.add(
            paths,
            password=password,
            embed=not text_only,
            progress=TerminalProgress(),
            on_wait=say,
            on_file=lambda r: say(_file_line(r)),
        )


def _print_index_report(report, store, as_json: bool) -> None:
    if as_json:
        print_json(report.as_dict())
    else:
        stats = store.stats()
        say(
            f"done in {report.seconds:.1f}s: {report.pages_stored} pages stored, "
            f"{report.pages_embedded} embedded ({report.pages_reused} reused); "
            f"collection {store.location}: {plural(stats.documents, 'document')}, "
            f"{plural(stats.pages, 'page')}"
            + (f", {stats.pending} waiting for vectors" if stats.pending else "")
        )
    failed = getattr(report, "failed", None) or []
    stopped = getattr(report, "stopped", None)
    for failure in failed:
        say(f"not embedded  {failure['document']} p.{failure['page']}: {failure['reason']}")
    if stopped:
        say(f"embedding stopped early: {stopped}")
    partial = getattr(report, "partial", None) or []
    for result in partial:
        for number in result.failed_pages or []:
            say(f"page failed  {for_terminal(result.name or result.path)} p.{number}")
    if report.refused or partial:
        if report.refused:
            say(f"{len(report.refused)} file(s) refused")
        if partial:
            say(
                f"{len(partial)} file(s) indexed without some pages; "
                "'pagelens check --repair' retries them"
            )
        raise SystemExit(EXIT_REFUSED)
    if failed or stopped:
        fail(
            f"{report.pending} page(s) are still waiting for vectors"
            + (f" ({len(failed)} named above)" if failed else "")
            + "; run the same command again to fill them in."
        )


def _file_line(result) -> str:
    if result.status in ("refused", "partial"):
        return f"{result.status:8} {for_terminal(result.path)}: {for_terminal(result.message)}"
    if result.status == "skipped":
        return f"skipped  {result.message}"
    return f"{result.status:8} {for_terminal(result.name)} ({result.pages} pages)"


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
) -> None:
    """Find the pages that answer a question."""
    check_search_usage(question, image=image, mode=mode, k=k, pages=pages)
    opts = options(ctx)

    def body() -> None:
        retriever = open_retriever(opts, mode)
        hits = retriever.search(
            question, k, image=image, documents=documents or None, pages=pages, mode=mode
        )
        pending = retriever.pending() if retriever.embedder is not None else 0
        if as_json:
            print_json(
                {
                    "query": question,
                    "mode": mode or ("visual" if retriever.embedder else "text"),
                    "pending": pending,
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
            typer.echo(
                f"{rank:>2}. {hit.score:7.4f}  {for_terminal(hit.document)}  p.{hit.page}{mark}"
            )
            typer.echo(f"    {hit.image}")
            if hit.snippet:
                typer.echo(f"    {hit.snippet[:160]}")
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
            typer.echo(
                f"{d.id:>4}  {for_terminal(d.name)}  {d.page_count} pages  "
                f"{d.pages_embedded}/{d.pages_stored} embedded  {d.added_at}{state}"
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
) -> None:
    """Search, then write the question and pages as an LLM prompt."""
    import json

    from retriever.export import ExportSettings, to_markdown, to_openai_messages, to_zip

    if fmt not in ("openai", "markdown", "zip"):
        fail(f"unknown format '{fmt}': use openai, markdown or zip", 2)
    check_search_usage(question, mode=mode, k=k, pages=pages)
    opts = options(ctx)

    def body() -> None:
        try:
            settings = ExportSettings(max_side=max_side, image_format=image_format, quality=quality)
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
            text = (
                json.dumps(to_openai_messages(question, hits, settings=settings), indent=1)
                if fmt == "openai"
                else to_markdown(question, hits)
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
) -> None:
    """Start the web app on this computer (Streamlit options pass through, e.g.
    --server.port 8601). Private by default: loopback only, no usage statistics."""
    from app import app_launch

    opts = options(ctx)
    script = Path(__file__).with_name("streamlit_app.py")
    env = os.environ.copy()
    if opts.collection:
        env["PAGELENS_COLLECTION"] = opts.collection
    env.update(opts.settings.to_env())
    if env.get("PAGELENS_MAX_UPLOAD_MB") and not any("maxUploadSize" in a for a in ctx.args):
        # Streamlit's own upload cap must be at least PageLens's limit.
        env.setdefault("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", env["PAGELENS_MAX_UPLOAD_MB"])
    try:
        launch = app_launch.plan(str(script), ctx.args, host=host, environ=env)
    except UsageError as exc:
        fail(str(exc), 2)
    if launch.warning:
        typer.secho(launch.warning, err=True, fg=typer.colors.RED, bold=True)
    argv = [sys.executable, "-m", "app.app_launch", *launch.args]
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


# The other command modules register on app.cli_root.cli when imported (they import
# cli_root, never this module: no import cycle). Imported after the core commands so that
# --help lists those first.
from app import cli_ask, cli_bench, cli_check, cli_eval, cli_mcp, cli_migrate, cli_serve  # noqa: E402,F401,I001


def main() -> None:
    """Console-script entry point."""
    cli()


if __name__ == "__main__":
    # ``python -m app.cli``: every command module registers on app.cli_root.cli, which this
    # copy of the module (run as __main__) shares, so the commands are all there.
    main()
