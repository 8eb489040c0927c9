"""``pagelens index``: add files to the collection (in this process or on a Ray cluster),
or embed the pages that wait for vectors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import typer

from app.cli.common import (
    EXIT_REFUSED,
    Options,
    fail,
    options,
    plural,
    print_json,
    run_guarded,
    say,
)
from app.cli.progress import TerminalProgress
from app.cli.root import cli
from indexer.errors import ModelNotAvailableError
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
    """``index --ray``: the same job on a Ray cluster (indexer/ray/)."""

    from indexer.ray import RayIndexer, RayOptions, check_address

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
