"""``FolderWatcher`` (``pagelens sync --watch``): settle, batch, prune, restart, ignore.

The timing rules are driven by an injected clock (no sleeps); the same watcher is then run
for real with watchdog on a temporary folder, a real collection and ``FakeEmbedder``
counting its calls.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from indexer.errors import UsageError
from indexer.model.fake import FakeEmbedder
from indexer.stores import open_collection
from indexer.sync import FolderWatcher, is_ignored_name, sync_folders
from tests.support.pdfs import TOPICS, make_text_pdf


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Recorder:
    """A ``sync_once`` that records its calls (and can fail the first ``fail`` of them)."""

    def __init__(self, fail: int = 0) -> None:
        self.calls: list[list[Path]] = []
        self.fail = fail

    def __call__(self, folders: list[Path]) -> dict:
        self.calls.append(list(folders))
        if len(self.calls) <= self.fail:
            raise ConnectionError("Milvus at 127.0.0.1:1 does not answer")
        return {
            "added": [],
            "changed": [],
            "moved": [],
            "removed": [],
            "missing": [],
            "unchanged": 0,
        }


def clocked(folder: Path, sync: Recorder, **kw) -> tuple[FolderWatcher, Clock, list[str]]:
    clock, lines = Clock(), []
    watcher = FolderWatcher([folder], sync, settle_s=1.0, clock=clock, on_status=lines.append, **kw)
    assert watcher.tick(), "the first tick syncs every folder (a restart re-syncs)"
    assert sync.calls == [[folder.resolve()]]
    return watcher, clock, lines


def test_ignored_names() -> None:
    for name in ["a.pdf.crdownload", "a.pdf.part", "~$report.docx", ".a.pdf.swp", ".hidden",
                 "notes.txt~", "#draft.md#", "x.tmp"]:  # fmt: skip
        assert is_ignored_name(name), name
    for name in ["a.pdf", "report.docx", "scan.PNG", "part.pdf", "my~file.pdf"]:
        assert not is_ignored_name(name), name


def test_a_file_syncs_only_after_it_stopped_changing(tmp_path: Path) -> None:
    sync = Recorder()
    watcher, clock, lines = clocked(tmp_path, sync)
    doc = tmp_path / "a.pdf"
    doc.write_bytes(b"%PDF-1.7 part one")
    watcher.notice(doc)
    clock.now += 0.6
    assert not watcher.tick()
    assert any("waiting for 1 file(s) to settle: a.pdf" in line for line in lines)
    assert watcher.status().settling == (str(doc),)
    with doc.open("ab") as f:  # written again, without an event: the stat sees it
        f.write(b" and part two")
    clock.now += 0.6
    assert not watcher.tick()  # its wait restarted
    clock.now += 0.6
    assert not watcher.tick()
    clock.now += 0.5
    assert watcher.tick()
    assert len(sync.calls) == 2 and watcher.status().settling == ()
    assert "synced" in lines[-1] and "0 unchanged" in lines[-1]
    clock.now += 5
    assert not watcher.tick(), "nothing new: no sync"


def test_a_burst_is_one_sync(tmp_path: Path) -> None:
    sync = Recorder()
    watcher, clock, _ = clocked(tmp_path, sync)
    for i in range(10):
        path = tmp_path / "sub" / f"{i}.pdf"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"%PDF" * (i + 1))
        watcher.notice(path)
        clock.now += 0.1
        assert not watcher.tick()
    clock.now += 1.0
    assert watcher.tick()
    assert len(sync.calls) == 2
    assert len(watcher.status().settling) == 0


def test_temp_and_partial_names_wake_nothing(tmp_path: Path) -> None:
    sync = Recorder()
    watcher, clock, _ = clocked(tmp_path, sync)
    for name in ["a.pdf.crdownload", "~$b.docx", ".c.pdf.swp", ".git/x.pdf"]:
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"x")
        watcher.notice(path)
    watcher.notice(tmp_path.parent / "elsewhere.pdf")  # outside the watched folder
    (tmp_path / "collection").mkdir()
    watcher.exclude = [tmp_path / "collection"]
    watcher.notice(tmp_path / "collection" / "catalog.sqlite")  # the collection's own write
    clock.now += 5
    assert not watcher.tick() and len(sync.calls) == 1
    # The download completes: renamed to its real name, which is synced.
    os.replace(tmp_path / "a.pdf.crdownload", tmp_path / "a.pdf")
    watcher.notice(tmp_path / "a.pdf")
    clock.now += 1.1
    assert watcher.tick() and len(sync.calls) == 2


def test_a_failed_sync_is_retried_and_never_stops_the_watcher(tmp_path: Path) -> None:
    sync = Recorder(fail=2)
    clock, lines = Clock(), []
    watcher = FolderWatcher([tmp_path], sync, settle_s=1.0, clock=clock, on_status=lines.append)
    assert watcher.tick()  # the start sync fails...
    assert "does not answer" in (watcher.status().error or "")
    assert "retrying in 5 s" in lines[-1]
    clock.now += 2
    assert not watcher.tick()  # ...waits its retry time...
    clock.now += 3.5
    assert watcher.tick() and watcher.status().error  # ...fails again...
    clock.now += 5.5
    assert watcher.tick()  # ...and succeeds
    status = watcher.status()
    assert status.error is None and status.syncs == 1 and len(sync.calls) == 3


def test_a_folder_must_exist_and_be_one(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such folder"):
        FolderWatcher([tmp_path / "nope"], Recorder())
    (tmp_path / "f.pdf").write_bytes(b"x")
    with pytest.raises(UsageError, match="not a folder"):
        FolderWatcher([tmp_path / "f.pdf"], Recorder())


# -- for real: watchdog, a collection, FakeEmbedder --------------------------------------


class CountingEmbedder(FakeEmbedder):
    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def embed_images(self, images, **kw):  # type: ignore[override]
        self.images += len(images)
        return super().embed_images(images, **kw)


class MiniSync:
    """``sync_once`` for the watcher: the one-shot sync (:func:`indexer.sync.sync_folders`)
    into a real collection, recording when each call ran and what it added and removed."""

    def __init__(self, store, embedder, *, prune: bool = False) -> None:
        self.store, self.embedder, self.prune = store, embedder, prune
        self.calls: list[tuple[float, list[str], list[str]]] = []

    def __call__(self, folders: list[Path]) -> dict:
        report = sync_folders(self.store, self.embedder, folders, prune=self.prune)
        self.calls.append((time.monotonic(), report.added, report.removed))
        return report


def wait_for(condition, timeout: float = 15.0) -> float:
    """Poll until ``condition()``; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(0.05)
    raise AssertionError("timed out")


