"""What a sync would do (:func:`plan_sync`): the folders' files against the documents the
collection records under them. Pure reading: ``pagelens sync --dry-run`` prints it.

A file is compared with the document recorded at its path by size and modification time
first (the time :meth:`Store.set_document_source` recorded, keyed by the document's hash),
hashed only when they differ or none was recorded. A file at a new path is hashed only when
a document whose file is gone has its size: the same hash is a move (pages and vectors
kept), else it is added.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from indexer.errors import UsageError
from indexer.pages import file_sha256, iter_input_files
from indexer.stores import Store
from indexer.stores.types import Document


@dataclass(frozen=True)
class SourceFile:
    """A file a synced folder contributes, as it stands now."""

    path: Path
    size: int
    mtime_ns: int


@dataclass
class SyncPlan:
    """The changes that make the collection mirror the folders (see :func:`plan_sync`)."""

    folders: list[Path]
    added: list[SourceFile] = field(default_factory=list)
    #: A new version of a recorded file: the file and the document it replaces.
    changed: list[tuple[SourceFile, Document]] = field(default_factory=list)
    moved: list[tuple[Document, SourceFile]] = field(default_factory=list)
    #: Documents whose file is gone (removed with ``prune``, else listed as ``missing``).
    missing: list[Document] = field(default_factory=list)
    unchanged: int = 0
    #: Unchanged files whose size or time differs from what was recorded (same hash): the
    #: new values are recorded, so the next sync need not hash them.
    restamp: list[tuple[Document, SourceFile]] = field(default_factory=list)
    #: Documents an interrupted sync or index left unfinished (resumed as added files).
    resumed: list[SourceFile] = field(default_factory=list)
    #: Hidden versions an interrupted sync left that no change needs: removed.
    leftovers: list[Document] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.moved or self.missing or self.resumed)

    def as_dict(self, *, prune: bool = False) -> dict:
        """The plan in the shape of a sync's result (``pagelens sync --dry-run --json``)."""
        gone = [d.path for d in self.missing]
        return {
            "added": [str(f.path) for f in self.added + self.resumed],
            "changed": [str(f.path) for f, _doc in self.changed],
            "moved": [{"from": d.path, "to": str(f.path)} for d, f in self.moved],
            "removed": gone if prune else [],
            "missing": [] if prune else gone,
            "unchanged": self.unchanged,
        }


def sync_folders_of(folders: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The folders as resolved paths; a path that is not a folder is a usage error (an
    unmounted drive must not read as 'every file deleted')."""
    out: list[Path] = []
    for raw in folders:
        path = Path(raw).expanduser()
        if not path.is_dir():
            what = "does not exist" if not path.exists() else "is not a folder"
            raise UsageError(f"{path} {what}: sync mirrors folders, and changed nothing.")
        resolved = path.resolve()
        if resolved not in out:
            out.append(resolved)
    if not out:
        raise UsageError("Name at least one folder to sync.")
    return out


def inside(path: str | Path, folders: Sequence[Path]) -> bool:
    """Whether a recorded source path lies in one of the (resolved) folders."""
    p = Path(path)
    return any(p == f or p.is_relative_to(f) for f in folders)


def _scan(folders: Sequence[Path]) -> dict[Path, SourceFile]:
    files: dict[Path, SourceFile] = {}
    for path in iter_input_files(folders):
        try:
            resolved = path.resolve()
            st = resolved.stat()
        except OSError:  # gone between the listing and now: as if never listed
            continue
        files[resolved] = SourceFile(resolved, st.st_size, st.st_mtime_ns)
    return files


def plan_sync(store: Store, folders: Iterable[str | os.PathLike[str]]) -> SyncPlan:
    """Compare the files of ``folders`` with the documents recorded under them.

    Documents recorded elsewhere (other folders, uploads) are not looked at. Reads only.
    """
    roots = sync_folders_of(folders)
    plan = SyncPlan(roots)
    files = _scan(roots)
    stamps = store.source_stamps()
    by_path: dict[Path, Document] = {}
    for doc in store.documents():
        if not inside(doc.path, roots):
            continue
        path = Path(doc.path)
        if doc.status == "replaced" or (doc.status == "staged" and path not in files):
            plan.leftovers.append(doc)
        elif doc.status == "staged":
            continue  # resumed by its path's change, or a leftover (apply decides)
        else:
            if path in by_path:  # indexed twice (two versions): the older one is stale
                plan.missing.append(by_path[path])
            by_path[path] = doc  # documents() lists them in the order they were added
    gone = [d for p, d in by_path.items() if p not in files]
    new: list[SourceFile] = []
    for path, file in sorted(files.items()):
        recorded = by_path.get(path)
        if recorded is None:
            new.append(file)
        elif not recorded.ready:
            plan.resumed.append(file)
        elif file.size == recorded.bytes and stamps.get(recorded.sha256) == file.mtime_ns:
            plan.unchanged += 1
        elif (recorded.bytes and file.size != recorded.bytes) or file_sha256(
            path
        ) != recorded.sha256:
            plan.changed.append((file, recorded))
        else:
            plan.unchanged += 1
            plan.restamp.append((recorded, file))
    for file in new:
        # A file's old bytes may have moved on while a new file took its path (renamed,
        # then replaced): that document moves, and the path's new file is added.
        replaced = [doc for _file, doc in plan.changed]
        twin = _moved_from(file, gone + replaced)
        if twin is None:
            plan.added.append(file)
        elif twin in gone:
            gone.remove(twin)
            plan.moved.append((twin, file))
        else:
            at = next(i for i, (_f, doc) in enumerate(plan.changed) if doc is twin)
            plan.added.append(plan.changed.pop(at)[0])
            plan.moved.append((twin, file))
    plan.missing.extend(gone)
    plan.added.sort(key=lambda f: f.path)
    return plan


def _moved_from(file: SourceFile, gone: list[Document]) -> Document | None:
    """The document whose file is gone and that holds this file's bytes (hashed only when
    one has its size)."""
    candidates = [d for d in gone if d.bytes == file.size]
    if not candidates:
        return None
    sha = file_sha256(file.path)
    return next((d for d in candidates if d.sha256 == sha), None)
