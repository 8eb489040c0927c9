"""Milvus-only behaviour, against a real milvus-lite gRPC server over loopback: unreachable
addresses, migration both ways, concurrent indexers, and the server dying mid-index.

(Everything both engines must do alike lives in the parametrized store/CLI tests.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.errors import CollectionError
from indexer.model import FakeEmbedder
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.stores import open_collection
from retriever.search import Retriever
from tests.support.milvus_server import MilvusServer, free_port
from tests.support.pdfs import TOPICS, make_text_pdf

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).parent / "support" / "crash_worker.py"
SMALL = RenderSettings(max_pixels=16 * 28 * 28)


def _spec(server: MilvusServer) -> str:
    return f"milvus://{server.address}/t_{uuid.uuid4().hex[:12]}"


def _index(spec_or_dir: str, files: list[Path]) -> None:
    store = open_collection(spec_or_dir)
    Indexer(store, FakeEmbedder(), settings=SMALL).add(files)
    store.close()


def _results(spec: str, query: str) -> dict[str, list[tuple[str, int, float]]]:
    store = open_collection(spec, create=False)
    retriever = Retriever(FakeEmbedder(), store)
    out = {}
    for mode in ("visual", "text", "hybrid"):
        hits = retriever.search(query, 6, mode=mode)
        out[mode] = [(h.document, h.page, round(h.score, 5)) for h in hits]
    store.close()
    return out


def test_unreachable_address_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    port = free_port()  # nothing listens there
    started = time.monotonic()
    result = runner.invoke(cli, ["--collection", f"milvus://127.0.0.1:{port}/docs", "docs"])
    assert time.monotonic() - started < 30  # bounded, not a hang
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert f"Cannot reach Milvus at 127.0.0.1:{port}" in lines[0]


def test_pymilvus_logging_is_quieted_only_during_calls(monkeypatch):
    """The engine quiets pymilvus's own records (PageLens says each failure in one line)
    while its calls run, and leaves a library user's logging as it found it afterwards."""
    import logging

    from indexer.stores.milvus.client import quiet_pymilvus

    logger = logging.getLogger("pymilvus")
    before = logger.level
    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    monkeypatch.delenv("PAGELENS_MILVUS_LOG", raising=False)
    try:
        logger.setLevel(logging.INFO)
        with quiet_pymilvus(), quiet_pymilvus():  # nested (or concurrent) calls
            assert logger.level == logging.CRITICAL
        assert logger.level == logging.INFO
        with pytest.raises(CollectionError, match="Cannot reach Milvus"):
            open_collection(f"milvus://127.0.0.1:{free_port()}/docs")
        assert logger.level == logging.INFO
        monkeypatch.setenv("PAGELENS_MILVUS_LOG", "1")  # keeps pymilvus's records
        with quiet_pymilvus():
            assert logger.level == logging.INFO
    finally:
        logger.setLevel(before)


def test_bad_addresses_are_clear_errors(milvus_server):
    with pytest.raises(CollectionError, match="letters, digits and '_'"):
        open_collection(f"milvus://{milvus_server.address}/has-dash")
    for name in ("a" * 182, "a" * 240):  # valid letters, too long: say so, not "letters only"
        with pytest.raises(CollectionError, match=f"is {len(name)} characters long; at most 181"):
            open_collection(f"milvus://{milvus_server.address}/{name}")
    open_collection(f"milvus://{milvus_server.address}/{'b' * 181}").close()  # the limit works
    with pytest.raises(CollectionError, match="No collection"):
        open_collection(f"milvus://{milvus_server.address}/never_made", create=False)


def test_a_failed_open_closes_its_channel_and_records_no_image_store(
    milvus_server, monkeypatch, tmp_path
):
    """An open that fails after connecting (here: an image store location fsspec cannot
    open) closes its dedicated gRPC channel (``pagelens serve`` and the app open again on
    every request) and records nothing: the next open does not inherit the bad location."""
    from pymilvus import MilvusClient

    closed: list[object] = []
    real_close = MilvusClient.close

    def close(self) -> None:
        closed.append(self)
        real_close(self)

    monkeypatch.setattr(MilvusClient, "close", close)
    spec = f"milvus://{milvus_server.address}/t_{uuid.uuid4().hex[:12]}"
    with pytest.raises(CollectionError, match="Cannot open the image store nosuch://"):
        open_collection(spec + "?images=nosuch://bucket/pages")
    assert len(closed) == 1
    store = open_collection(spec)  # no ?images=: the default location, not the bad one
    try:
        assert store.meta("image_store") != "nosuch://bucket/pages"
    finally:
        store.drop()
        store.close()


