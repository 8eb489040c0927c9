"""The app's watched folders: which folders a collection follows, and the one watcher
thread that keeps it in step with them (no Streamlit import, so that it is testable).

The list is kept per collection in ``watched.json`` in the collection's folder (a Milvus
collection: its work folder on this machine, as its image cache), so it follows the
collection and needs nothing in the user's home. The watcher is
:class:`~indexer.sync.watch.FolderWatcher`; each batch syncs folder by folder through
:meth:`~app.web.services.Workspace.sync_folder` (pages and text at once, vectors by the
workspace's background job), so that every folder has its own last sync, counts and error.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.web.services import Workspace
from indexer.errors import PageLensError, UsageError
from indexer.sync.watch import FolderWatcher, check_folder, report_counts

WATCHED_FILE = "watched.json"


@dataclass
class FolderState:
    """What the panel shows of one folder."""

    last_sync_at: float | None = None  # wall-clock time
    counts: dict[str, int] | None = None
    error: str | None = None


class WatchedFolders:
    """The watched folders of one open collection and their watcher (one per process:
    the app caches this object per collection, as it does the workspace)."""

    def __init__(
        self,
        ws: Workspace,
        *,
        settle_s: float | None = None,
        sync: Callable[..., Any] | None = None,
    ) -> None:
        self.ws = ws
        self.file = ws.path / WATCHED_FILE
        self.settle_s = settle_s
        self._sync = sync
        self._lock = threading.RLock()
        self.watcher: FolderWatcher | None = None
        self.states: dict[str, FolderState] = {}
        self.log: deque[str] = deque(maxlen=20)
        data = self._load()
        self.folders: list[str] = [str(f) for f in data.get("folders", [])]
        self.prune: bool = bool(data.get("prune", False))

    # -- the list, on disk ---------------------------------------------------------------

    def _load(self) -> dict:
        try:
            data = json.loads(self.file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            self.log.append(f"{self.file} could not be read ({exc}); starting with no folders")
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self) -> None:
        """Written whole to a temporary file, then renamed: a crash keeps the old list."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_name(self.file.name + ".tmp")
        tmp.write_text(
            json.dumps({"folders": self.folders, "prune": self.prune}, indent=2),
            encoding="utf-8",
        )
        os.replace(tmp, self.file)

    def add(self, folder: str) -> str:
        """Watch one more folder (validated: exists, is a folder, readable); its path."""
        if not (folder or "").strip():
            raise UsageError("Type the path of a folder to watch.")
        path = str(check_folder(folder.strip()))
        if path == str(self.ws.path.resolve()) or Path(path) in self.ws.path.resolve().parents:
            raise UsageError(f"{path} holds the collection itself; watch a folder of documents.")
        with self._lock:
            if path in self.folders:
                raise UsageError(f"{path} is watched already.")
            self.folders.append(path)
            self._save()
            self.restart()
        return path

    def remove(self, folder: str) -> None:
        """Stop watching a folder (its documents stay in the collection)."""
        with self._lock:
            if folder not in self.folders:
                raise UsageError(f"{folder} is not watched.")
            self.folders.remove(folder)
            self.states.pop(folder, None)
            self._save()
            self.restart()

    def set_prune(self, prune: bool) -> None:
        """Whether a deleted file's document leaves the collection too."""
        with self._lock:
            if prune != self.prune:
                self.prune = prune
                self._save()

    # -- the watcher ---------------------------------------------------------------------

    def start(self) -> None:
        """Start watching the listed folders that exist (once; later calls do nothing)."""
        with self._lock:
            if self.watcher is not None:
                return
            present = []
            for folder in self.folders:
                try:
                    present.append(check_folder(folder))
                except UsageError as exc:  # unmounted, renamed: say so, watch the rest
                    self.states.setdefault(folder, FolderState()).error = str(exc)
            if not present:
                return
            try:
                self.watcher = FolderWatcher(
                    present, self._sync_once, settle_s=self.settle_s, on_status=self._note
                ).start()
            except (OSError, PageLensError) as exc:  # no observer could start: say why
                for path in present:
                    self.states.setdefault(str(path), FolderState()).error = f"cannot watch: {exc}"

    def stop(self, timeout: float | None = 30.0) -> None:
        with self._lock:
            watcher, self.watcher = self.watcher, None
        if watcher is not None:
            watcher.stop(timeout)

    def restart(self) -> None:
        """After the list changed: a new watcher (which syncs every folder once)."""
        self.stop(timeout=5.0)
        self.start()

    def _note(self, line: str) -> None:
        self.log.append(f"{time.strftime('%H:%M:%S')} {line}")

    def _sync_once(self, folders: list[Path]) -> dict[str, int]:
        """Each folder on its own (its own counts and error); any failure is raised after
        the others synced, so that the watcher retries."""
        totals: dict[str, int] = {}
        failed = []
        for folder in folders:
            state = self.states.setdefault(str(folder), FolderState())
            try:
                report = self.ws.sync_folder(folder, prune=self.prune, sync=self._sync)
            except Exception as exc:  # a dead server, a vanished folder: shown per folder
                state.error = str(exc) or type(exc).__name__
                failed.append(f"{folder.name}: {state.error}")
                continue
            state.counts = report_counts(report)
            state.last_sync_at = time.time()
            unfinished = list(getattr(report, "errors", None) or [])
            state.error = "not finished: " + "; ".join(unfinished) if unfinished else None
            if unfinished:
                failed.append(f"{folder.name}: {state.error}")
            for key, n in state.counts.items():
                totals[key] = totals.get(key, 0) + n
        if failed:
            raise PageLensError("; ".join(failed))
        return totals

    def status(self) -> list[dict[str, Any]]:
        """Per folder: path, last sync, counts, settling files, error (the panel's rows)."""
        watched = self.watcher.status() if self.watcher is not None else None
        rows = []
        for folder in list(self.folders):
            state = self.states.get(folder, FolderState())
            settling = [
                s for s in (watched.settling if watched else ()) if s.startswith(folder + os.sep)
            ]
            rows.append(
                {
                    "folder": folder,
                    "last_sync_at": state.last_sync_at,
                    "counts": state.counts,
                    "settling": settling,
                    "syncing": bool(watched and watched.syncing),
                    "error": state.error,
                }
            )
        return rows

    @property
    def syncs(self) -> int:
        """Batches applied by the current watcher (a change tells the page to refresh)."""
        return self.watcher.syncs if self.watcher is not None else 0

    @property
    def busy(self) -> bool:
        """Something is settling or syncing (the panel refreshes itself meanwhile)."""
        watched = self.watcher.status() if self.watcher is not None else None
        return bool(watched and (watched.settling or watched.syncing))
