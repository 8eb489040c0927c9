"""Which input files a job stores, and how: refused, the same bytes twice in one batch,
already in the collection, or pages to store (:func:`plan_files`). Shared by the in-process
and the Ray indexers; nothing here writes, except :func:`add_file_document`."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from indexer.errors import DocumentError
from indexer.pages import DocumentInfo, RenderSettings, file_sha256
from indexer.pipeline.results import FileResult
from indexer.stores import Store
from indexer.stores.types import Document


def collection_settings(
    store: Store, settings: RenderSettings | None, max_image_tokens: int | None
) -> RenderSettings:
    """The render settings an indexer uses: those given, else the ones the collection
    recorded (so later files render like earlier ones), else the model's image budget
    (1280 tokens when it names none). Shared by the local and the Ray indexers."""
    stored = store.render_settings()
    if settings is None and stored:
        settings = RenderSettings(
            **{k: v for k, v in stored.items() if k in RenderSettings.__dataclass_fields__}
        )
    if settings is None:
        settings = RenderSettings.for_tokens(int(max_image_tokens or 1280))
    return settings


def add_file_document(
    store: Store, name: str, path: Path, info: DocumentInfo, *, status: str = "indexing"
) -> Document:
    """Record a new input file (status ``indexing``, or ``staged`` for a sync's new version
    of a changed file) as ``inspect_document`` described it."""
    return store.add_document(
        name=name,
        path=str(Path(path).resolve()),
        sha256=info.sha256,
        kind=info.kind,
        page_count=info.page_count,
        title=info.title,
        size=Path(path).stat().st_size,
        status=status,
    )


@dataclass
class FilePlan:
    """An input file to store pages of: what :func:`inspect_document` said of it, and what
    the collection already holds of the same content."""

    path: Path
    info: DocumentInfo
    password: str | None
    name: str
    existing: Document | None
    stored: set[int]
    todo: int  # pages this run renders

    def already_stored(self, *, embedding: bool) -> FileResult | None:
        """The ``skipped`` result when the collection holds this content complete, else
        None; ``embedding``: this run embeds the pages that wait for vectors."""
        path, existing = self.path, self.existing
        if existing is None or not existing.ready:
            return None
        waiting = existing.pages_stored - existing.pages_embedded
        if waiting > 0 and embedding:
            message = (
                f"{path.name} is already stored; embedding its {waiting} page(s) "
                "that wait for vectors."
            )
        else:
            message = (
                f"{path.name} is already in the collection (same content as '{existing.name}')."
            )
        return FileResult(
            str(path),
            "skipped",
            existing.id,
            existing.name,
            existing.page_count,
            message=message,
        )


def sha256_or_none(path: Path) -> str | None:
    """The file's SHA-256, or None when it cannot be read (``inspect`` then says why)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


#: ``inspect(path, password, sha256)``: describes a file; ``sha256`` is its hash when known.
Inspect = Callable[[Path, str | None, str | None], DocumentInfo]


def plan_files(
    store: Store,
    files: Iterable[Path],
    inspect: Inspect,
    *,
    password: str | None = None,
    passwords: dict[str, str] | None = None,
    names: dict[str, str] | None = None,
    hashes: Callable[[Path], str | None] = sha256_or_none,
) -> Iterator[FilePlan | FileResult]:
    """Per input file, in order: a refusal (``inspect`` raised :class:`DocumentError`), a
    skip (the same bytes as an earlier file of this batch: stored once), or a plan.

    The file is hashed first (``hashes``) and a file whose bytes are already a ready
    document is planned from that document, never inspected: inspecting an office file
    means a LibreOffice conversion (seconds to minutes), and adding the same bytes again
    must cost a hash, not that. ``inspect(path, password, sha256)`` describes the others
    (:func:`inspect_document`, or what a Ray task found). Shared by the local and the Ray
    indexers; it writes nothing.
    """
    planned: dict[str, Path] = {}
    for path in files:
        pw = (passwords or {}).get(str(path), password)
        name = (names or {}).get(str(path)) or path.name
        sha256 = hashes(path)
        existing = store.find_by_sha256(sha256) if sha256 else None
        try:
            info = _stored_info(path, existing) or inspect(path, pw, sha256)
        except DocumentError as exc:
            yield FileResult(str(path), "refused", reason=exc.reason, message=str(exc))
            continue
        twin = planned.get(info.sha256)
        if twin is not None:  # the same bytes twice in one batch: store them once
            yield FileResult(
                str(path),
                "skipped",
                name=name,
                pages=info.page_count,
                message=f"{path.name} has the same content as {twin.name} in this batch; "
                "stored once.",
            )
            continue
        planned[info.sha256] = path
        if existing is None or existing.sha256 != info.sha256:  # changed since it was hashed
            existing = store.find_by_sha256(info.sha256)
        stored = store.stored_page_numbers(existing.id) if existing else set()
        todo = 0 if existing and existing.ready else info.page_count - len(stored)
        yield FilePlan(path, info, pw, name, existing, stored, todo)


def _stored_info(path: Path, existing: Document | None) -> DocumentInfo | None:
    """What a ready document already says of these bytes (so they need no inspection)."""
    if existing is None or not existing.ready:
        return None
    return DocumentInfo(
        path=path,
        kind=existing.kind,
        page_count=existing.page_count,
        sha256=existing.sha256,
        title=existing.title,
        encrypted=False,
    )