def test_an_image_location_with_credentials_is_refused_and_never_echoed(monkeypatch, tmp_path):
    """``?images=s3://KEY:SECRET@bucket/...`` would be recorded in the collection (which
    every process reads) and shown in messages, as a Milvus address with credentials would:
    refused before anything is contacted, the secret masked in every message."""
    from indexer.stores.milvus.images import open_images

    located = "s3://AKIAEXAMPLE:topsecret@bucket/pages"
    for spec, expected in (
        (f"milvus://127.0.0.1:1/docs?images={located}", "carries credentials"),
        (f"milvus://127.0.0.1:1/has-dash?images={located}", "carries credentials"),
    ):
        with pytest.raises(CollectionError, match=expected) as err:
            open_collection(spec)
        assert "topsecret" not in str(err.value) and "AKIAEXAMPLE" not in str(err.value)
    monkeypatch.setenv("PAGELENS_MILVUS_IMAGES", located)  # the same through the environment
    with pytest.raises(CollectionError, match="carries credentials") as err:
        open_images(os.environ["PAGELENS_MILVUS_IMAGES"], tmp_path)
    assert "topsecret" not in str(err.value)


def test_an_image_folder_that_refuses_a_deletion_is_one_clear_error(tmp_path):
    """``check --repair`` and ``remove`` delete images from a shared folder, where another
    machine's file may not be ours to delete: one CollectionError line (the CLI prints it),
    not an OSError traceback. (A directory in a file's place refuses even root.)"""
    from indexer.stores.milvus.images import FolderImages

    images = FolderImages(tmp_path / "images")
    images.put("pages/1/00001.png", b"png")
    (tmp_path / "images" / "pages" / "1" / "00002.png").mkdir()
    with pytest.raises(CollectionError, match=r"Cannot delete page image .*00002\.png"):
        images.delete(["pages/1/00001.png", "pages/1/00002.png"])
    assert not images.exists("pages/1/00001.png")


def test_keys_and_hashes_from_page_rows_cannot_leave_the_image_store(tmp_path):
    """Page rows live in Milvus, which others may write to: a row's image key (``..``, an
    absolute path) or image hash (the bucket cache's file name) never makes PageLens read,
    write or delete a file outside the image folder or its cache."""
    from indexer.stores.milvus.images import FolderImages, open_images

    outside = tmp_path / "outside.txt"
    outside.write_text("not an image")
    folder = FolderImages(tmp_path / "images")
    for key in ("../outside.txt", str(outside)):
        for use in (folder.get, folder.local_path, folder.exists, lambda k: folder.delete([k])):
            with pytest.raises(CollectionError, match="leaves the image folder"):
                use(key)
    assert outside.read_text() == "not an image"

    pytest.importorskip("fsspec")
    bucket = open_images(f"memory://pagelens-{uuid.uuid4().hex[:8]}/pages", tmp_path / "work")
    bucket.put("pages/1/00001.png", b"png")
    cache = (tmp_path / "work" / "image-cache").resolve()
    for planted in ("../../../planted", "/tmp/planted", "0" * 64):
        path = bucket.local_path("pages/1/00001.png", planted).resolve()
        assert cache in path.parents and path.read_bytes() == b"png"
    assert not (tmp_path / "planted.png").exists()


