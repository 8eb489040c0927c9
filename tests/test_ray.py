"""Bulk indexing on Ray (indexer/ray/) on a real local Ray instance with the tiny GME.

One small Ray instance (3 logical CPUs, 128 MiB object store) serves the whole module, and
one pool of two embedding actors (each loads the tiny model once) serves every job that
does not test the CLI. Pages are small (16 visual tokens, as in tests/support/crash_worker.py).
"""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from indexer import load_embedder  # noqa: E402
from indexer.errors import PageLensError  # noqa: E402
from indexer.maintenance.check import check  # noqa: E402
from indexer.pages import RenderSettings  # noqa: E402
from indexer.pipeline import Indexer  # noqa: E402
from indexer.ray import (  # noqa: E402
    EmbedPool,
    RayIndexer,
    RayOptions,
    check_address,
    connect,
    plan_resources,
)
from indexer.ray import driver as ray_driver  # noqa: E402
from indexer.ray.cluster import local_environment  # noqa: E402
from indexer.store import Collection  # noqa: E402
from tests.support.pdfs import TOPICS, make_image_only_pdf, make_png, make_text_pdf  # noqa: E402

TOKENS = 16
SETTINGS = RenderSettings.for_tokens(TOKENS)
LOAD = {"device": "cpu", "max_image_tokens": TOKENS}


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray instance for this module (shut down after it)."""
    # 3 logical CPUs (on any machine): the shared pool (1), one render task (1) and the
    # killed driver's own actor (0.5) fit at once.
    started = connect("local", options=RayOptions(num_cpus=3, object_store_mb=128))
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def pool(ray_local, tiny_model_dir):
    pool = EmbedPool(str(tiny_model_dir), LOAD, RayOptions(actors=2, actor_cpus=0.5))
    pool.start()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The in-process embedder the Ray results must equal."""
    return load_embedder(tiny_model_dir, **LOAD)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("ray-inputs")
    make_text_pdf(folder / "alpha.pdf", [f"{i}. {TOPICS[i % 12]}" for i in range(7)])
    # Two byte-identical pages (dedupe by content inside the job) and a copy of a file.
    make_text_pdf(folder / "beta.pdf", ["Beta one", TOPICS[3], TOPICS[3], "Beta four"])
    shutil.copyfile(folder / "beta.pdf", folder / "beta2.pdf")
    make_image_only_pdf(folder / "scan.pdf", n=2)
    make_png(folder / "photo.png", size=(300, 200))
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    return [folder]


def _vectors(store: Collection) -> dict[tuple[str, int], np.ndarray]:
    docs = {d.id: d.name for d in store.documents()}
    out = {}
    for page in store.pages():
        vec = store.vector(page.id)
        assert vec is not None, f"page {page.number} of {docs[page.document_id]} is pending"
        out[(docs[page.document_id], page.number)] = vec
    return out


def _words(store: Collection) -> dict:
    docs = {d.id: d.name for d in store.documents()}
    pages = store.pages(with_text=False)
    words = store.page_words_many([p.id for p in pages])
    return {(docs[p.document_id], p.number): words.get(p.id) for p in pages}


def _assert_same_vectors(a: Collection, b: Collection) -> None:
    va, vb = _vectors(a), _vectors(b)
    assert va.keys() == vb.keys()
    cos = [float(va[k] @ vb[k]) for k in va]
    assert min(cos) >= 0.9999, min(cos)


def _assert_clean(store: Collection, pages: int) -> None:
    stats = store.stats()
    assert (stats.pages, stats.embedded) == (pages, pages)
    assert len(store.index()) == pages  # one vector per page in the search index, no twins
    problems = check(store).problems
    assert not problems, problems


