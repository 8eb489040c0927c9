"""kill -9 at any moment of indexing: the collection opens, searches what was committed, and
the same command finishes the job without redoing committed pages and without duplicates.

Each test runs a real indexing process (tests/support/crash_worker.py: the real Indexer and store,
the fake embedder, small pages) and SIGKILLs it at a chosen point: while a page is being
rendered, between writing a page image and committing its row, after the model returned
vectors but before they are committed, and while the FAISS file is being saved; and at
fixed moments of a slowed run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from indexer.maintenance.check import check
from indexer.store import PAGES_DIR, VECTORS, Collection
from tests.support.pdfs import TOPICS, make_image_only_pdf, make_png, make_text_pdf

WORKER = Path(__file__).parent / "support" / "crash_worker.py"
ROOT = WORKER.parents[2]

#: Problems a crash may leave (all harmless: the cache lags, a half-written image, a
#: document to finish, pages to embed). Anything else is a bug.
CRASH_LEFTOVERS = {"faiss-missing-ids", "orphan-files", "document-stuck", "vectors-pending"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[list[Path], dict[str, int]]:
    folder = tmp_path_factory.mktemp("crash-inputs")
    files = [
        make_text_pdf(folder / "alpha.pdf", [f"{i}. {TOPICS[i % 12]}" for i in range(9)]),
        make_text_pdf(folder / "beta.pdf", [f"Beta {i}: {TOPICS[(i + 5) % 12]}" for i in range(5)]),
        make_image_only_pdf(folder / "scan.pdf", n=3),
        make_png(folder / "photo.png", size=(300, 200)),
    ]
    return files, {"alpha.pdf": 9, "beta.pdf": 5, "scan.pdf": 3, "photo.png": 1}


def _start(coll: Path, log: Path, files: list[Path], *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(WORKER), "index", str(coll), str(log), *map(str, files), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _kill_at(coll: Path, log: Path, files: list[Path], point: str) -> None:
    proc = _start(coll, log, files, "--pause-at", point)
    try:
        line = proc.stdout.readline()
        if line.startswith("STARTED"):
            line = proc.stdout.readline()
        assert line.startswith("PAUSED"), (line, proc.stderr.read() if proc.poll() else "")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _finish(coll: Path, log: Path, files: list[Path]) -> dict:
    proc = _start(coll, log, files)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])["report"]


def _image_files(coll: Path) -> set[str]:
    root = coll / PAGES_DIR
    return (
        {p.relative_to(coll).as_posix() for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def _assert_consistent_after_crash(coll: Path) -> dict[int, bytes]:
    """The collection opens, searches, and its parts agree; returns the committed vectors."""
    store = Collection(coll)
    try:
        pages = store.pages()
        rows = {p.image for p in pages}
        files = _image_files(coll)
        assert rows <= files, "a committed row names a missing image"
        stuck = {str(d.id) for d in store.documents() if not d.ready}
        for extra in files - rows:
            # only an image written just before the kill, of a document not finished yet
            assert extra.split("/")[1] in stuck or Path(extra).name.endswith(".tmp"), extra
        embedded = {p.id for p in pages if p.embedded}
        assert set(store.index().ids().tolist()) == embedded  # the cache, synced on open
        if pages:
            assert store.search_text("the", 3) is not None
        if embedded:
            query = store.vector(min(embedded))
            assert store.search(query, 1)[0][0] == min(embedded)
        report = check(store)
        assert report.kinds() <= CRASH_LEFTOVERS, report.as_dict()
        return {pid: store.vector(pid).tobytes() for pid in embedded}
    finally:
        store.close()


def _assert_complete(coll: Path, expected: dict[str, int]) -> None:
    store = Collection(coll)
    try:
        docs = store.documents()
        assert sorted(d.name for d in docs) == sorted(expected)  # each file exactly once
        for d in docs:
            assert d.ready and d.page_count == expected[d.name]
            assert [p.number for p in store.pages(d.id)] == list(range(1, d.page_count + 1))
        total = sum(expected.values())
        assert store.stats().pages == total and store.stats().embedded == total
        # catalog rows == FAISS ids (in the saved file) == image files
        report = check(store)
        assert report.ok, report.as_dict()
        assert (coll / VECTORS).exists()
        assert _image_files(coll) == {p.image for p in store.pages()}
    finally:
        store.close()


def _logged_vectors(log: Path) -> list[int]:
    if not log.exists():
        return []
    ids: list[int] = []
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        ids += entry.get("vectors", [])
    return ids


@pytest.mark.parametrize("point", ["render:6", "image-write:11", "embed:3", "faiss-save:1"])
def test_sigkill_at_a_point_then_resume(point, inputs, tmp_path):
    files, expected = inputs
    coll = tmp_path / "coll"
    _kill_at(coll, tmp_path / "first.log", files, point)
    committed = _assert_consistent_after_crash(coll)
    if point.startswith("embed"):
        assert committed, "some vector batches were committed before the kill"
    if point.startswith("faiss"):
        assert len(committed) == sum(expected.values())

    report = _finish(coll, tmp_path / "resume.log", files)
    assert report["refused"] == 0
    statuses = {Path(f["path"]).name: f["status"] for f in report["files"]}
    assert set(statuses.values()) <= {"added", "resumed", "skipped"}

    again = _logged_vectors(tmp_path / "resume.log")
    assert not set(again) & set(committed), "committed pages were embedded again"
    assert len(again) == len(set(again))
    _assert_complete(coll, expected)
    store = Collection(coll)
    try:  # the vectors committed before the kill are the ones kept
        assert all(store.vector(pid).tobytes() == vec for pid, vec in committed.items())
        assert set(again) | set(committed) == {p.id for p in store.pages()}
    finally:
        store.close()


def test_sigkill_at_fixed_moments_of_a_slow_run(inputs, tmp_path):
    """Three kills at fixed delays into slowed runs, each followed by a check, then a run to
    the end: whatever the moment, nothing is lost or duplicated."""
    files, expected = inputs
    coll = tmp_path / "coll"
    committed: dict[int, bytes] = {}
    for number, delay in enumerate([0.7, 1.5, 0.8]):
        proc = _start(coll, tmp_path / f"run{number}.log", files, "--slow", "0.1")
        assert proc.stdout.readline().startswith("STARTED")
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        now = _assert_consistent_after_crash(coll)
        assert all(now[pid] == vec for pid, vec in committed.items())  # nothing lost
        committed = now
    _finish(coll, tmp_path / "last.log", files)
    assert not set(_logged_vectors(tmp_path / "last.log")) & set(committed)
    _assert_complete(coll, expected)


def test_crash_leaves_vectors_usable_before_resume(inputs, tmp_path):
    """A search right after the kill returns committed pages (no resume needed)."""
    files, _ = inputs
    coll = tmp_path / "coll"
    _kill_at(coll, tmp_path / "a.log", files, "embed:4")
    store = Collection(coll)
    try:
        ids = store.page_ids(embedded=True)
        assert ids
        hits = store.search(store.vector(ids[-1]), 3)
        assert hits[0][0] == ids[-1] and np.isclose(hits[0][1], 1.0, atol=1e-4)
    finally:
        store.close()
