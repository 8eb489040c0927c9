"""Mirroring folders into a collection (``pagelens sync``): new files indexed, changed ones
re-indexed and swapped in atomically, moved ones kept (pages and vectors), gone ones listed
or, with ``prune``, removed.

Modules: :mod:`~indexer.sync.plan` (:func:`plan_sync`: the folders against the documents
recorded under them; reads only), :mod:`~indexer.sync.apply` (carrying a plan out with an
:class:`~indexer.pipeline.Indexer`), :mod:`~indexer.sync.report` (:class:`SyncReport`),
:mod:`~indexer.sync.watch` (:class:`FolderWatcher`: watches folders with watchdog, waits
for written files to settle, batches bursts and calls an injected one-shot sync: ``pagelens
sync --watch``).

May import: :mod:`indexer.pipeline`, :mod:`indexer.pages`, :mod:`indexer.stores` (the
``Store`` protocol and its value types, never an engine), :mod:`indexer.errors` and the
model's ``Embedder`` protocol, :mod:`indexer.config` (the settle time); nothing above
:mod:`indexer`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from indexer.model import Embedder
from indexer.pages import RenderSettings
from indexer.pipeline import FileResult, ProgressFn
from indexer.stores import Store
from indexer.sync.apply import apply_plan
from indexer.sync.plan import SourceFile, SyncPlan, plan_sync
from indexer.sync.report import SyncReport
from indexer.sync.watch import FolderWatcher, WatchStatus, check_folder, is_ignored_name

__all__ = [
    "FolderWatcher",
    "SourceFile",
    "SyncPlan",
    "SyncReport",
    "WatchStatus",
    "apply_plan",
    "check_folder",
    "is_ignored_name",
    "plan_sync",
    "sync_folders",
]


def sync_folders(
    store: Store,
    embedder: Embedder | None,
    folders: Iterable[str | os.PathLike[str]],
    *,
    prune: bool = False,
    dry_run: bool = False,
    progress: ProgressFn | None = None,
    settings: RenderSettings | None = None,
    on_file: Callable[[FileResult], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> SyncReport:
    """Make the documents recorded under ``folders`` mirror their files.

    ``dry_run``: the plan only, as a report (nothing written). Documents recorded outside
    the folders are never touched. Re-running after an interruption finishes the job.
    """
    started = time.perf_counter()
    if dry_run:
        plan = plan_sync(store, folders)
        data = plan.as_dict(prune=prune)
        report = SyncReport(
            added=data["added"],
            changed=data["changed"],
            moved=data["moved"],
            removed=data["removed"],
            missing=data["missing"],
            unchanged=plan.unchanged,
            dry_run=True,
            duplicates=[{"path": str(f.path), "stored_as": d.path} for f, d in plan.duplicates],
        )
        report.seconds = time.perf_counter() - started
        return report
    with store.writing(on_wait=on_wait):  # planned under the lock: it applies what it saw
        plan = plan_sync(store, folders)
        report = apply_plan(
            store,
            embedder,
            plan,
            prune=prune,
            progress=progress,
            settings=settings,
            on_file=on_file,
            on_wait=on_wait,
        )
    report.seconds = time.perf_counter() - started
    return report
