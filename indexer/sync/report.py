"""What a sync did (or, with ``dry_run``, would do): :class:`SyncReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

from indexer.pipeline import IndexReport


@dataclass
class SyncReport:
    """The changes applied to make the collection mirror the folders.

    ``as_dict()`` gives the public keys ``added``, ``changed``, ``moved`` (``{"from",
    "to"}``), ``removed``, ``missing`` (gone from the folder, kept without ``prune``) and
    ``unchanged`` (a count), then the extra keys below.
    """

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    moved: list[dict[str, str]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unchanged: int = 0
    dry_run: bool = False
    #: Files that could not be indexed: ``FileResult.as_dict()`` (the old version of a
    #: changed file stays as it was).
    refused: list[dict] = field(default_factory=list)
    #: Files indexed without some pages (``FileResult.as_dict()``, ``failed_pages``).
    partial: list[dict] = field(default_factory=list)
    #: Files whose bytes the collection already holds under another path (stored once).
    duplicates: list[dict[str, str]] = field(default_factory=list)
    #: Hidden versions an interrupted sync had left, removed now (their paths).
    cleaned: list[str] = field(default_factory=list)
    #: What went wrong without a refusal (a new version not fully embedded: kept staged).
    errors: list[str] = field(default_factory=list)
    #: The indexing job that stored the added and changed files (None: nothing to index).
    index: IndexReport | None = None
    seconds: float = 0.0

    @property
    def changes(self) -> int:
        return len(self.added) + len(self.changed) + len(self.moved) + len(self.removed)

    def as_dict(self) -> dict:
        out: dict = {
            "added": self.added,
            "changed": self.changed,
            "moved": self.moved,
            "removed": self.removed,
            "missing": self.missing,
            "unchanged": self.unchanged,
            "dry_run": self.dry_run,
            "refused": self.refused,
            "partial": self.partial,
            "duplicates": self.duplicates,
            "cleaned": self.cleaned,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
        }
        if self.index is not None:
            out["pages_stored"] = self.index.pages_stored
            out["pages_embedded"] = self.index.pages_embedded
            out["pages_reused"] = self.index.pages_reused
            out["pending"] = self.index.pending
        return out