def test_migration_round_trip_gives_identical_results(milvus_server, tmp_path):
    files = [
        make_text_pdf(tmp_path / "a.pdf", TOPICS[:4]),
        make_text_pdf(tmp_path / "b.pdf", TOPICS[4:7]),
    ]
    first, back = str(tmp_path / "first"), str(tmp_path / "back")
    _index(first, files)
    spec = _spec(milvus_server)
    for src, dst in ((first, spec), (spec, back)):
        result = runner.invoke(cli, ["migrate", src, dst, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["ok"] and report["counts"]["destination"]["pages"] == 7
        assert report["sampled_vectors"] == 7 and report["vectors_copied"] == 7
    query = TOPICS[5].split(".")[0]
    local, there, again = _results(first, query), _results(spec, query), _results(back, query)
    assert local == again  # local -> Milvus -> local: the same collection, same answers
    assert there["visual"] == local["visual"]  # same vectors, exact neighbours
    assert there["text"][0][:2] == local["text"][0][:2]
    assert [h[:2] for h in there["hybrid"][:1]] == [h[:2] for h in local["hybrid"][:1]]
    a, b = open_collection(first), open_collection(back)
    assert a.model_identity() == b.model_identity()
    for pa, pb in zip(a.pages(), b.pages(), strict=True):
        assert pa.number == pb.number and pa.image_sha256 == pb.image_sha256
        assert a.image_bytes(pa) == b.image_bytes(pb) and pa.text == pb.text
    # re-running is a no-op
    result = runner.invoke(cli, ["migrate", first, spec, "--json"], catch_exceptions=False)
    assert json.loads(result.stdout)["documents_skipped"] == 2


def test_interrupted_migration_resumes_without_duplicates(milvus_server, tmp_path, monkeypatch):
    from indexer.maintenance import migrate as migrate_mod
    from indexer.stores.milvus.collection import MilvusCollection

    files = [make_text_pdf(tmp_path / f"{i}.pdf", TOPICS[i : i + 3]) for i in range(3)]
    local = str(tmp_path / "local")
    _index(local, files)
    spec = _spec(milvus_server)
    real = MilvusCollection.set_vectors
    calls = {"n": 0}

    def interrupted(self, ids, vecs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, ids, vecs)

    monkeypatch.setattr(MilvusCollection, "set_vectors", interrupted)
    with pytest.raises(KeyboardInterrupt):
        migrate_mod.migrate(open_collection(local), open_collection(spec))
    monkeypatch.setattr(MilvusCollection, "set_vectors", real)
    report = migrate_mod.migrate(open_collection(local), open_collection(spec))
    assert report.ok, report.problems
    dst = open_collection(spec)
    pages = dst.pages(with_text=False)
    assert len(pages) == 9 == len({(p.document_id, p.number) for p in pages})
    assert dst.stats().embedded == 9


def test_two_indexers_and_a_searcher_share_one_collection(milvus_server, tmp_path):
    from indexer.maintenance.check import check

    spec = _spec(milvus_server)
    shared = make_text_pdf(tmp_path / "shared.pdf", TOPICS[:3])
    mine = [make_text_pdf(tmp_path / f"a{i}.pdf", TOPICS[i : i + 2]) for i in range(2)]
    theirs = [make_text_pdf(tmp_path / f"b{i}.pdf", TOPICS[i + 3 : i + 5]) for i in range(2)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                "index",
                spec,
                str(tmp_path / f"log{n}"),
                "--slow",
                "0.05",
                *map(str, files),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for n, files in enumerate(([*mine, shared], [shared, *theirs]))
    ]
    searches = 0
    reader = None
    while any(p.poll() is None for p in procs):
        try:
            reader = reader or open_collection(spec, create=False)
        except CollectionError:
            time.sleep(0.2)  # not created yet
            continue
        for pid, _ in reader.search(np.ones(64, np.float32) / 8.0, 5):
            page = reader.page(pid)
            assert page.embedded and reader.images.exists(page.image)  # never half-stored
        searches += 1
        time.sleep(0.1)
    for p in procs:
        assert p.wait() == 0, p.stdout.read()
    store = open_collection(spec, create=False)
    pages = store.pages(with_text=False)
    assert len(pages) == 3 + 2 * 2 + 2 * 2  # the shared file stored once
    assert len({p.id for p in pages}) == len({(p.document_id, p.number) for p in pages})
    assert store.stats().documents == 5 and store.stats().pending == 0
    assert check(store).ok
    assert searches > 0


def test_server_killed_mid_index_then_rerun_completes(tmp_path, tiny_model_dir):
    server = MilvusServer(tmp_path / "milvus-data").start()
    spec = f"milvus://{server.address}/killed"
    # Long enough that the run cannot finish between the probe seeing stored pages and the
    # kill, even on a quiet machine (30 pages sometimes finished first).
    n = 200
    pdf = make_text_pdf(tmp_path / "long.pdf", [TOPICS[i % len(TOPICS)] for i in range(n)])
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PAGELENS_MODEL": str(tiny_model_dir),
        "PAGELENS_MILVUS_TIMEOUT": "3",
    }
    cmd = [sys.executable, "-m", "app.cli", "--collection", spec, "--image-tokens", "16",
           "index", str(pdf)]  # fmt: skip
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env, cwd=ROOT)  # fmt: skip
        deadline = time.monotonic() + 240
        stored = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                probe = open_collection(spec, create=False)
                stored = probe.stats().pages
                probe.close()
            except CollectionError:
                stored = 0
            if stored >= 2:
                break
            time.sleep(0.3)
        assert stored >= 2 and proc.poll() is None, "the index run ended before the kill"
        server.kill()
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 1
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        assert "Milvus at" in lines[0]

        server.start()  # same data folder and port
        store = open_collection(spec, create=False)
        stats = store.stats()
        assert stats.pages < n or stats.pending > 0  # killed mid-run: work left to do
        for page in store.pages(with_text=False):  # nothing half-stored
            assert store.images.exists(page.image)
        for pid, _ in store.search(np.ones(store.dim, np.float32), 50):
            assert store.page(pid).embedded
        store.close()

        rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert rerun.returncode == 0, rerun.stderr
        store = open_collection(spec, create=False)
        pages = store.pages(with_text=False)
        assert len(pages) == n == len({p.number for p in pages})
        assert store.stats().pending == 0 and store.documents()[0].status == "ready"
        store.close()
    finally:
        server.stop()