@pytest.fixture
def watched(tmp_path: Path):
    folder = tmp_path / "watched"
    folder.mkdir()
    store = open_collection(tmp_path / "collection")
    embedder = CountingEmbedder()
    yield folder, store, embedder
    store.close()


def test_a_slowly_copied_file_is_indexed_once_after_its_last_write(watched, tmp_path) -> None:
    folder, store, embedder = watched
    source = make_text_pdf(tmp_path / "src.pdf", TOPICS[:2])
    data = source.read_bytes()
    sync = MiniSync(store, embedder)
    lines: list[str] = []
    with FolderWatcher([folder], sync, settle_s=1.0, on_status=lines.append):
        wait_for(lambda: sync.calls)  # the start sync
        target = folder / "slow.pdf"
        chunks = [data[i : i + len(data) // 6 + 1] for i in range(0, len(data), len(data) // 6 + 1)]
        with target.open("wb") as f:
            for chunk in chunks:  # ~2 s of writing, pauses well under the settle time
                f.write(chunk)
                f.flush()
                time.sleep(0.35)
        last_write = time.monotonic()
        indexed = wait_for(lambda: store.stats().documents == 1)
        time.sleep(1.5)  # anything that would sync it again would have by now
    assert indexed - last_write < 5.0
    added = [(t, a) for t, a, _ in sync.calls if a]
    assert len(added) == 1 and added[0][1] == [str(target)]
    assert all(t >= last_write for t, _, _ in sync.calls[1:]), "synced while being written"
    assert embedder.images == 2, "each page embedded once"
    assert any(line.startswith("synced watched: 1 added") for line in lines), lines


def test_a_copied_folder_is_few_syncs_and_a_deleted_file_is_pruned(watched, tmp_path) -> None:
    folder, store, embedder = watched
    sources = [
        make_text_pdf(tmp_path / "src" / f"{i}.pdf", [f"{TOPICS[i % 5]} (copy {i})"])
        for i in range(10)
    ]
    sync = MiniSync(store, embedder, prune=True)
    with FolderWatcher([folder], sync, settle_s=1.0):
        wait_for(lambda: sync.calls)
        for src in sources:
            (folder / src.name).write_bytes(src.read_bytes())
        wait_for(lambda: store.stats().documents == 10)
        assert len(sync.calls) - 1 <= 2, sync.calls
        (folder / "3.pdf").unlink()
        wait_for(lambda: store.stats().documents == 9)
    assert sync.calls[-1][2] == [str(folder / "3.pdf")]
    assert embedder.images == 10


def test_a_restart_syncs_what_changed_meanwhile(watched) -> None:
    folder, store, embedder = watched
    make_text_pdf(folder / "before.pdf", [TOPICS[0]])
    sync = MiniSync(store, embedder)
    with FolderWatcher([folder], sync, settle_s=0.5):
        wait_for(lambda: store.stats().documents == 1)
    make_text_pdf(folder / "while-stopped.pdf", [TOPICS[1]])
    with FolderWatcher([folder], sync, settle_s=0.5):
        wait_for(lambda: store.stats().documents == 2)
    assert sorted(Path(d.path).name for d in store.documents()) == [
        "before.pdf",
        "while-stopped.pdf",
    ]


def test_polling_takes_over_when_native_watching_cannot_start(watched, monkeypatch) -> None:
    import watchdog.observers

    class Exhausted(watchdog.observers.Observer):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            raise OSError(28, "inotify watch limit reached")

    monkeypatch.setattr(watchdog.observers, "Observer", Exhausted)
    folder, store, embedder = watched
    sync = MiniSync(store, embedder)
    with FolderWatcher([folder], sync, settle_s=0.5) as watcher:
        assert watcher.status().observer == "polling"
        wait_for(lambda: sync.calls)
        make_text_pdf(folder / "a.pdf", [TOPICS[0]])
        wait_for(lambda: store.stats().documents == 1)


# -- the app's service: the watched folders of a collection ------------------------------


def test_the_apps_watched_folders_persist_sync_and_show_pending(tmp_path: Path) -> None:
    from app.web.services import ModelLoader, Workspace
    from app.web.watching import WATCHED_FILE, WatchedFolders

    folder = tmp_path / "docs"
    folder.mkdir()
    ws = Workspace(tmp_path / "collection", ModelLoader(loader=lambda *a, **k: FakeEmbedder()))
    watched = WatchedFolders(ws, settle_s=1.0)
    watched.start()
    assert watched.watcher is None and watched.status() == []
    for bad, why in [
        (str(tmp_path / "nope"), "no such folder"),
        (str(make_text_pdf(tmp_path / "f.pdf", [TOPICS[0]])), "not a folder"),
        ("  ", "Type the path"),
        (str(tmp_path), "holds the collection"),
    ]:
        with pytest.raises(UsageError, match=why):
            watched.add(bad)
    try:
        assert watched.add(str(folder)) == str(folder.resolve())
        with pytest.raises(UsageError, match="watched already"):
            watched.add(str(folder))
        assert '"folders"' in (ws.path / WATCHED_FILE).read_text()
        wait_for(lambda: watched.syncs == 1)  # the start sync of the new folder
        data = make_text_pdf(tmp_path / "src.pdf", TOPICS[:2]).read_bytes()
        with (folder / "a.pdf").open("wb") as f:
            f.write(data[:100])
            f.flush()
            wait_for(lambda: watched.status()[0]["settling"] == [str(folder / "a.pdf")])
            f.write(data[100:])
        wait_for(lambda: ws.store.stats().documents == 1)
        row = wait_for_row(watched, lambda r: r["counts"] and r["counts"].get("added") == 1)
        assert row["last_sync_at"] and row["error"] is None
        ws.job.stop(timeout=30)
        again = WatchedFolders(ws)  # the next process reads the list
        assert again.folders == [str(folder.resolve())] and not again.prune
        watched.set_prune(True)
        watched.remove(str(folder.resolve()))
        assert watched.watcher is None and watched.status() == []
        assert WatchedFolders(ws).folders == [] and WatchedFolders(ws).prune
    finally:
        watched.stop()


def wait_for_row(watched, condition) -> dict:
    found: list[dict] = []

    def check() -> bool:
        found[:] = [r for r in watched.status() if condition(r)]
        return bool(found)

    wait_for(check)
    return found[0]


# -- the command: pagelens sync --watch --prune, in its own process ----------------------


class Lines:
    """A process's stderr lines, read as they come, each with the monotonic time it came."""

    def __init__(self, stream) -> None:
        self.lines: list[tuple[float, str]] = []
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def matching(self, text: str) -> list[tuple[float, str]]:
        return [(t, line) for t, line in list(self.lines) if text in line]

    def text(self) -> str:
        return "\n".join(line for _, line in self.lines)


def test_the_command_indexes_a_slow_copy_once_and_prunes_its_deletion(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    folder, coll = tmp_path / "watched", tmp_path / "collection"
    folder.mkdir()
    data = make_text_pdf(tmp_path / "src.pdf", TOPICS[:2]).read_bytes()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "PAGELENS_WATCH_SETTLE": "1"}
    env["PAGELENS_IMAGE_TOKENS"] = "16"  # small pages: the tiny model embeds them quickly
    args = ["--collection", str(coll), "--model", str(tiny_model_dir), "--device", "cpu"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args, "sync", str(folder), "--watch", "--prune"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=root,
    )
    err = Lines(proc.stderr)
    try:
        wait_for(lambda: err.matching("synced watched") or proc.poll() is not None, 180)
        assert proc.poll() is None, err.text()
        target = folder / "slow.pdf"
        step = len(data) // 6 + 1
        with target.open("wb") as f:
            for i in range(0, len(data), step):  # ~2 s of writing, pauses under 1 s
                f.write(data[i : i + step])
                f.flush()
                time.sleep(0.35)
        last_write = time.monotonic()
        store = open_collection(coll, create=False)
        try:
            # Stored (pages and text: searchable), then embedded, within 5 s of its last write.
            stored = wait_for(lambda: store.stats().documents == 1, 30)
            wait_for(lambda: err.matching("synced watched: 1 added"), 60)
            synced = err.matching("synced watched: 1 added")[0][0]  # when it was printed
            print(f"stored {stored - last_write:.2f} s, embedded {synced - last_write:.2f} s")
            assert synced - last_write < 5.0, err.text()
            time.sleep(1.5)  # anything that would sync it again would have by now
            stats = store.stats()
            assert (stats.documents, stats.pages, stats.pending) == (1, 2, 0), err.text()
        finally:
            store.close()
        assert len(err.matching(f"added    {target}")) == 1, err.text()
        assert not err.matching("refused") and len(err.matching("added    ")) == 1

        target.unlink()
        wait_for(lambda: err.matching(f"removed  {target}"), 30)
        store = open_collection(coll, create=False)
        try:
            assert store.stats().documents == 0
        finally:
            store.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
    assert code == 0, err.text()
    assert err.matching("stopped")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_watch_loop_ends_cleanly_on_ctrl_c_and_sigterm(tmp_path: Path, sig) -> None:
    from app.cli.common import Options
    from app.cli.watching import watch_folders

    sync = Recorder()
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), sig)).start()
    watch_folders(Options(), [tmp_path], prune=False, sync_once=sync)  # returns: exit 0
    assert sync.calls == [[tmp_path.resolve()]]
    assert signal.getsignal(signal.SIGTERM) == before


def test_watch_refuses_dry_run_json_and_a_missing_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from app.cli import cli

    for extra in ("--dry-run", "--json"):
        result = CliRunner().invoke(cli, ["sync", str(tmp_path), "--watch", extra])
        assert result.exit_code == 2 and "--watch" in result.output, result.output
    result = CliRunner().invoke(cli, ["sync", str(tmp_path / "gone"), "--watch"])
    assert result.exit_code == 2 and "no such folder" in result.output, result.output
