"""Watching folders: apply changes as they happen, once each file is complete.

A file being copied, downloaded or saved is seen many times while it grows; reading it
then would index half a document (and again, and again). So a touched path waits until its
size and modification time have stayed the same for a settle time
(``PAGELENS_WATCH_SETTLE``, default 1 s), and a burst (a folder of files copied at once)
waits until every touched path has settled, then goes in as one call of the injected
``sync_once(folders)``: the one-shot sync compares the folders with the collection, so the
watcher never needs to know what changed, only when it is safe to look.

Events come from watchdog's native observer (inotify, FSEvents, Windows); where that cannot
start (e.g. the inotify watch limit) a polling observer takes over. The watcher syncs every
folder once at start, so changes made while it was not running are applied too. A failed
sync (a server that stopped answering) is logged and retried; it never stops the watcher.

The timing logic (:meth:`FolderWatcher.notice`, :meth:`FolderWatcher.tick`) runs without
threads or sleeps under an injected clock; :meth:`FolderWatcher.start` adds the observer
and one worker thread that ticks.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer import config
from indexer.config import WATCH_SETTLE_ENV
from indexer.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_SETTLE_S = 1.0
#: A path still changing after this many settle times is synced with the rest anyway: a log
#: that never stops growing must not hold back every other file (it is read again later).
MAX_HOLD_SETTLES = 30
#: Seconds before a failed sync is tried again (when no new change comes first).
RETRY_S = 5.0

# Names of files that are not (yet) documents: editor swap and backup files, Office's lock
# files, browsers' partial downloads, dot-files (hidden, and most tools' temp files).
_TEMP_PREFIXES = (".", "~$", "#")
_TEMP_SUFFIXES = (
    ".crdownload",
    ".part",
    ".partial",
    ".download",
    ".tmp",
    ".temp",
    ".swp",
    ".swo",
    ".swx",
    "~",
)
# Event kinds that may change what a folder holds (opening or reading a file does not: the
# sync's own reads must not wake the watcher).
_CHANGES = {"created", "deleted", "modified", "moved", "closed"}

SyncOnce = Callable[[list[Path]], Any]


def is_ignored_name(name: str) -> bool:
    """True for a file name the watcher never waits for (temp, partial, lock, dot-files)."""
    lower = name.lower()
    return lower.startswith(_TEMP_PREFIXES) or lower.endswith(_TEMP_SUFFIXES)


def settle_seconds() -> float:
    """The configured settle time (``PAGELENS_WATCH_SETTLE``), a clear error if negative."""
    value = config.get_float(WATCH_SETTLE_ENV, DEFAULT_SETTLE_S)
    if value < 0:
        raise UsageError(f"{WATCH_SETTLE_ENV} must be 0 or more seconds, not {value:g}.")
    return value


#: The counts a batch line and the app show, in this order (the keys of ``SyncReport``).
COUNT_KEYS = ("added", "changed", "moved", "removed", "missing", "refused", "partial")


def report_counts(report: Any) -> dict[str, int]:
    """The counts of a sync report (``SyncReport`` or its ``as_dict()``): its lists' lengths
    and ``unchanged``."""
    data = report.as_dict() if hasattr(report, "as_dict") else report
    if not isinstance(data, dict):
        return {}
    counts = {k: len(data[k]) for k in COUNT_KEYS if isinstance(data.get(k), list | tuple)}
    counts["unchanged"] = int(data.get("unchanged") or 0)
    return counts


def describe_counts(counts: dict[str, int]) -> str:
    """``2 added, 1 removed, 7 unchanged``: the non-zero counts (unchanged always)."""
    parts = [f"{n} {k}" for k, n in counts.items() if n and k != "unchanged"]
    parts.append(f"{counts.get('unchanged', 0)} unchanged")
    return ", ".join(parts)


@dataclass(frozen=True)
class WatchStatus:
    """What the watcher is doing, for a status line or the app's panel."""

    folders: tuple[str, ...]
    settling: tuple[str, ...]  # touched paths that have not settled yet (or wait their batch)
    syncing: bool
    syncs: int  # syncs applied since start
    last_sync_at: float | None  # wall-clock time of the last applied sync
    last_counts: dict[str, int] | None
    error: str | None  # the last sync's failure, until one succeeds
    observer: str  # "native", "polling", or "stopped"