def test_bulk_writes_go_in_bounded_chunks(milvus_server, monkeypatch):
    """A write larger than one chunk is split into several upserts (each fits the per-call
    timeout) and every page arrives whole: row, vector and ``embedded`` together."""
    from PIL import Image

    import indexer.stores.milvus.client as milvus_store

    monkeypatch.setattr(milvus_store, "UPSERT_ROWS", 4)
    store = open_collection(_spec(milvus_server), model_id="m", dim=8)
    calls: list[int] = []
    real = store.client.upsert
    monkeypatch.setattr(
        store.client,
        "upsert",
        lambda name, rows, **kw: calls.append(len(rows)) or real(name, rows, **kw),
    )
    image = Image.new("RGB", (8, 8), "white")
    with store.writing():
        doc = store.add_document(
            name="a.pdf", path="/a.pdf", sha256="a" * 64, kind="pdf", page_count=10
        )
        ids = store.add_pages(doc.id, [(n, f"page {n}", image) for n in range(1, 11)])
        vecs = np.eye(10, 8, dtype=np.float32) + 0.01
        store.set_vectors(ids, vecs / np.linalg.norm(vecs, axis=1, keepdims=True))
        store.mark_ready(doc.id)
    # 10 pages: add_pages and set_vectors each send 4 + 4 + 2 rows
    assert max(calls) <= 4 and calls.count(4) >= 4, calls
    hits = store.search(vecs[3] / np.linalg.norm(vecs[3]), 10)
    assert sorted(pid for pid, _ in hits) == sorted(ids)
    assert hits[0][0] == ids[3]
    store.drop()
    store.close()


def test_repair_clears_a_killed_writers_temp_image_without_the_hour_of_grace(
    milvus_server, tmp_path
):
    """A killed indexer or migration can leave an atomic write's ``.tmp`` image. A re-run's
    ``check --repair`` deletes it once it is minutes old (such a file only lives for one
    write), while a fresh temp file and a young image without a row (another machine's work
    in progress) are kept for their grace."""
    from indexer.maintenance.check import check
    from indexer.maintenance.repair import repair

    spec = _spec(milvus_server)
    _index(spec, [make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])])
    store = open_collection(spec, create=False)
    page = store.pages()[0]
    folder = store.images.local_path(page.image).parent
    stale, fresh, young = (
        folder / ".00009.png.k1l2m3.tmp",
        folder / ".00010.png.n4o5p6.tmp",
        folder / "00011.png",
    )
    for path in (stale, fresh, young):
        path.write_bytes(b"partial png")
    ten_minutes_ago = time.time() - 600
    for path in (stale, young):
        os.utime(path, (ten_minutes_ago, ten_minutes_ago))

    assert "orphan-files" in check(store).kinds()
    repair(store)
    assert not stale.exists()
    assert fresh.exists() and young.exists()
    store.close()
