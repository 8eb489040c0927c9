"""``pagelens check [--repair] [--json]``: is the collection consistent, and if not, fix it.

Exit codes: 0 healthy (or every problem repaired), 4 problems remain (listed; with
``--repair``, those that could not be fixed), 1 error (no collection; ``--repair`` on
a read-only one).
"""

from __future__ import annotations

import contextlib

import typer

from app.cli.common import fail, options, plural, print_json, run_guarded, say
from app.cli.root import cli

#: Exit code when the check finds problems that remain (documented in the README).
EXIT_PROBLEMS = 4


@cli.command("check")
def check_cmd(
    ctx: typer.Context,
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Fix what can be fixed: rebuild the vector file, re-render "
        "missing page images, finish interrupted documents, embed pending pages, delete "
        "orphan files.",
    ),
    password: str = typer.Option(
        None, "--password", help="Password of encrypted source files (for re-rendering)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Check that catalog rows, vectors and page images agree (exit 4 if not)."""
    from indexer.identity import identify
    from indexer.maintenance.check import CheckReport, check, open_for_check
    from indexer.maintenance.repair import repair as do_repair
    from indexer.stores import Store

    opts = options(ctx)

    def body() -> int:
        # The model the user named, identified by its weights when they are on this machine.
        fingerprint = identify(opts.model).fingerprint if opts.model else None
        store: Store | None
        report: CheckReport | None
        if opts.is_milvus:  # the same check, through the store interface
            store, report = opts.store(create=False), None
        else:
            if not opts.collection_dir.exists():
                fail(f"No collection at {opts.collection_dir}.")
            store, report = open_for_check(opts.collection_dir)
        if store is not None:
            if repair:

                def load():
                    if opts.model is None and store.model_id:
                        # the model that built the collection
                        opts.settings = opts.settings.replace(model=store.model_id)
                    return opts.embedder()

                with store.writing(on_wait=say):
                    report = do_repair(
                        store,
                        embedder=load,
                        password=password,
                        model_id=opts.model,
                        fingerprint=fingerprint,
                    )
            else:
                # With the lock (when free) the view is consistent; a running indexer
                # would show its work in progress as problems. (Milvus has no lock.)
                lock_if_free = getattr(store, "lock_if_free", None)
                with lock_if_free() if lock_if_free else contextlib.nullcontext(True) as free:
                    report = check(store, model_id=opts.model, fingerprint=fingerprint)
                if not free:
                    say(
                        f"note: another process is writing to {store.location}; "
                        "its work in progress may show as problems"
                    )
        assert report is not None  # open_for_check gives a store or a report
        if as_json:
            print_json(report.as_dict())
        else:
            _print(report)
        return 0 if report.ok else EXIT_PROBLEMS

    code = run_guarded(body)
    if code:
        raise typer.Exit(code)


def _print(report) -> None:
    meta = report.meta
    stats = report.stats
    typer.echo(
        f"collection {report.collection}: model {meta.get('model_id', '(none yet)')}"
        + (f" (dim {meta['dim']})" if meta.get("dim") else "")
        + (
            f", {plural(stats['documents'], 'document')}, {plural(stats['pages'], 'page')}, "
            f"{stats['embedded']} embedded"
            if stats
            else ""
        )
    )
    for item in report.repaired:
        typer.echo(f"repaired  {item['kind']}: {item['detail']}")
    for problem in report.problems:
        typer.echo(f"problem   {problem.kind}: {problem.detail}")
    typer.echo("ok" if report.ok else f"{len(report.problems)} problem(s) remain")
