"""What an indexing job reports: per-file results, the job's totals, progress events and the
meter that makes them. Shared by the in-process and the Ray indexers."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from indexer.stores import Store


@dataclass(frozen=True)
class Progress:
    """One progress report: pages ``done`` of ``total`` in ``phase`` ("pages" or "vectors")."""

    phase: str
    done: int
    total: int
    rate: float = 0.0
    eta_s: float | None = None
    file: str | None = None
    message: str | None = None


@dataclass
class FileResult:
    """What happened to one input file. ``status``: added, resumed, skipped, refused, or
    partial (indexed, but the pages in ``failed_pages`` could not be rendered)."""

    path: str
    status: str
    document_id: int | None = None
    name: str | None = None
    pages: int = 0
    reason: str | None = None
    message: str | None = None
    failed_pages: list[int] | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class IndexReport:
    files: list[FileResult] = field(default_factory=list)
    pages_stored: int = 0
    pages_embedded: int = 0
    pages_reused: int = 0
    pending: int = 0
    seconds: float = 0.0
    #: Pages whose embedding failed after every retry: ``{"page_id", "document", "page",
    #: "reason"}``; they stay pending (no vector is stored) and the next run retries them.
    failed: list[dict] = field(default_factory=list)
    #: Why the vectors phase stopped early (the embedder became unreachable), if it did.
    stopped: str | None = None

    @property
    def refused(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "refused"]

    @property
    def partial(self) -> list[FileResult]:
        """Files indexed without some pages (failed to render; placeholders recorded)."""
        return [f for f in self.files if f.status == "partial"]

    def as_dict(self) -> dict:
        return {
            "files": [f.as_dict() for f in self.files],
            "pages_stored": self.pages_stored,
            "pages_embedded": self.pages_embedded,
            "pages_reused": self.pages_reused,
            "pending": self.pending,
            "refused": len(self.refused),
            "partial": len(self.partial),
            "failed": list(self.failed),
            "stopped": self.stopped,
            "seconds": round(self.seconds, 3),
        }


ProgressFn = Callable[[Progress], None]


class Meter:
    """Pages/s and ETA over a phase, for progress bars.

    With ``render_total`` (a Ray job, whose stages overlap) the phase is the vectors, the
    slow stage, and the message counts the pages rendered so far; without it the pages
    rendered (:meth:`rendered`) are the phase's own steps.
    """

    def __init__(
        self,
        phase: str,
        total: int,
        callback: ProgressFn | None,
        *,
        render_total: int | None = None,
    ) -> None:
        self.phase, self.total, self.callback = phase, total, callback
        self.render_total, self.rendered_n = render_total, 0
        self.done = 0
        self.start = time.perf_counter()

    def step(self, n: int = 1, *, file: str | None = None, message: str | None = None) -> None:
        self.done += n
        self.report(file=file, message=message)

    def rendered(self, n: int, file: str | None) -> None:
        """``n`` pages of ``file`` were rendered and stored."""
        if self.render_total is None:
            self.step(n, file=file)
            return
        self.rendered_n += n
        self.report(file=file)

    def drop(self, pages: int, rendered: int) -> None:
        """A refused document's ``pages`` leave the job (``rendered`` of them were counted)."""
        self.total -= pages
        if self.render_total is None:
            self.done -= rendered
        else:
            self.render_total -= pages
            self.rendered_n -= rendered
        self.done = min(self.done, self.total)
        self.report()

    def report(self, *, file: str | None = None, message: str | None = None) -> None:
        if self.callback is None:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed if self.done else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else None
        if message is None and self.render_total is not None:
            message = f"rendered {self.rendered_n}/{self.render_total}"
        self.callback(
            Progress(self.phase, self.done, self.total, rate, eta, file=file, message=message)
        )


def partial_result(
    store: Store,
    doc_id: int,
    path: str,
    name: str,
    page_count: int,
    failed: Sequence[tuple[int, str]],
    *,
    ready: bool = True,
) -> FileResult | None:
    """The result of a file some of whose pages failed to render (placeholders already
    recorded): ``partial`` (and the document marked ready) if any page rendered, else
    ``refused`` with the document removed. None when no page failed."""
    if not failed:
        return None
    if not store.stored_page_numbers(doc_id):  # not one page renders: refused as a whole
        store.remove_document(doc_id)
        return FileResult(path, "refused", reason="damaged", message=failed[0][1])
    if ready:  # else a staged version, published by its caller
        store.mark_ready(doc_id)
    numbers = sorted(n for n, _why in failed)
    return FileResult(
        path,
        "partial",
        doc_id,
        name,
        page_count,
        reason="damaged",
        message=f"{name}: {len(numbers)} of {page_count} page(s) could not be rendered "
        f"(page {', '.join(map(str, numbers))}: {failed[0][1]}); the other pages are "
        "indexed, and 'pagelens check --repair' retries the failed ones.",
        failed_pages=numbers,
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")