@dataclass
class _Touched:
    key: tuple[int, int] | None  # (size, mtime_ns), None when the path is gone
    since: float  # clock time of its last change


def _stat_key(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


class FolderWatcher:
    """Watches ``folders`` and calls ``sync_once(folders)`` once their changes settle.

    ``on_status`` receives one line per applied batch (counts) and per new wait (what is
    settling); ``clock`` is injectable so that tests drive :meth:`tick` without sleeping;
    ``exclude``: paths whose changes are not the folders' (the collection's own folder).
    """

    def __init__(
        self,
        folders: Iterable[str | os.PathLike[str]],
        sync_once: SyncOnce,
        *,
        settle_s: float | None = None,
        on_status: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        retry_s: float = RETRY_S,
        polling: bool = False,
        exclude: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        self.folders = [check_folder(f) for f in folders]
        if not self.folders:
            raise UsageError("Name at least one folder to watch.")
        # Changes under these never wake the watcher: a collection kept inside a watched
        # folder would otherwise see its own writes and sync forever.
        self.exclude = [Path(p).expanduser().resolve() for p in exclude]
        self.settle_s = settle_seconds() if settle_s is None else settle_s
        self.retry_s = retry_s
        self._sync_once = sync_once
        self._say = on_status or (lambda line: log.info("%s", line))
        self._clock = clock
        self._polling = polling
        self._lock = threading.Lock()
        self._pending: dict[Path, _Touched] = {}
        self._due: set[Path] = set(self.folders)  # re-sync everything on start
        self._burst_since: float | None = None
        self._retry_at = 0.0
        self._announced: frozenset[Path] = frozenset()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._observer: Any = None
        self.observer_kind = "stopped"
        self.syncing = False
        self.syncs = 0
        self.last_sync_at: float | None = None
        self.last_counts: dict[str, int] | None = None
        self.error: str | None = None

    # -- events ------------------------------------------------------------------------

    def _root_of(self, path: Path) -> Path | None:
        for root in self.folders:
            if path == root or root in path.parents:
                return root
        return None

    def notice(self, path: str | os.PathLike[str] | bytes) -> None:
        """A path changed (an observer's event): it waits to settle, its folder is due."""
        p = Path(os.fsdecode(path))
        root = self._root_of(p)
        if root is None or any(is_ignored_name(part) for part in p.relative_to(root).parts):
            return
        if any(p == x or x in p.parents for x in self.exclude):
            return
        now = self._clock()
        with self._lock:
            entry = self._pending.get(p)
            if entry is None:
                self._pending[p] = _Touched(_stat_key(p), now)
            else:
                entry.key, entry.since = _stat_key(p), now
            self._due.add(root)
            if self._burst_since is None:
                self._burst_since = now
        self._wake.set()

    # -- timing ------------------------------------------------------------------------

    def _unsettled(self, now: float) -> list[Path]:
        """Re-stat every touched path (a change restarts its wait); those still waiting."""
        waiting = []
        for path, entry in self._pending.items():
            key = _stat_key(path)
            if key != entry.key:
                entry.key, entry.since = key, now
            if now - entry.since < self.settle_s:
                waiting.append(path)
        return waiting

    def tick(self) -> bool:
        """Sync the due folders if nothing touched is still settling; True if it synced."""
        now = self._clock()
        with self._lock:
            waiting = self._unsettled(now)
            if not self._due or now < self._retry_at:
                return False
            held = self._burst_since is not None and (
                now - self._burst_since >= MAX_HOLD_SETTLES * max(self.settle_s, 0.1)
            )
            if waiting and not held:
                self._announce(waiting)
                return False
            folders = sorted(self._due)
            self._due.clear()
            self._pending = {p: e for p, e in self._pending.items() if p in waiting}
            self._burst_since = now if waiting else None
            self._announced = frozenset()
        self._run(folders)
        return True

    def _announce(self, waiting: list[Path]) -> None:
        """One line when the set of settling paths grows (not one per tick)."""
        fresh = frozenset(waiting)
        if fresh <= self._announced:
            return
        self._announced = fresh
        names = ", ".join(p.name for p in sorted(fresh)[:5])
        more = f" and {len(fresh) - 5} more" if len(fresh) > 5 else ""
        self._say(f"waiting for {len(fresh)} file(s) to settle: {names}{more}")

    def _run(self, folders: list[Path]) -> None:
        self.syncing = True
        started = self._clock()
        try:
            report = self._sync_once(folders)
        except Exception as exc:  # a dead server, a full disk: say it, retry, keep watching
            self.error = str(exc) or type(exc).__name__
            log.warning("sync of %s failed: %s", ", ".join(map(str, folders)), self.error)
            with self._lock:
                self._due.update(folders)
                self._retry_at = self._clock() + self.retry_s
            self._say(f"sync failed ({self.error}); retrying in {self.retry_s:g} s")
            return
        finally:
            self.syncing = False
        self.error = None
        self.syncs += 1
        self.last_sync_at = time.time()
        self.last_counts = report_counts(report)
        seconds = self._clock() - started
        where = folders[0].name if len(folders) == 1 else f"{len(folders)} folders"
        self._say(f"synced {where}: {describe_counts(self.last_counts)} ({seconds:.1f} s)")

    def status(self) -> WatchStatus:
        with self._lock:
            settling = tuple(str(p) for p in sorted(self._pending))
        return WatchStatus(
            folders=tuple(str(f) for f in self.folders),
            settling=settling,
            syncing=self.syncing,
            syncs=self.syncs,
            last_sync_at=self.last_sync_at,
            last_counts=self.last_counts,
            error=self.error,
            observer=self.observer_kind,
        )

    # -- threads -----------------------------------------------------------------------

    def start(self) -> FolderWatcher:
        """Start the observer and the worker thread (which first syncs every folder)."""
        if self._thread is not None:
            return self
        self._observer, self.observer_kind = _start_observer(
            self.folders, self.notice, polling=self._polling
        )
        self._thread = threading.Thread(target=self._loop, name="pagelens-watch", daemon=True)
        self._thread.start()
        where = ", ".join(map(str, self.folders))
        self._say(f"watching {where} ({self.observer_kind}; settle {self.settle_s:g} s)")
        return self

    def _loop(self) -> None:
        interval = max(0.05, min(0.25, self.settle_s / 4))
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # a bug here must not end the watching silently
                log.exception("the folder watcher's tick failed")
            self._wake.wait(interval)
            self._wake.clear()

    def stop(self, timeout: float | None = 30.0) -> bool:
        """Stop watching (after a sync in progress ends); True once the worker has ended."""
        self._stop.set()
        self._wake.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout)
            self._observer = None
        self.observer_kind = "stopped"
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def __enter__(self) -> FolderWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_folder(folder: str | os.PathLike[str]) -> Path:
    """A folder to watch, absolute; a clear error unless it exists, is one, and is readable."""
    path = Path(folder).expanduser()
    if not path.exists():
        raise UsageError(f"{path}: no such folder.")
    if not path.is_dir():
        raise UsageError(f"{path}: not a folder (watch the folder that holds it).")
    if not os.access(path, os.R_OK | os.X_OK):
        raise UsageError(f"{path}: not readable by this user.")
    return path.resolve()


def _start_observer(
    folders: list[Path], notice: Callable[[str | bytes], None], *, polling: bool
) -> tuple[Any, str]:
    """watchdog's native observer, or its polling one where the native cannot start."""
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type not in _CHANGES:
                return
            if event.is_directory and event.event_type == "modified":
                return  # a file inside changed: that file has its own event
            notice(event.src_path)
            if event.dest_path:
                notice(event.dest_path)

    kinds = [("polling", PollingObserver)] if polling else [("native", Observer)]
    kinds += [] if polling else [("polling", PollingObserver)]
    for n, (kind, make) in enumerate(kinds):
        observer = make()
        try:
            for folder in folders:
                observer.schedule(Handler(), str(folder), recursive=True)
            observer.start()
        except OSError as exc:  # e.g. inotify's watch or instance limit
            if n + 1 == len(kinds):
                raise
            log.warning("native file watching unavailable (%s): polling instead", exc)
            continue
        return observer, kind
    raise AssertionError("unreachable")
