"""Two real processes indexing into one collection are serialised by the write lock, and
searches (in-process and through the CLI) keep working while an index job runs."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

from indexer.maintenance.check import check
from indexer.store import Collection
from tests.support.pdfs import TOPICS, make_text_pdf

ROOT = Path(__file__).resolve().parent.parent
WORKER = ROOT / "tests" / "support" / "crash_worker.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _readline(stream, timeout: float) -> str:
    """One line from a pipe, or "" after ``timeout`` seconds."""
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    try:
        return stream.readline() if sel.select(timeout) else ""
    finally:
        sel.close()


def _wait_for(stream, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        line = _readline(stream, deadline - time.monotonic())
        if not line:
            break
        seen.append(line)
        if prefix in line:
            return line
    raise AssertionError(f"no {prefix!r} within {timeout}s; got {seen}")


def _cli(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=ENV,
        **kwargs,
    )


def test_two_indexers_are_serialised_and_readers_never_wait(tmp_path):
    coll = tmp_path / "coll"
    alpha = make_text_pdf(tmp_path / "alpha.pdf", [f"Alpha {i}. {TOPICS[i]}" for i in range(8)])
    beta = make_text_pdf(tmp_path / "beta.pdf", [f"Beta {i}. {TOPICS[i + 3]}" for i in range(4)])
    gamma = make_text_pdf(tmp_path / "gamma.pdf", ["Gamma. " + TOPICS[11]])

    # Process A takes the lock and stops half-way through alpha (4 pages committed).
    a = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "index",
            str(coll),
            str(tmp_path / "a.log"),
            str(alpha),
            str(beta),
            "--pause-at",
            "render:6",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=ENV,
    )
    b = None
    try:
        _wait_for(a.stdout, "PAUSED", 60)

        # Readers need no lock: this process, and a CLI search in another process.
        store = Collection(coll)
        assert store.stats().pages == 4
        assert store.search_text("Alpha", 10)
        store.close()
        search = _cli("--collection", str(coll), "search", "Westphalia", "--mode", "text", "--json")
        out, err = search.communicate(timeout=60)
        assert search.returncode == 0, err
        assert json.loads(out)["hits"][0]["page"] == 2

        # Process B (the real CLI) waits for the lock and says so.
        b = _cli("--collection", str(coll), "index", "--text-only", "--json", str(beta), str(gamma))
        line = _wait_for(b.stderr, "waiting for another process indexing into", 60)
        assert str(coll) in line
        time.sleep(0.5)
        assert b.poll() is None  # still waiting: nothing written by B yet
        store = Collection(coll)
        assert sorted(d.name for d in store.documents()) == ["alpha.pdf"]
        store.close()

        a.send_signal(signal.SIGUSR1)  # let A finish
        a_out, a_err = a.communicate(timeout=120)
        assert a.returncode == 0, a_err[-2000:]
        b_out, b_err = b.communicate(timeout=120)
        assert b.returncode == 0, b_err[-2000:]
    finally:
        for proc in (a, b):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()

    a_report = json.loads(a_out.strip().splitlines()[-1])["report"]
    assert [f["status"] for f in a_report["files"]] == ["added", "added"]
    b_files = {Path(f["path"]).name: f["status"] for f in json.loads(b_out)["files"]}
    assert b_files == {"beta.pdf": "skipped", "gamma.pdf": "added"}  # B saw A's work

    store = Collection(coll)
    try:
        docs = {d.name: d for d in store.documents()}
        assert sorted(docs) == ["alpha.pdf", "beta.pdf", "gamma.pdf"]
        assert [docs[n].page_count for n in sorted(docs)] == [8, 4, 1]
        assert store.stats().pages == 13
        assert store.stats().pending == 1  # gamma was indexed text-only by B
        assert check(store).kinds() == {"vectors-pending"}
    finally:
        store.close()
