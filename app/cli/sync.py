"""``pagelens sync FOLDER...``: make the collection mirror folders (added, changed, moved and
gone files), with ``--prune``, ``--dry-run`` and ``--json``; exit codes as ``index``."""

from __future__ import annotations

from pathlib import Path

import typer

from app.cli.common import EXIT_REFUSED, fail, options, plural, print_json, run_guarded, say
from app.cli.progress import TerminalProgress
from app.cli.root import cli
from retriever.escaping import for_terminal


@cli.command()
def sync(
    ctx: typer.Context,
    folders: list[Path] = typer.Argument(..., help="Folders to mirror (recursive)."),
    prune: bool = typer.Option(
        False, "--prune", help="Remove the documents whose file is gone (else only listed)."
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print what would change, and change nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the plan or the result as JSON."),
    watch: bool = typer.Option(
        False,
        "--watch",
        help="Stay running and apply changes as they happen (each file once it stopped "
        "changing: PAGELENS_WATCH_SETTLE, default 1 s); Ctrl-C stops.",
    ),
) -> None:
    """Make the collection mirror folders: index new files, re-index changed ones (the new
    version replaces the old at once), keep moved ones, list (--prune: remove) gone ones."""
    from indexer.sync import sync_folders

    opts = options(ctx)
    if watch and (dry_run or as_json):
        fail("--watch applies changes and prints lines: not with --dry-run or --json", 2)

    def body() -> None:
        if watch:
            from app.cli.watching import make_sync_once, watch_folders

            once = make_sync_once(opts, prune=prune, on_report=_print_changes)
            watch_folders(opts, folders, prune=prune, sync_once=once)
            return
        store = opts.read_store() if dry_run else opts.store()  # a dry run creates nothing
        if store is None:
            report = _plan_without_collection(folders)
        else:
            embedder = None if dry_run else opts.embedder()
            report = sync_folders(
                store,
                embedder,
                folders,
                prune=prune,
                dry_run=dry_run,
                progress=None if as_json else TerminalProgress(),
                settings=None if dry_run else opts.render_settings(embedder),
                on_file=_file_line,
                on_wait=say,
            )
        if as_json:
            print_json(report.as_dict())
        else:
            _print_report(report)
        if report.refused or report.partial:
            raise SystemExit(EXIT_REFUSED)
        if report.errors or (report.index is not None and report.index.failed):
            fail("some changes are not finished; run the same command again to finish them")

    run_guarded(body)


def _file_line(result) -> None:
    """As each file's pages are stored (its vectors come after all files' pages)."""
    if result.status in ("added", "resumed"):
        say(f"stored   {for_terminal(result.name or result.path)} ({result.pages} pages)")


def _plan_without_collection(folders: list[Path]):
    """A dry run where no collection exists yet: every file would be added."""
    from indexer.pages import iter_input_files
    from indexer.sync import SyncReport
    from indexer.sync.plan import sync_folders_of

    files = iter_input_files(sync_folders_of(folders))
    return SyncReport(added=[str(p.resolve()) for p in files], dry_run=True)


def _print_report(report) -> None:
    """One line per change, then the totals."""
    _print_changes(report)
    verb = "would be " if report.dry_run else ""
    say(
        f"{'plan' if report.dry_run else 'done'}: {len(report.added)} {verb}added, "
        f"{len(report.changed)} {verb}changed, {len(report.moved)} {verb}moved, "
        f"{len(report.removed)} {verb}removed, {len(report.missing)} missing, "
        f"{plural(report.unchanged, 'file')} unchanged"
        + ("" if report.dry_run else f" ({report.seconds:.1f}s)")
    )


def _print_changes(report) -> None:
    """One line per changed, refused or unfinished file (``--watch`` prints these for each
    batch, then its own totals line)."""
    for path in report.added:
        say(f"added    {for_terminal(path)}")
    for path in report.changed:
        say(f"changed  {for_terminal(path)}")
    for move in report.moved:
        say(f"moved    {for_terminal(move['from'])} -> {for_terminal(move['to'])}")
    for path in report.removed:
        say(f"removed  {for_terminal(path)}")
    for path in report.missing:
        say(f"missing  {for_terminal(path)} (gone from the folder; --prune removes it)")
    for item in report.refused + report.partial:
        say(
            f"{item.get('status', 'refused'):8} {for_terminal(item.get('path', ''))}: "
            f"{for_terminal(item.get('message') or '')}"
        )
    for item in report.duplicates:
        say(f"skipped  {for_terminal(item['path'])}: same content as {item['stored_as']}")
    for message in report.errors:
        say(f"not done {for_terminal(message)}")
