"""``pagelens migrate SRC DST``: copy a collection between a folder and Milvus, no re-embedding."""

from __future__ import annotations

import typer

from app.cli.common import fail, print_json, run_guarded, say
from app.cli.root import cli


@cli.command("migrate")
def migrate_cmd(
    source: str = typer.Argument(..., help="Collection name, folder or milvus://HOST:PORT/NAME."),
    destination: str = typer.Argument(
        ..., help="Collection name, folder or milvus://HOST:PORT/NAME (created if missing)."
    ),
    sample: int = typer.Option(64, "--sample", help="Vectors compared after the copy."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Copy documents, pages, images, vectors and model identity; verify counts and a sample
    of vectors. Interrupt it any time: running it again continues where it stopped."""
    from indexer.maintenance.migrate import check_distinct, migrate
    from indexer.stores import open_collection

    def body() -> int:
        src = open_collection(source, create=False)
        dst = open_collection(destination)
        try:
            check_distinct(src, dst)
            report = migrate(src, dst, sample=sample, progress=say)
        finally:
            src.close()
            dst.close()
        if as_json:
            print_json(report.as_dict())
        else:
            c = report.counts
            say(
                f"copied {report.documents_copied} document(s) ({report.pages_copied} pages, "
                f"{report.vectors_copied} vectors), {report.documents_skipped} already there; "
                f"destination: {c['destination']['documents']} documents, "
                f"{c['destination']['pages']} pages, {c['destination']['embedded']} vectors; "
                f"{report.sampled_vectors} sampled vectors checked"
            )
        if not report.ok:
            fail("; ".join(report.problems))
        return 0

    run_guarded(body)
