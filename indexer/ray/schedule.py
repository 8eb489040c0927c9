"""The state of one Ray job's loop (:class:`Schedule`): the documents being stored, the
render chunks and images waiting, what is out on the cluster, and where results go.

Plain data for :mod:`indexer.ray.driver`; imports only the pipeline's result types.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from indexer.pipeline import FileResult, IndexReport, Meter


@dataclass
class Doc:
    """A document being stored: its render chunks still out, and the file's result."""

    id: int
    name: str
    path: Path
    password: str | None
    page_count: int
    resumed: bool
    chunks_left: int = 0
    todo: int = 0  # pages this run renders
    rendered: int = 0
    dead: bool = False
    failed: list[tuple[int, str]] = field(default_factory=list)  # (page, why) not rendered


@dataclass
class Item:
    """Pages whose image bytes are identical: one model input, one vector for all."""

    sha: str
    #: (page id, document id): rows and image bytes are read when the batch is sent, so a
    #: long queue holds ids and a hash per page, not every row with its text layer.
    pages: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Schedule:
    """The state of one job's loop: what waits to be rendered or embedded, what is out on
    the cluster, how many batches each actor holds, and where results go."""

    report: IndexReport
    embed: bool
    on_file: Callable[[FileResult], None] | None
    docs: dict[int, Doc] = field(default_factory=dict)
    #: Render chunks not yet sent: (document, page numbers).
    renders: deque[tuple[Doc, list[int]]] = field(default_factory=deque)
    #: Images to embed, by image sha, in arrival order; ``inflight`` those out at an actor.
    waiting: OrderedDict[str, Item] = field(default_factory=OrderedDict)
    inflight: dict[str, Item] = field(default_factory=dict)
    render_jobs: dict[Any, tuple[Doc, list[int]]] = field(default_factory=dict)
    embed_jobs: dict[Any, tuple[Any, list[Item]]] = field(default_factory=dict)
    load: dict[Any, int] = field(default_factory=dict)  # batches out per actor
    meter: Meter = field(init=False)

    def busy(self) -> bool:
        """Whether anything is left to send or to wait for."""
        return bool(
            self.renders or self.render_jobs or (self.embed and (self.waiting or self.embed_jobs))
        )

    def queue(self, page_id: int, doc_id: int, sha: str) -> None:
        """Queue a page for a vector: with the pages of the same image if any wait or are
        out, else as a new item."""
        item = self.inflight.get(sha) or self.waiting.get(sha)
        if item is None:
            item = self.waiting[sha] = Item(sha)
        item.pages.append((page_id, doc_id))

    def dead(self, doc_id: int) -> bool:
        doc = self.docs.get(doc_id)
        return doc is not None and doc.dead

    def file_done(self, result: FileResult) -> None:
        self.report.files.append(result)
        if self.on_file:
            self.on_file(result)
