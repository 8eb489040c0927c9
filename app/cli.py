"""The ``pagelens`` command: one short wrapper per library call.

Global options (``--collection``, ``--model``, ``--device``) come before the command and
also read ``PAGELENS_COLLECTION`` / ``PAGELENS_MODEL``; ``PAGELENS_HOME`` moves the folder
that holds named collections. Exit codes: 0 ok, 1 error, 2 usage, 3 some files refused.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
import typing
from pathlib import Path
from typing import Any

import typer

from app.cli_common import (
    EXIT_REFUSED,
    Options,
    configure_logging,
    fail,
    options,
    print_json,
    run_guarded,
    say,
)
from app.progress import TerminalProgress
from indexer.config import HOME_RULE
from indexer.errors import ModelNotAvailableError, UsageError
from indexer.settings import ModelSettings


def _plain_flags() -> None:
    """Typer's rich help labels on/off flags ``<bool>`` as if they took a value (``--json
    <bool>``); a flag takes none, so show no type for it (options with values keep theirs)."""
    from typer.core import TyperOption

    original = TyperOption.display_type_rich
    if getattr(original, "_pagelens", False):
        return

    def display_type_rich(self: TyperOption, ctx: Any) -> str | None:
        if getattr(self, "is_flag", False) and self.metavar is None:
            return None
        return original(self, ctx)

    display_type_rich._pagelens = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_plain_flags()

cli = typer.Typer(
    name="pagelens",
    help="Ask questions of your PDFs and get back the pages that answer. Built with GME.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def root(ctx: typer.Context, **values: Any) -> None:
    """Read the global options once (the model settings' flags come from ModelSettings)."""
    configure_logging(values.pop("verbose"))
    collection = values.pop("collection")
    try:
        settings = ModelSettings(**values)
    except UsageError as exc:
        fail(str(exc), 2)
    ctx.obj = Options(collection=collection, settings=settings)


def _root_signature() -> None:
    """Give :func:`root` one Typer option per :class:`ModelSettings` field, so that a new
    setting is one edit (in indexer/settings.py) and reaches the CLI, app and server."""
    hints = typing.get_type_hints(ModelSettings)
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        inspect.Parameter(
            "collection",
            kw,
            annotation=str | None,
            default=typer.Option(
                None,
                "--collection",
                "-c",
                envvar="PAGELENS_COLLECTION",
                help=f"Collection name or folder path (default 'default'). {HOME_RULE}.",
            ),
        ),
    ]
    for f in dataclasses.fields(ModelSettings):
        meta = f.metadata
        params.append(
            inspect.Parameter(
                f.name,
                kw,
                annotation=hints[f.name],
                default=typer.Option(
                    f.default, *meta["flags"], envvar=meta["env"], help=meta["help"]
                ),
            )
        )
    params.append(
        inspect.Parameter(
            "verbose",
            kw,
            annotation=bool,
            default=typer.Option(False, "--verbose", "-v", help="Log details."),
        )
    )
    root.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    root.__annotations__ = {p.name: p.annotation for p in params}


_root_signature()
cli.callback()(root)


@cli.command()
def index(
    ctx: typer.Context,
    paths: list[Path] = typer.Argument(..., help="PDF or image files, or folders (recursive)."),
    password: str = typer.Option(None, "--password", help="Password for encrypted PDFs."),
    text_only: bool = typer.Option(
        False,
        "--text-only",
        help="Store pages and text now (searchable with --mode text); "
        "embed later with 'pagelens index' again.",
    ),
    batch_size: int = typer.Option(4, "--batch-size", help="Pages per model batch."),
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
) -> None:
    """Add files and folders to the collection (resumes interrupted jobs)."""
    from indexer.pipeline import Indexer

    opts = options(ctx)
    if ray_address is None and (ray_actors is not None or ray_actor_cpus is not None):
        fail("--ray-actors and --ray-actor-cpus go with --ray ADDRESS", 2)

    def body() -> None:
        import dataclasses

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
                password,
                text_only,
                batch_size,
                ocr,
                ocr_language,
            )
            _print_index_report(report, store, as_json)
            return
        try:
            embedder = None if text_only else opts.embedder()
        except ModelNotAvailableError as exc:
            fail(f"{exc} Meanwhile 'pagelens index --text-only PATH' makes the text searchable.")
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
            embed=not text_only,
            progress=TerminalProgress(),
            on_wait=say,
            on_file=lambda r: say(_file_line(r)),
        )
        _print_index_report(report, store, as_json)

    run_guarded(body)