def test_cli_index_ray_on_the_cluster_address(ray_local, tiny_model_dir, inputs, monkeypatch):
    """``pagelens index --ray HOST:PORT`` against the running instance; exit 3 names the
    refused file; search finds what it indexed. First in the module: its actor needs the
    CPU that the shared pool holds later."""
    import json

    from typer.testing import CliRunner

    from app.cli import cli

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    address = ray.get_runtime_context().gcs_address
    runner = CliRunner()
    args = ["--image-tokens", str(TOKENS), "--device", "cpu", "index", "--ray", address]
    result = runner.invoke(cli, [*args, "--ray-actors", "1", *map(str, inputs)])
    assert result.exit_code == 3, result.output
    assert "refused  " in result.output and "broken.pdf" in result.output
    assert "14 pages stored, 13 embedded (1 reused)" in result.output
    assert "pages/s" in result.output
    both = runner.invoke(cli, ["--embedder", "http://127.0.0.1:9/v1", *args, str(inputs[0])])
    assert both.exit_code == 2 and "one or the other" in both.output
    found = runner.invoke(cli, ["search", "hydraulic pump", "--json", "-k", "3"])
    assert found.exit_code == 0, found.output
    assert len(json.loads(found.stdout)["hits"]) == 3


def test_bench_ray_phase_reports_pages_per_second(ray_local, tiny_model_dir, tmp_path):
    """The bench's Ray phase (bench/ray_bench.py) on the running instance; before the shared
    pool exists, for the same reason as the CLI test."""
    from types import SimpleNamespace

    from bench.corpus import make_text_pdf
    from bench.ray_bench import run_ray, summary_lines

    cfg = SimpleNamespace(
        model=str(tiny_model_dir),
        ray_size="tiny",
        ray_tokens=TOKENS,
        ray_pages=4,
        ray_actors=[1],
        batch_size=2,
        dtype=None,
        seed=0,
    )
    report: dict = {}
    run_ray(cfg, report, tmp_path, make_text_pdf)
    section = report["ray"]
    assert section["cluster"]["CPU"] == 3 and section["image_tokens"] == TOKENS
    (run,) = section["runs"]
    assert run["actors"] == 1 and run["pages_embedded"] == 4
    assert run["pages_per_s"] > 0 and run["pool_start_s"] > 0
    assert section["in_process"]["pages_per_s"] > 0
    assert "1 actor(s)" in summary_lines(report)[0]


