"""``pagelens sync --watch``: the one-shot sync of ``sync.py``, run again whenever the
folders change (:class:`~indexer.sync.watch.FolderWatcher`), until Ctrl-C or SIGTERM.

Not a command module: ``sync`` calls :func:`watch_folders` for ``--watch``.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.cli.common import Options, say
from app.cli.progress import TerminalProgress
from indexer.errors import PageLensError


def make_sync_once(
    opts: Options,
    *,
    prune: bool,
    on_report: Callable[[Any], None] | None = None,
) -> Callable[[list[Path]], Any]:
    """``sync_once(folders)`` for the watcher: the one-shot sync of those folders into the
    CLI's collection with its model (loaded once, on the first sync). A sync that could
    not finish everything (``errors``) is raised, so that the watcher tries it again."""
    from indexer.sync import sync_folders

    def sync_once(folders: list[Path]) -> Any:
        store = opts.store()
        embedder = opts.embedder()
        report = sync_folders(
            store,
            embedder,
            folders,
            prune=prune,
            progress=TerminalProgress(),
            settings=opts.render_settings(embedder),
            on_wait=say,
        )
        if on_report is not None:
            on_report(report)
        if report.errors:
            raise PageLensError("not finished: " + "; ".join(report.errors))
        return report

    return sync_once


def watch_folders(
    opts: Options,
    folders: list[Path],
    *,
    prune: bool,
    sync_once: Callable[[list[Path]], Any] | None = None,
) -> None:
    """Watch ``folders`` and sync them into the collection until Ctrl-C or SIGTERM (then
    return normally: exit code 0). Every applied batch prints one line on stderr."""
    from indexer.sync import FolderWatcher

    if sync_once is None:
        sync_once = make_sync_once(opts, prune=prune)
    exclude = [] if opts.is_milvus else [opts.collection_dir]  # its own writes
    watcher = FolderWatcher(folders, sync_once, on_status=say, exclude=exclude)
    stop = threading.Event()
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        watcher.start()
        say("press Ctrl-C to stop")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        say("stopping (a sync in progress finishes first) ...")
        watcher.stop(timeout=None)
        say("stopped")