def _index_on_ray(
    opts: Options,
    store,
    paths: list[Path],
    address: str,
    actors: int | None,
    actor_cpus: float | None,
    password: str | None,
    text_only: bool,
    batch_size: int,
    ocr: bool | None,
    ocr_language: str | None,
):
    """``index --ray``: the same job on a Ray cluster (indexer/ray_job.py)."""
    import dataclasses

    from indexer.ray_job import RayIndexer, RayOptions, check_address

    ray_options = RayOptions(address=check_address(address), actors=actors, actor_cpus=actor_cpus)
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
            f"collection {store.path}: {stats.documents} documents, {stats.pages} pages"
            + (f", {stats.pending} waiting for vectors" if stats.pending else "")
        )
    failed = getattr(report, "failed", None) or []
    stopped = getattr(report, "stopped", None)
    for failure in failed:
        say(f"not embedded  {failure['document']} p.{failure['page']}: {failure['reason']}")
    if stopped:
        say(f"embedding stopped early: {stopped}")
    if report.refused:
        say(f"{len(report.refused)} file(s) refused")
        raise SystemExit(EXIT_REFUSED)
    if failed or stopped:
        fail(
            f"{report.pending} page(s) are still waiting for vectors"
            + (f" ({len(failed)} named above)" if failed else "")
            + "; run the same command again to fill them in."
        )


def _file_line(result) -> str:
    if result.status == "refused":
        return f"refused  {result.path}: {result.message}"
    if result.status == "skipped":
        return f"skipped  {result.message}"
    return f"{result.status:8} {result.name} ({result.pages} pages)"


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
    opts = options(ctx)

    def body() -> None:
        retriever = _retriever(opts, mode)
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
            typer.echo(f"{rank:>2}. {hit.score:7.4f}  {hit.document}  p.{hit.page}")
            typer.echo(f"    {hit.image}")
            if hit.snippet:
                typer.echo(f"    {hit.snippet[:160]}")
        if pending:
            say(f"note: {pending} page(s) still wait for vectors; run 'pagelens index' to finish")

    run_guarded(body)


def _retriever(opts: Options, mode: str | None):
    from retriever.search import Retriever

    store = opts.store(create=False)
    embedder = None
    if mode != "text":
        try:
            embedder = opts.embedder()
        except ModelNotAvailableError as exc:
            if mode is not None or not store.stats().pages:
                raise
            # No mode asked for: the text layer still answers, so say why and use it.
            say(f"note: {exc}")
            say("note: the model is not available, so this searches the text layer (--mode text)")
    return Retriever(embedder, store)


@cli.command()
def docs(ctx: typer.Context, as_json: bool = typer.Option(False, "--json")) -> None:
    """List the documents in the collection."""
    opts = options(ctx)

    def body() -> None:
        store = opts.store()
        documents = store.documents()
        if as_json:
            print_json(
                {"collection": str(store.path), "documents": [d.as_dict() for d in documents]}
            )
            return
        if not documents:
            say(f"collection {store.path} is empty")
        for d in documents:
            state = "" if d.ready else "  (incomplete: run index again)"
            typer.echo(
                f"{d.id:>4}  {d.name}  {d.page_count} pages  "
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
            say(f"removed {doc.name} ({doc.page_count} pages)")

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
    opts = options(ctx)

    def body() -> None:
        try:
            settings = ExportSettings(max_side=max_side, image_format=image_format, quality=quality)
        except ValueError as exc:
            fail(str(exc), 2)
        hits = _retriever(opts, mode).search(
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
def app_cmd(ctx: typer.Context) -> None:
    """Start the web app (Streamlit options pass through, e.g. --server.port 8601)."""
    opts = options(ctx)
    script = Path(__file__).with_name("streamlit_app.py")
    env = os.environ.copy()
    if opts.collection:
        env["PAGELENS_COLLECTION"] = opts.collection
    env.update(opts.settings.to_env())
    if env.get("PAGELENS_MAX_UPLOAD_MB") and not any("maxUploadSize" in a for a in ctx.args):
        # Streamlit's own upload cap must be at least PageLens's limit.
        env.setdefault("STREAMLIT_SERVER_MAX_UPLOAD_SIZE", env["PAGELENS_MAX_UPLOAD_MB"])
    argv = [sys.executable, "-m", "streamlit", "run", str(script), *ctx.args]
    os.execvpe(argv[0], argv, env)


dev = typer.Typer(help="Developer tools.", no_args_is_help=True)
cli.add_typer(dev, name="dev")


@dev.command("make-model")
def make_model(
    folder: Path = typer.Argument(..., help="Where to write the checkpoint."),
    size: str = typer.Option("tiny", "--size", help="tiny (tests) or full (GME-2B shape)."),
) -> None:
    """Write a random-weight GME checkpoint (no download), e.g. for trying PageLens out."""
    from indexer.random_model import build_random_gme

    path = run_guarded(lambda: build_random_gme(folder, size=size))
    say(f"wrote a random-weight {size} GME checkpoint to {path}; use it with PAGELENS_MODEL={path}")


def main() -> None:
    """Console-script entry point."""
    cli()


from app import commands  # noqa: E402,F401  (registers the commands of other modules)

if __name__ == "__main__":
    main()