def test_same_vectors_as_in_process_and_rerun_adds_nothing(pool, reference, inputs, tmp_path):
    ray_store = Collection(tmp_path / "ray")
    events = []
    with RayIndexer(ray_store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        report = job.add(inputs, progress=events.append)
    local_store = Collection(tmp_path / "local")
    expected = Indexer(local_store, reference, settings=SETTINGS, batch_size=4).add(inputs)

    status = {Path(f.path).name: f.status for f in report.files}
    assert status == {Path(f.path).name: f.status for f in expected.files}
    assert status["broken.pdf"] == "refused" and status["beta2.pdf"] == "skipped"
    refused = report.refused[0]
    assert refused.reason == expected.refused[0].reason and "broken.pdf" in refused.message
    assert report.pages_stored == expected.pages_stored == 7 + 4 + 2 + 1
    assert report.pages_reused == expected.pages_reused == 1  # beta.pdf's twin page
    assert report.pages_embedded == expected.pages_embedded == 13
    assert report.pending == 0
    _assert_same_vectors(ray_store, local_store)
    # the render tasks hand each page's word boxes to the writer, as in-process
    assert _words(ray_store) == _words(local_store)
    assert sum(1 for w in _words(ray_store).values() if w) >= 11  # text pages (not scans)
    _assert_clean(ray_store, 14)
    identity = ray_store.model_identity()
    assert identity == local_store.model_identity() and identity.fingerprint

    vectors = [e for e in events if e.phase == "vectors"]
    assert (vectors[-1].done, vectors[-1].total) == (14, 14) and vectors[-1].rate > 0
    assert any(e.eta_s is not None for e in vectors) and "rendered 14/14" in vectors[-1].message

    with RayIndexer(ray_store, pool=pool) as job:
        again = job.add(inputs)
    assert (again.pages_stored, again.pages_embedded, again.pending) == (0, 0, 0)
    assert {f.status for f in again.files} == {"skipped", "refused"}
    _assert_clean(ray_store, 14)


def test_milvus_collection_gets_its_vectors_from_the_actors(
    pool, reference, inputs, milvus_server, tmp_path
):
    """Into a ``milvus://`` collection the actors write the vectors themselves: the driver's
    store never writes one, yet every page is stored once, with the in-process vector, and
    a re-run adds nothing."""
    import uuid

    from indexer.stores import open_collection

    store = open_collection(f"milvus://{milvus_server.address}/ray_{uuid.uuid4().hex[:10]}")
    driver_writes: list[list[int]] = []
    real_set_vectors = store.set_vectors

    def recorded(page_ids, vectors):
        driver_writes.append(list(page_ids))
        real_set_vectors(page_ids, vectors)

    store.set_vectors = recorded
    try:
        with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
            assert job.worker_spec == store.location
            report = job.add(inputs)
        assert driver_writes == []  # every vector came from an actor
        assert (report.pages_stored, report.pages_embedded, report.pages_reused) == (14, 13, 1)
        assert report.pending == 0
        local = Collection(tmp_path / "local")
        Indexer(local, reference, settings=SETTINGS, batch_size=4).add(inputs)
        _assert_same_vectors(store, local)
        ids = [p.id for p in store.pages()]
        assert len(ids) == len(set(ids)) == 14  # every page exactly once
        assert (store.stats().pages, store.stats().embedded) == (14, 14)

        with RayIndexer(store, pool=pool, settings=SETTINGS) as job:
            again = job.add(inputs)
        assert (again.pages_stored, again.pages_embedded, again.pages_reused) == (0, 0, 0)
        assert (store.stats().pages, store.stats().embedded) == (14, 14)
        assert driver_writes == []
        hits = store.search(local.vector(local.pages()[0].id), 3)
        assert len(hits) == 3
    finally:
        store.drop()
        store.close()


def test_text_only_on_ray_then_vectors_later(pool, reference, inputs, tmp_path, monkeypatch):
    """``index --ray ... --text-only``: pages and text now (no actors), vectors on a later run."""
    store = Collection(tmp_path / "ray")
    with RayIndexer(store, settings=SETTINGS) as job:  # no pool is started for text only
        first = job.add(inputs, embed=False)
        assert job.pool.actors == []
    assert first.pages_stored == 14 and first.pending == 14 and first.pages_embedded == 0
    assert store.search_text("waggle dance", 3)  # text search works before any vector
    # Pending rows are read ids first, then a chunk (queueing) or a batch (sending) at a time,
    # as the in-process indexer reads them: never all of them with their text layer at once.
    reads: list[int] = []
    by_id = store.pages_by_id
    monkeypatch.setattr(store, "pages_by_id", lambda ids: reads.append(len(ids)) or by_id(ids))
    monkeypatch.setattr(store, "pending_pages", lambda *a, **k: pytest.fail("all rows read"))
    monkeypatch.setattr(ray_driver, "_ROWS_AT_ONCE", 4, raising=False)  # fails below if unused
    with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        later = job.add(inputs)
    assert later.pages_stored == 0 and later.pages_embedded + later.pages_reused == 14
    assert sum(reads) >= 14 and max(reads) <= 4, reads  # 2 images, each of at most 2 pages
    _assert_clean(store, 14)
    local = Collection(tmp_path / "local")
    Indexer(local, reference, settings=SETTINGS).add(inputs)
    _assert_same_vectors(store, local)


def test_driver_crash_mid_job_resumes_without_duplicates(pool, reference, tmp_path):
    folder = tmp_path / "docs"
    make_text_pdf(folder / "long.pdf", [f"Long {i}: {TOPICS[i % 12]}" for i in range(12)])
    store = Collection(tmp_path / "ray")

    class DriverDied(Exception):
        pass

    def die(job: RayIndexer) -> None:
        raise DriverDied

    with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        with pytest.raises(DriverDied):
            job.add([folder], on_batch=die)
    stats = store.stats()
    assert 0 < stats.embedded < 12  # stopped half-way: some vectors committed, not all

    with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        report = job.add([folder])
    assert report.pages_embedded + report.pages_reused == 12 - stats.embedded
    assert report.pages_stored == 12 - stats.pages
    _assert_clean(store, 12)
    local = Collection(tmp_path / "local")
    Indexer(local, reference, settings=SETTINGS).add([folder])
    _assert_same_vectors(store, local)


def test_driver_killed_mid_job_resumes_without_duplicates(
    pool, reference, tiny_model_dir, tmp_path
):
    """SIGKILL a real ``pagelens index --ray HOST:PORT`` process once pages are stored and
    not all embedded; the same job then finishes with nothing lost or duplicated."""
    import contextlib
    import sqlite3
    import subprocess
    import sys
    import time

    folder = tmp_path / "docs"
    make_text_pdf(folder / "big.pdf", [f"Big {i}: {TOPICS[i % 12]}" for i in range(40)])
    coll = tmp_path / "ray"
    address = ray.get_runtime_context().gcs_address
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "app.cli", "-c", str(coll), "--model", str(tiny_model_dir)]
    cmd += ["--image-tokens", str(TOKENS), "--device", "cpu", "index", "--ray", address]
    cmd += ["--ray-actors", "1", "--ray-actor-cpus", "0.5", "--batch-size", "1", str(folder)]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    env.update(local_environment())  # the instance's token: it refuses calls without it
    proc = subprocess.Popen(cmd, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    at_kill = None
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (coll / "catalog.sqlite").exists():
                with contextlib.suppress(sqlite3.OperationalError):  # schema not there yet
                    uri = f"file:{coll / 'catalog.sqlite'}?mode=ro"
                    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
                        at_kill = db.execute("SELECT COUNT(*) FROM pages").fetchone()[0] or None
                if at_kill:
                    break
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert at_kill is not None, err[-2000:]
    with Collection(coll) as store:
        stats = store.stats()
        assert stats.embedded < 40  # killed mid-job
        with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
            report = job.add([folder])
        assert report.pages_stored == 40 - stats.pages
        _assert_clean(store, 40)
        local = Collection(tmp_path / "local")
        Indexer(local, reference, settings=SETTINGS).add([folder])
        _assert_same_vectors(store, local)


def _render_with_page_3_broken(path, password, settings, numbers):
    """The real render task, in a Ray worker where page 3 of any PDF fails to render."""
    import pymupdf

    from indexer.ray.tasks import render_task as _render_task

    real = pymupdf.Page.get_pixmap

    def flaky(self, *args, **kwargs):
        if self.number == 2:
            raise RuntimeError("code=2: broken content stream")
        return real(self, *args, **kwargs)

    pymupdf.Page.get_pixmap = flaky
    try:
        return _render_task(path, password, settings, numbers)
    finally:
        pymupdf.Page.get_pixmap = real


class _BrokenPage3(RayIndexer):
    @property
    def _render(self):
        return ray.remote(_render_with_page_3_broken).options(num_cpus=1)


def test_a_page_that_fails_to_render_is_a_placeholder_as_in_process(pool, tmp_path):
    pdf = make_text_pdf(tmp_path / "manual.pdf", [f"{i}: {TOPICS[i]}" for i in range(10)])
    store = Collection(tmp_path / "ray")
    with _BrokenPage3(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        job.options = RayOptions(pages_per_task=4)
        report = job.add([pdf])
    (result,) = report.files
    assert result.status == "partial" and result.failed_pages == [3], result
    assert "page 3" in result.message and "check --repair" in result.message
    assert store.stored_page_numbers(result.document_id) == set(range(1, 11)) - {3}
    (placeholder,) = store.failed_pages()
    assert placeholder["page"] == 3 and "broken content stream" in placeholder["reason"]
    assert store.stats().pending == 0 and store.documents()[0].ready


def test_actor_killed_mid_job_loses_and_duplicates_nothing(pool, reference, tmp_path):
    # After the driver-crash test: the replacement actor loads while later tests run.
    folder = tmp_path / "many"
    make_text_pdf(folder / "one.pdf", [f"One {i}: {TOPICS[i % 12]}" for i in range(10)])
    make_text_pdf(folder / "two.pdf", [f"Two {i}: {TOPICS[(i + 4) % 12]}" for i in range(8)])
    store = Collection(tmp_path / "ray")
    killed: list[int] = []

    def kill_one(job: RayIndexer) -> None:
        if not killed:  # after the first committed batch, with others in flight
            victim = job.actors[0]
            pid = ray.get(victim.pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    failures = pool.failures
    with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
        report = job.add([folder], on_batch=kill_one)
    assert killed and pool.failures == failures + 1
    assert len(pool.actors) == 2  # the dead one was replaced
    assert report.pending == 0 and report.pages_stored == 18
    _assert_clean(store, 18)
    local = Collection(tmp_path / "local")
    Indexer(local, reference, settings=SETTINGS).add([folder])
    _assert_same_vectors(store, local)


def test_actor_killed_mid_job_into_milvus_loses_and_duplicates_nothing(
    pool, reference, milvus_server, tmp_path
):
    """The actor-written path: a batch of a killed actor is retried on a fresh one, and its
    (deterministic-id) upserts leave every page once, with its vector."""
    import uuid

    from indexer.stores import open_collection

    folder = tmp_path / "many"
    make_text_pdf(folder / "one.pdf", [f"Mil {i}: {TOPICS[i % 12]}" for i in range(10)])
    store = open_collection(f"milvus://{milvus_server.address}/ray_{uuid.uuid4().hex[:10]}")
    killed: list[int] = []

    def kill_one(job: RayIndexer) -> None:
        if not killed:
            pid = ray.get(job.actors[0].pid.remote())
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    try:
        failures = pool.failures
        with RayIndexer(store, pool=pool, settings=SETTINGS, batch_size=2) as job:
            report = job.add([folder], on_batch=kill_one)
        assert killed and pool.failures == failures + 1
        assert report.pending == 0 and report.pages_stored == 10
        ids = [p.id for p in store.pages()]
        assert len(ids) == len(set(ids)) == 10
        assert (store.stats().pages, store.stats().embedded) == (10, 10)
        local = Collection(tmp_path / "local")
        Indexer(local, reference, settings=SETTINGS).add([folder])
        _assert_same_vectors(store, local)
    finally:
        store.drop()
        store.close()


def test_missing_model_is_one_clear_error(tmp_path):
    """An actor whose model cannot load reports the reason (the pool raises it as is, one
    line for the CLI) instead of dying with a traceback. Run in-process: the same code."""
    import torch

    from indexer.errors import ModelNotAvailableError
    from indexer.ray.tasks import EmbedActor

    threads = torch.get_num_threads()
    try:
        actor = EmbedActor(str(tmp_path / "no-model"), LOAD, 1)
    finally:
        torch.set_num_threads(threads)
    error = actor.identity()
    assert isinstance(error, ModelNotAvailableError) and "does not exist" in str(error)


def test_resources_leave_rendering_a_cpu():
    two = {"CPU": 2.0}
    one = plan_resources(two, RayOptions())
    assert (one.actors, one.actor_cpus, one.actor_gpus, one.threads) == (1, 1.0, 0.0, 1)
    pair = plan_resources(two, RayOptions(actors=2))
    assert pair.actors * pair.actor_cpus <= 1.0
    with pytest.raises(PageLensError, match="stall"):
        plan_resources(two, RayOptions(actors=2, actor_cpus=1))
    gpus = plan_resources({"CPU": 16.0, "GPU": 4.0}, RayOptions())
    assert (gpus.actors, gpus.actor_gpus) == (4, 1.0)
    with pytest.raises(PageLensError, match="GPU"):
        plan_resources({"CPU": 16.0, "GPU": 2.0}, RayOptions(actors=3))
    big = plan_resources({"CPU": 64.0}, RayOptions(actors=3))
    assert big.actors * big.actor_cpus <= 48 and big.threads == int(big.actor_cpus)


def test_address_spellings():
    assert check_address("local") == "local" and check_address("auto") == "auto"
    assert check_address("10.0.0.5:6379") == "10.0.0.5:6379"
    assert check_address("ray://head.example:10001") == "ray://head.example:10001"
    for bad in ("", "locale", "http://head:8265", "head"):
        with pytest.raises(PageLensError, match="not a Ray address"):
            check_address(bad)


def _loopback(ip: str) -> bool:
    import ipaddress

    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a v6 socket's v4 form
    return address.is_loopback or bool(mapped and mapped.is_loopback)


def test_a_local_instance_listens_on_loopback_only_and_needs_its_token(tmp_path):
    """``--ray local`` is private to this machine and this user: every socket that the
    driver and the processes Ray starts (GCS, raylet, runtime-env agent, task and actor
    workers) listen on is a loopback one (they listened on ``*:port`` and the LAN address),
    and the GCS refuses a call without the instance's token (Ray's token authentication).
    The token is made for the run: nothing is written to ``~/.ray`` (Ray writes
    ``~/.ray/auth_token`` otherwise), and the driver's environment is as it was (Ray sets
    ``RAY_AUTH_MODE=token`` in it otherwise). In a subprocess: its own instance and HOME."""
    import json
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["HOME"] = str(home)
    probe = Path(__file__).parent / "support" / "ray_loopback_probe.py"
    done = subprocess.run(
        [sys.executable, str(probe)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    sockets = report["sockets"]
    names = {s["name"] for s in sockets}
    assert {"gcs_server", "raylet"} <= names, sockets  # the probe saw Ray's servers
    exposed = [s for s in sockets if not _loopback(s["ip"])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert report["gcs_without_token"] == "UNAUTHENTICATED", report
    changed = set(report["environment_changed"]) - {"PYTHONBREAKPOINT"}  # Ray's debugger hook
    assert not changed, report["environment_changed"]
    assert list(home.iterdir()) == [], list(home.rglob("*"))


class _FlakyRay:
    """Stands in for the ``ray`` module: ``init`` fails ``failures`` times, then works."""

    def __init__(self, failures: int, error: type[Exception] = RuntimeError) -> None:
        self.failures, self.inits, self.shutdowns = failures, 0, 0
        self.error = error

    def is_initialized(self) -> bool:
        return False

    def init(self, address: str, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.failures:
            raise self.error("The current node timed out during startup.")

    def shutdown(self) -> None:
        self.shutdowns += 1


@pytest.mark.parametrize("error", [RuntimeError, Exception])
@pytest.mark.parametrize(
    ("address", "failures", "inits", "ok"),
    [
        ("local", 1, 2, True),
        ("local", 2, 3, True),
        ("local", 3, 3, False),
        ("10.0.0.1:6379", 1, 1, False),
    ],
)
def test_a_local_instance_that_misses_its_start_deadline_is_started_again(
    monkeypatch, address, failures, inits, ok, error
):
    """A fresh local Ray instance that fails to start is stopped and started again, up to
    three times (it happened right after another instance shut down, and on a busy CI
    machine whose raylet missed Ray's fixed 30 s registration deadline, which Ray reports
    as a bare ``Exception``: that escaped as a traceback); the last failure is one line; a
    cluster address is not retried."""
    from indexer.ray import cluster

    fake = _FlakyRay(failures, error)
    monkeypatch.setattr(cluster, "import_ray", lambda: fake)
    monkeypatch.setattr(cluster.time, "sleep", lambda s: None)
    if ok:
        assert cluster.connect(address) is True
    else:
        with pytest.raises(PageLensError, match="Cannot connect to Ray"):
            cluster.connect(address)
    assert fake.inits == inits and fake.shutdowns == inits - 1
