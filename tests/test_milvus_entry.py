"""Every entry point on a collection that lives in Milvus (a real milvus-lite gRPC server on a
loopback port): ``pagelens serve`` in a subprocess queried with the official ``openai``
client and over HTTP, ``pagelens index --ray local``, and the library's ``PageLens``.

(The app is tests/test_app_milvus.py; behaviour both engines share is in the parametrized
store/retriever/CLI tests.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from app.cli import cli
from indexer.stores import open_collection
from tests.support.milvus_server import free_port
from tests.support.pdfs import TOPICS, make_text_pdf

pytest.importorskip("pymilvus", reason="the milvus extra is not installed")

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 16  # small pages: the tiny model embeds them in milliseconds
runner = CliRunner()


@pytest.fixture
def milvus_spec(milvus_server):
    """``make()`` -> a fresh ``milvus://`` collection address; all are dropped afterwards."""
    specs: list[str] = []

    def make(prefix: str = "e") -> str:
        spec = f"milvus://{milvus_server.address}/{prefix}_{uuid.uuid4().hex[:10]}"
        specs.append(spec)
        return spec

    yield make
    for spec in specs:
        try:
            store = open_collection(spec, create=False)
        except Exception:
            continue
        store.drop()
        store.close()


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    make_text_pdf(folder / "a.pdf", TOPICS[:3])
    make_text_pdf(folder / "b.pdf", TOPICS[3:6])
    return folder


def _cli(*args: str) -> dict:
    result = runner.invoke(cli, list(args))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- pagelens serve ---------------------------------------------------------------------
