"""Keeping a collection in step with folders on disk.

Modules: :mod:`~indexer.sync.watch` (:class:`FolderWatcher`: watches folders with watchdog,
waits for written files to settle, batches bursts and calls an injected one-shot sync).

May import: :mod:`indexer.pipeline`, :mod:`indexer.pages`, :mod:`indexer.stores` (the
``Store`` protocol, never an engine), :mod:`indexer.config`, :mod:`indexer.errors`; never
anything above :mod:`indexer`.
"""

from __future__ import annotations

from indexer.sync.watch import FolderWatcher, WatchStatus, check_folder, is_ignored_name

__all__ = ["FolderWatcher", "WatchStatus", "check_folder", "is_ignored_name"]