class ConnectionCounter:
    """A loopback TCP listener that only counts who connects (a would-be Milvus server)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _start_serve(spec: str, tiny_model_dir: Path, *extra: str):
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PAGELENS_MODEL": str(tiny_model_dir),
        "PAGELENS_MILVUS_TIMEOUT": "5",
    }
    cmd = [sys.executable, "-m", "app.cli", "--collection", spec, "--device", "cpu",
           "--image-tokens", str(TOKENS), "serve", "--port", str(port), *extra]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            pass
        assert time.monotonic() < deadline, "pagelens serve did not start"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def test_serve_answers_from_a_milvus_collection_like_the_cli(
    milvus_spec, docs, tmp_path, tiny_model_dir, tiny_embedder, monkeypatch
):
    from openai import OpenAI

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    spec, other, never = milvus_spec("srv"), milvus_spec("other"), milvus_spec("never")
    common = ["--device", "cpu", "--image-tokens", str(TOKENS)]
    report = _cli("--collection", spec, *common, "index", str(docs), "--json")
    assert report["pages_stored"] == 6 and report["pages_embedded"] == 6
    extra = make_text_pdf(tmp_path / "more" / "c.pdf", TOPICS[8:10])
    _cli("--collection", other, *common, "index", str(extra), "--json")
    open_collection(never).close()  # exists on the same server, but is not configured

    question = "Which treaty ended the Thirty Years War?"
    expected = {
        mode: _cli(
            "--collection", spec, *common, "search", question, "--mode", mode, "-k", "4", "--json"
        )["hits"]  # fmt: skip
        for mode in ("visual", "text", "hybrid")
    }
    assert expected["text"][0]["document"] == "a.pdf" and expected["text"][0]["page"] == 2

    counter = ConnectionCounter()
    proc, url = _start_serve(spec, tiny_model_dir, "--allow-collection", other)
    try:
        # The official client: the vectors are the library's, on GME's query side too.
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        got = client.embeddings.create(
            model="pagelens", input=[question], extra_body={"input_type": "query"}
        )
        library = tiny_embedder.embed_queries([question])[0]
        assert float(np.asarray(got.data[0].embedding) @ library) >= 0.9999

        # /v1/search on the default (Milvus) collection ranks as `pagelens search --json`.
        for mode, hits in expected.items():
            status, body = _post(url + "/v1/search", {"query": question, "mode": mode, "k": 4})
            assert status == 200, body
            assert [(h["document"], h["page"]) for h in body["hits"]] == [
                (h["document"], h["page"]) for h in hits
            ], mode
            assert [h["page_id"] for h in body["hits"]] == [h["page_id"] for h in hits]
            for served, cli_hit in zip(body["hits"], hits, strict=True):
                assert served["score"] == pytest.approx(cli_hit["score"], abs=1e-4), mode
        # The page image comes from the collection's image store.
        first = body["hits"][0]
        with urllib.request.urlopen(url + first["image_url"], timeout=30) as r:
            assert r.headers["content-type"] == "image/png"
            png = r.read()
        store = open_collection(spec, create=False)
        assert png == store.image_bytes(store.page(first["page_id"]))
        store.close()

        # A configured address may be named per request (spelled with another case too).
        spelled = "MILVUS" + other[len("milvus") :]
        status, body = _post(
            url + "/v1/search", {"query": TOPICS[8], "mode": "text", "k": 2, "collection": spelled}
        )
        assert status == 200, body
        assert body["hits"][0]["document"] == "c.pdf"
        assert "collection=MILVUS" in body["hits"][0]["image_url"]  # names it again
        with urllib.request.urlopen(url + body["hits"][0]["image_url"], timeout=30) as r:
            assert r.status == 200

        # Any other address is refused before anything is contacted (SSRF).
        for address in (never, f"milvus://127.0.0.1:{counter.port}/x",
                        f"milvuss://127.0.0.1:{counter.port}/x?images=/etc"):  # fmt: skip
            status, body = _post(
                url + "/v1/search", {"query": "x", "mode": "text", "collection": address}
            )
            assert status == 403, body
            assert body["error"]["code"] == "collection_not_allowed"
            assert str(counter.port) not in json.dumps(body)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(
                url + f"/v1/pages/1/image?collection=milvus://127.0.0.1:{counter.port}/x",
                timeout=30,
            )
        assert info.value.code == 403
        time.sleep(0.3)
        assert counter.connections == 0
    finally:
        _stop(proc)
        counter.close()


def test_serve_refuses_a_bad_allowed_address(tmp_path):
    result = runner.invoke(cli, ["serve", "--allow-collection", str(tmp_path)])
    assert result.exit_code == 2
    assert "--allow-collection takes milvus:// addresses" in result.output


def test_serve_default_milvus_collection_down_is_503_without_its_address(
    tiny_embedder, monkeypatch
):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.server.named_collections import make_resolver

    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    port = free_port()  # nothing listens there
    app = create_app(
        tiny_embedder, collection_resolver=make_resolver(f"milvus://127.0.0.1:{port}/d")
    )
    with TestClient(app, base_url="http://127.0.0.1") as client:
        started = time.monotonic()
        response = client.post("/v1/search", json={"query": "x", "mode": "text"})
        assert time.monotonic() - started < 30
    assert response.status_code == 503, response.text
    error = response.json()["error"]
    assert error["code"] == "collection_unavailable" and "Cannot reach Milvus" in error["message"]
    assert str(port) not in error["message"]


def test_serve_when_its_milvus_server_dies_answers_503(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.server.named_collections import make_resolver
    from indexer.model import FakeEmbedder
    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer
    from tests.support.milvus_server import MilvusServer

    monkeypatch.setenv("PAGELENS_MILVUS_TIMEOUT", "2")
    server = MilvusServer(tmp_path / "milvus-data").start()
    spec = f"milvus://{server.address}/dies"
    try:
        store = open_collection(spec)
        pdf = make_text_pdf(tmp_path / "a.pdf", TOPICS[:2])
        Indexer(store, FakeEmbedder(), settings=RenderSettings.for_tokens(TOKENS)).add([pdf])
        store.close()
        absent = f"milvus://{server.address}/absent"  # configured, but never created
        app = create_app(FakeEmbedder(), collection_resolver=make_resolver(spec, [absent]))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            query = {"query": "Westphalia", "mode": "text"}
            ok = client.post("/v1/search", json=query)
            assert ok.status_code == 200 and ok.json()["hits"][0]["document"] == "a.pdf"
            missing = client.post("/v1/search", json={**query, "collection": absent})
            assert missing.status_code == 404, missing.text
            assert missing.json()["error"]["code"] == "collection_not_found"
            assert str(server.port) not in missing.text
            image_url = ok.json()["hits"][0]["image_url"]
            server.kill()
            started = time.monotonic()
            down = client.post("/v1/search", json=query)
            image = client.get(image_url)
            assert time.monotonic() - started < 60  # bounded by the timeout, not a hang
            for response in (down, image):
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "collection_unavailable" and "Milvus" in error["message"]
                assert str(server.port) not in error["message"]

            server.start()  # same data, same port: the running API server carries on
            deadline = time.monotonic() + 60
            while (again := client.post("/v1/search", json=query)).status_code != 200:
                assert again.status_code == 503 and time.monotonic() < deadline, again.text
                time.sleep(1)
            assert again.json()["hits"][0]["document"] == "a.pdf"
            assert client.get(image_url).status_code == 200
    finally:
        server.stop()


# -- pagelens mcp ----------------------------------------------------------------------------
def test_mcp_server_on_a_milvus_collection(milvus_spec, docs, tiny_model_dir, tiny_embedder):
    """``pagelens -c milvus://... mcp`` with the official ``mcp`` client over stdio: text
    search, one page (text and image) and the document list come from Milvus."""
    pytest.importorskip("mcp")
    import anyio
    from mcp import Client, StdioServerParameters

    from indexer.pages import RenderSettings
    from indexer.pipeline import Indexer

    spec = milvus_spec("mcp")
    store = open_collection(spec)
    Indexer(store, tiny_embedder, settings=RenderSettings.for_tokens(TOKENS)).add([docs])
    store.close()
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "app.cli", "-c", spec, "--device", "cpu", "mcp"],
        env={**os.environ, "PYTHONPATH": str(ROOT), "PAGELENS_MODEL": str(tiny_model_dir)},
        cwd=str(ROOT),
    )

    async def session():
        async with Client(params) as client:
            found = await client.call_tool(
                "search_pages", {"question": "Westphalia treaty", "k": 2, "mode": "text"}
            )
            page = await client.call_tool("get_page", {"document": "b.pdf", "page": 3})
            listed = await client.call_tool("list_documents", {})
            return found, page, listed

    found, page, listed = anyio.run(session)
    assert not found.is_error, found.content
    assert [(h["document"], h["page"]) for h in found.structured_content["hits"]][0] == (
        "a.pdf",
        2,
    )
    assert [c.type for c in page.content] == ["text", "image"]
    assert "Mariana" in page.content[0].text  # TOPICS[5] is page 3 of b.pdf
    assert sorted(d["name"] for d in listed.structured_content["documents"]) == [
        "a.pdf",
        "b.pdf",
    ]


# -- pagelens index --ray local ------------------------------------------------------------
def test_cli_index_on_local_ray_into_milvus_then_search_and_rerun(
    milvus_spec, docs, tiny_model_dir, monkeypatch
):
    """``pagelens index --ray local -c milvus://...`` as a user runs it (its own process
    starts a 2-CPU Ray instance and stops it); search finds the pages; a re-run adds none."""
    pytest.importorskip("ray")
    spec = milvus_spec("ray")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PAGELENS_MODEL": str(tiny_model_dir),
        # Ray's memory monitor kills workers when the whole machine nears its RAM limit; on
        # a shared test machine that is other processes' memory, not this small job's.
        "RAY_memory_monitor_refresh_ms": "0",
        # and a loaded test machine may need more than Ray's 30 s to start its GCS server.
        "RAY_gcs_server_port_wait_time_s": "120",
    }
    cmd = [sys.executable, "-m", "app.cli", "--collection", spec, "--device", "cpu",
           "--image-tokens", str(TOKENS), "index", "--ray", "local", "--ray-cpus", "2",
           "--ray-actors", "1", str(docs), "--json"]  # fmt: skip

    def run() -> dict:
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "indexing on Ray (local)" in done.stderr
        return json.loads(done.stdout)

    first = run()
    assert (first["pages_stored"], first["pages_embedded"], first["pending"]) == (6, 6, 0)
    assert {f["status"] for f in first["files"]} == {"added"}

    monkeypatch.setenv("PAGELENS_MODEL", str(tiny_model_dir))
    common = ["--collection", spec, "--device", "cpu", "--image-tokens", str(TOKENS), "search"]
    text = _cli(*common, "Which treaty ended the Thirty Years War?", "--mode", "text", "--json")
    assert (text["hits"][0]["document"], text["hits"][0]["page"]) == ("a.pdf", 2)
    visual = _cli(*common, "sourdough starter", "-k", "6", "--json")
    assert visual["pending"] == 0 and len(visual["hits"]) == 6

    store = open_collection(spec, create=False)
    again = run()
    assert (again["pages_stored"], again["pages_embedded"]) == (0, 0)
    assert {f["status"] for f in again["files"]} == {"skipped"}
    stats = store.stats()
    assert (stats.documents, stats.pages, stats.embedded) == (2, 6, 6)
    store.close()


def test_ray_cpus_only_sizes_a_local_instance(tmp_path):
    alone = runner.invoke(cli, ["index", "--ray-cpus", "2", str(tmp_path)])
    assert alone.exit_code == 2 and "go with --ray ADDRESS" in alone.output
    cluster = runner.invoke(cli, ["index", "--ray", "10.0.0.1:6379", "--ray-cpus", "2", "x"])
    assert cluster.exit_code == 2 and "--ray-cpus sizes the instance" in cluster.output


# -- the library ---------------------------------------------------------------------------
def test_library_on_a_milvus_collection(milvus_spec, docs, tiny_embedder):
    from pagelens import PageLens

    spec = milvus_spec("lib")
    with PageLens(spec, embedder=tiny_embedder) as lens:
        assert lens.store.location == spec
        report = lens.index(docs)
        assert report.pages_stored == 6 and report.pages_embedded == 6 and not report.refused
        hits = lens.search("Which treaty ended the Thirty Years War?", k=3, mode="text")
        assert (hits[0].document, hits[0].page) == ("a.pdf", 2)
        assert len(lens.search("Which treaty ended the Thirty Years War?", k=6)) == 6
        again = lens.index(docs)
        assert again.pages_stored == 0 and {f.status for f in again.files} == {"skipped"}
        lens.remove("b.pdf")
        assert [d.name for d in lens.documents()] == ["a.pdf"]
    # Another process (here: another object) sees the same collection.
    with PageLens(spec, embedder=tiny_embedder) as lens:
        assert lens.store.stats().pages == 3
        hits = lens.search("Which treaty ended the Thirty Years War?", k=3, mode="hybrid")
        assert hits[0].document == "a.pdf"
