"""The remote embedder against real servers on loopback.

Three kinds of server: ``create_app`` around the fake embedder on uvicorn in a thread
(shapes, keys, model ids, batching); a small scripted endpoint built on ``http.server`` that
misbehaves on purpose (503 with Retry-After, dropped connections, a refused input, an outage);
and ``pagelens serve`` as a subprocess on the tiny GME checkpoint (the same vectors and
ranking as in-process, through the CLI; the server killed and restarted mid-run).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.server import create_app
from indexer import load_embedder
from indexer.errors import (
    EmbeddingError,
    EndpointError,
    ModelMismatchError,
    ModelNotAvailableError,
)
from indexer.model import FakeEmbedder
from indexer.model.remote import (
    RemoteEmbedder,
    api_base,
    load_remote_embedder,
    parse_retry_after,
    redact_url,
)
from indexer.pages import RenderSettings
from indexer.pipeline import Indexer
from indexer.store import Collection
from tests.test_server import live_server

ROOT = Path(__file__).resolve().parent.parent
#: Small pages (16 visual tokens) keep the model tests quick; the logic is the same.
TOKENS = 16


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def picture(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def fast(url: str, **options) -> RemoteEmbedder:
    """A remote embedder that retries quickly (tests must not wait for real backoffs)."""
    options.setdefault("backoff", 0.01)
    options.setdefault("max_backoff", 0.05)
    return load_remote_embedder(url, **options)


# --------------------------------------------------------------------------- fake-model server


@pytest.fixture(scope="module")
def fake_server() -> Iterator[str]:
    with live_server(create_app(FakeEmbedder(dim=32), max_wait_ms=1)) as url:
        yield url


def test_vectors_and_identity_equal_the_served_model(fake_server):
    local = FakeEmbedder(dim=32)
    remote = fast(fake_server, batch_size=3, concurrency=4)
    try:
        assert (remote.model_id, remote.dim) == ("pagelens/fake-embedder", 32)
        assert remote.max_image_tokens == local.max_image_tokens
        texts = [f"quarterly revenue {i} in region {i % 3}" for i in range(7)]
        images = [picture(i) for i in range(10)]
        assert cosines(remote.embed_texts(texts), local.embed_texts(texts)).min() >= 0.9999
        q = remote.embed_queries(texts[:2])
        assert q.shape == (2, 32) and q.dtype == np.float32
        assert cosines(q, local.embed_queries(texts[:2])).min() >= 0.9999
        pages = remote.embed_documents([picture(1)], texts=["a caption"])
        assert cosines(pages, local.embed_documents([picture(1)], texts=["a caption"]))[0] > 0.9999
        before = remote.stats["requests"]
        got = remote.embed_images(images)
        # 10 images, 3 per request: 4 requests, answered in input order.
        assert remote.stats["requests"] - before == 4
        assert cosines(got, local.embed_images(images)).min() >= 0.9999
        fused = remote.embed_fused(texts[:3], images[:3])
        assert cosines(fused, local.embed_fused(texts[:3], images[:3])).min() >= 0.9999
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert remote.embed_images([]).shape == (0, 32)
        assert remote.batch_hint == 12
    finally:
        remote.close()


def test_library_and_env_select_the_endpoint(fake_server, monkeypatch):
    monkeypatch.setenv("PAGELENS_EMBEDDER_URL", fake_server)
    monkeypatch.setenv("PAGELENS_EMBEDDER_BATCH", "5")
    monkeypatch.setenv("PAGELENS_EMBEDDER_CONCURRENCY", "2")
    embedder = load_embedder()  # no model named: the endpoint in the environment
    assert isinstance(embedder, RemoteEmbedder)
    assert (embedder.batch_size, embedder.concurrency, embedder.dim) == (5, 2, 32)
    embedder.close()
    by_url = load_embedder(fake_server + "/v1/")
    assert isinstance(by_url, RemoteEmbedder) and by_url.model_id == "pagelens/fake-embedder"
    by_url.close()
    with pytest.raises(Exception, match="remote embedder"):
        load_embedder(fake_server, quantize="int8")
    from app.web.services import AppSettings, ModelLoader

    settings = AppSettings.from_env()  # the web app: the endpoint stands in for the model
    app_model = ModelLoader(settings.model).wait(timeout=30)
    assert isinstance(app_model, RemoteEmbedder) and app_model.dim == 32
    app_model.close()
    from pagelens import PageLens

    monkeypatch.delenv("PAGELENS_EMBEDDER_URL")
    lens = PageLens("lib", embedder_url=fake_server)  # the library's front door
    assert isinstance(lens.embedder, RemoteEmbedder)
    lens.embedder.close()


def test_wrong_model_id_is_a_clear_error(fake_server):
    with pytest.raises(ModelNotAvailableError) as info:
        load_remote_embedder(fake_server, model="gme-Qwen2-VL-7B-Instruct")
    message = str(info.value)
    assert "gme-Qwen2-VL-7B-Instruct" in message and "pagelens/fake-embedder" in message
    # The last path part of a local folder names the same model, like collections do.
    same = load_remote_embedder(fake_server, model="/models/fake-embedder")
    assert same.model_id == "pagelens/fake-embedder"
    same.close()
    # A name the server knows as an alias of its model (asked with GET /v1/models/NAME).
    alias = load_remote_embedder(fake_server, model="/home/me/models/gme")
    assert (alias.model_id, alias.dim) == ("pagelens/fake-embedder", 32)
    alias.close()


def test_other_model_than_the_collection_fails_before_writing(fake_server, tmp_path, make_pdf):
    store = Collection(tmp_path / "c")
    store.bind_model("Alibaba-NLP/gme-Qwen2-VL-7B-Instruct", 3584)
    pdf = make_pdf("a.pdf", ["alpha", "beta"])
    remote = fast(fake_server)
    try:
        with pytest.raises(ModelMismatchError, match="gme-Qwen2-VL-7B-Instruct"):
            Indexer(store, remote, settings=RenderSettings(max_pixels=TOKENS * 784)).add([pdf])
        assert store.documents() == [] and store.stats().pages == 0
    finally:
        remote.close()
        store.close()


def test_identity_follows_the_served_weights(tmp_path):
    """Same name, other weights: refused before writing; same weights, any name: accepted."""
    served = FakeEmbedder(dim=8, model_id="gme-2b")
    served.fingerprint = "w1:" + "a" * 32
    with live_server(create_app(served, max_wait_ms=1)) as url:
        remote = load_remote_embedder(url)
        assert (remote.model_id, remote.fingerprint) == ("gme-2b", served.fingerprint)
        other = Collection(tmp_path / "other")
        other.bind_model("gme-2b", 8, fingerprint="w1:" + "b" * 32)
        with pytest.raises(ModelMismatchError):
            other.bind_embedder(remote)
        same = Collection(tmp_path / "same")
        same.bind_model("/models/renamed-folder", 8, fingerprint=served.fingerprint)
        same.bind_embedder(remote)  # no error: the same weights
        fresh = Collection(tmp_path / "fresh")
        fresh.bind_embedder(remote)
        assert fresh.model_fingerprint == served.fingerprint
        for store in (other, same, fresh):
            store.close()
        remote.close()


def test_api_key_right_wrong_and_missing(caplog, tmp_path, make_pdf):
    secret = "sk-right-key-123"
    app = create_app(FakeEmbedder(dim=16), api_key=secret, max_wait_ms=1)
    caplog.set_level("DEBUG")
    with live_server(app) as url:
        ok = fast(url, api_key=secret)
        assert ok.embed_texts(["hello"]).shape == (1, 16)
        assert secret not in repr(ok)
        store = Collection(tmp_path / "c")
        pdf = make_pdf("k.pdf", ["a page"])
        settings = RenderSettings(max_pixels=TOKENS * 784)
        assert Indexer(store, ok, settings=settings).add([pdf]).pages_embedded == 1
        # The key is nowhere in the collection: not in its metadata, not in any file.
        assert secret not in json.dumps(store.all_meta())
        store.close()
        for path in (tmp_path / "c").rglob("*"):
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path
        ok.close()
        for key, says in (("sk-wrong-key-456", "was refused"), ("", "needs a key")):
            with pytest.raises(EndpointError) as info:
                fast(url, api_key=key)
            assert says in str(info.value) and "401" in str(info.value)
            assert "sk-" not in str(info.value)
    assert secret not in caplog.text and "sk-wrong" not in caplog.text


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself (a private CA), and its key."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@contextlib.contextmanager
def live_tls_server(app, cert: Path, key: Path) -> Iterator[str]:
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "TLS server did not start"
        time.sleep(0.01)
    try:
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def test_https_endpoint(tmp_path, monkeypatch):
    cert, key = _self_signed(tmp_path)
    secret = "sk-tls-key-789"
    app = create_app(FakeEmbedder(dim=8), api_key=secret, max_wait_ms=1)
    with live_tls_server(app, cert, key) as url:
        # A certificate this computer does not trust: a clear error at once, no retries.
        started = time.monotonic()
        with pytest.raises(EndpointError, match="TLS certificate") as info:
            load_remote_embedder(url, api_key=secret)
        assert time.monotonic() - started < 5 and secret not in str(info.value)
        monkeypatch.setenv("PAGELENS_EMBEDDER_CA", str(cert))  # trust the private CA
        remote = load_remote_embedder(url, api_key=secret)
        local = FakeEmbedder(dim=8)
        images = [picture(3), picture(4)]
        assert cosines(remote.embed_documents(images), local.embed_documents(images)).min() > 0.9999
        remote.close()


def test_urls_and_retry_after_parsing():
    assert api_base("http://gpu:8000") == "http://gpu:8000/v1"
    assert api_base("HTTP://gpu:8000/") == "http://gpu:8000/v1"
    assert api_base("https://gpu/v1/") == "https://gpu/v1"
    assert api_base("https://host/compatible-mode/v1") == "https://host/compatible-mode/v1"
    for bad in ("ftp://gpu/v1", "gpu:8000", "http://", "http://gpu/v1?key=x"):
        with pytest.raises(EndpointError):
            api_base(bad)
    with pytest.raises(EndpointError, match="PAGELENS_API_KEY") as info:
        api_base("https://user:sk-secret@gpu/v1")
    assert "sk-secret" not in str(info.value)
    assert redact_url("https://user:pw@gpu:9/v1?k=1") == "https://gpu:9/v1"
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("soon") is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 <= parse_retry_after(later) <= 31
    from indexer.model.remote import MAX_RETRY_AFTER, RetryPolicy

    policy = RetryPolicy()  # the defaults: 0.5 s doubling to 30 s, with +-25% jitter
    assert 0.375 <= policy.delay(0) <= 0.625 and 0.75 <= policy.delay(1) <= 1.25
    assert 22.5 <= policy.delay(12) <= 37.5
    assert policy.delay(0, retry_after=3.0) == 3.0  # the server's word wins
    assert policy.delay(0, retry_after=1e9) == MAX_RETRY_AFTER


def test_image_budget_must_match_the_server():
    served = FakeEmbedder(dim=8)
    served.max_image_tokens = 256
    with live_server(create_app(served, max_wait_ms=1)) as url:
        with pytest.raises(EndpointError, match="256 visual tokens"):
            load_remote_embedder(url, max_image_tokens=1280)
        remote = load_remote_embedder(url)
        assert remote.max_image_tokens == 256  # pages get rendered for the server's budget
        remote.close()


# --------------------------------------------------------------------------- scripted endpoint


class ScriptedEndpoint:
    """A tiny OpenAI-compatible embeddings endpoint whose answers a test scripts.

    ``script(n, inputs)`` is called for the n-th (1-based) POST and returns ``"ok"``,
    ``"drop"`` (close the connection without answering), ``("status", code, headers)``, or
    ``("refuse", i)`` (400 naming ``input[i]``), ``("slow", s)`` (answer after s seconds).
    Vectors are the fake embedder's.
    """

    def __init__(self, script, *, model="gme-test", dim=24, key: str | None = None) -> None:
        self.script = script
        self.model, self.dim, self.key = model, dim, key
        self.embedder = FakeEmbedder(dim=dim, model_id=model)
        self.posts: list[tuple[float, int]] = []  # (time, number of inputs)
        self.lock = threading.Lock()

    def vectors(self, inputs: list) -> np.ndarray:
        rows = []
        for item in inputs:
            if isinstance(item, str):
                rows.append(self.embedder.embed_texts([item])[0])
                continue
            data = base64.b64decode(item["image"].split(",", 1)[1])
            image = Image.open(io.BytesIO(data))
            if item.get("text") is None:
                rows.append(self.embedder.embed_images([image])[0])
            else:
                rows.append(self.embedder.embed_fused([item["text"]], [image])[0])
        return np.stack(rows)

    @contextlib.contextmanager
    def serve(self) -> Iterator[str]:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def reply(self, status: int, body: dict, headers: dict | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def authorised(self) -> bool:
                if endpoint.key and self.headers.get("Authorization") != f"Bearer {endpoint.key}":
                    self.reply(401, {"error": {"message": "Invalid API key."}})
                    return False
                return True

            def do_GET(self) -> None:
                if not self.authorised():
                    return
                card = {"id": endpoint.model, "object": "model"}  # no dim: learnt by a probe
                self.reply(200, {"object": "list", "data": [card]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.authorised():
                    return
                with endpoint.lock:
                    endpoint.posts.append((time.monotonic(), len(body["input"])))
                    n = len(endpoint.posts)
                action = endpoint.script(n, body["input"])
                if isinstance(action, tuple) and action[0] == "slow":
                    time.sleep(action[1])  # longer than the client's timeout
                    action = "ok"
                if action == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, tuple) and action[0] == "status":
                    self.reply(action[1], {"error": {"message": "busy"}}, action[2])
                    return
                if isinstance(action, tuple) and action[0] == "refuse":
                    error = {"message": "bad image", "param": f"input[{action[1]}]"}
                    self.reply(400, {"error": error})
                    return
                vectors = endpoint.vectors(body["input"])
                data = [
                    {"object": "embedding", "index": i, "embedding": v.tolist()}
                    for i, v in enumerate(vectors)
                ]
                self.reply(200, {"object": "list", "data": data, "model": endpoint.model})

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()


def test_several_requests_are_in_flight_at_once():
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def script(n, inputs):
        if n == 1:
            return "ok"  # the dimension probe
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.3)  # a slow model: requests overlap if the client sends them together
        with lock:
            state["now"] -= 1
        return "ok"

    endpoint = ScriptedEndpoint(script)
    with endpoint.serve() as url:
        remote = fast(url, batch_size=2, concurrency=3)
        images = [picture(i) for i in range(6)]
        got = remote.embed_documents(images)
        remote.close()
    assert [n for _, n in endpoint.posts[1:]] == [2, 2, 2]  # several pages per request
    assert state["most"] == 3  # all three requests in flight together
    assert cosines(got, endpoint.embedder.embed_documents(images)).min() >= 0.9999


def test_429_and_503_with_retry_after_are_honoured_then_succeed():
    # The probe of the dimension is POST 1; POST 2 answers 429 and POST 3 503, both asking
    # for 1 s.
    def script(n, inputs):
        busy = {2: 429, 3: 503}
        return ("status", busy[n], {"Retry-After": "1"}) if n in busy else "ok"

    endpoint = ScriptedEndpoint(script)
    with endpoint.serve() as url:
        remote = fast(url)  # its own backoff is 10 ms: only Retry-After explains a 1 s wait
        assert remote.dim == 24  # learnt from the first response (the model card has no dim)
        images = [picture(i) for i in range(3)]
        got = remote.embed_images(images)
        remote.close()
    times = [t for t, _ in endpoint.posts]
    assert len(times) == 4
    assert times[2] - times[1] >= 0.95 and times[3] - times[2] >= 0.95
    assert cosines(got, endpoint.embedder.embed_images(images)).min() >= 0.9999
    assert remote.stats["retries"] == 2


def test_dropped_connections_are_retried():
    def script(n, inputs):
        return "drop" if n in (2, 3, 4) else "ok"

    endpoint = ScriptedEndpoint(script)
    with endpoint.serve() as url:
        remote = fast(url)
        got = remote.embed_texts(["revenue", "pump"])
        remote.close()
    assert remote.stats["retries"] == 3
    assert cosines(got, endpoint.embedder.embed_texts(["revenue", "pump"])).min() >= 0.9999


def test_timeouts_are_retried():
    endpoint = ScriptedEndpoint(lambda n, inputs: ("slow", 1.5) if n == 2 else "ok")
    with endpoint.serve() as url:
        remote = fast(url, timeout=0.5)
        got = remote.embed_texts(["revenue"])
        remote.close()
    assert remote.stats["retries"] == 1 and len(endpoint.posts) == 3
    assert cosines(got, endpoint.embedder.embed_texts(["revenue"]))[0] >= 0.9999


def test_a_redirect_is_named_not_followed():
    moved = ("status", 308, {"Location": "https://gpu.example/v1/embeddings"})
    endpoint = ScriptedEndpoint(lambda n, inputs: moved)
    with endpoint.serve() as url:
        with pytest.raises(EndpointError, match="redirects to https://gpu.example/v1"):
            fast(url)
    assert len(endpoint.posts) == 1  # not retried, not followed


def test_retries_run_out_with_a_named_error():
    endpoint = ScriptedEndpoint(lambda n, inputs: "ok" if n == 1 else ("status", 502, {}))
    with endpoint.serve() as url:
        remote = fast(url, retries=2, batch_size=2, concurrency=2)
        with pytest.raises(EmbeddingError) as info:
            remote.embed_texts(["a", "b", "c"])
        remote.close()
    assert info.value.retryable and sorted(info.value.failed) == [0, 1, 2]
    assert "HTTP 502" in str(info.value)
    assert len(endpoint.posts) == 1 + 2 * 3  # probe, then 2 requests x (1 try + 2 retries)


def _closed_port_url() -> str:
    """A loopback address where nothing listens: connecting is refused at once."""
    return f"http://127.0.0.1:{_free_port()}"


def test_refused_connection_is_retried_for_index_runs_but_not_for_queries():
    """Index runs ride out a server restarting (patient retries); a query (``fail_fast``)
    gives up on the first refused connection."""
    url = _closed_port_url()
    waits: list[float] = []
    patient = RemoteEmbedder(url, retries=3, backoff=0.01, max_backoff=0.05, sleep=waits.append)
    with pytest.raises(EmbeddingError) as info:
        patient.embed_texts(["a"])
    patient.close()
    assert patient.stats["retries"] == 3 and len(waits) == 3  # the whole budget
    assert info.value.retryable

    waits.clear()
    started = time.monotonic()
    quick = RemoteEmbedder(url, retries=8, fail_fast=True, sleep=waits.append)
    with pytest.raises(EmbeddingError) as info:
        quick.embed_queries(["a"])
    quick.close()
    assert quick.stats == {"requests": 1, "retries": 0, "inputs": 0} and waits == []
    assert time.monotonic() - started < 5
    assert "connection refused" in str(info.value) and url in str(info.value)

    # What the CLI loads for a query: refused while reading the model card, one clean error.
    with pytest.raises(EndpointError, match="connection refused"):
        load_embedder(embedder_url=url, fail_fast=True)


@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_search_against_a_dead_endpoint_fails_in_seconds(tmp_path, make_pdf, monkeypatch, how):
    """``pagelens search`` with ``--embedder`` / ``PAGELENS_EMBEDDER_URL`` naming a closed
    port: exit 1 within seconds, one line naming the address, no traceback (the default
    retry budget would keep a person waiting ~1.5 min)."""
    from app.cli import cli

    coll = tmp_path / "c"
    store = Collection(coll)
    Indexer(store, None, settings=RenderSettings.for_tokens(TOKENS)).add(
        [make_pdf("doc.pdf", ["alpha beta"])]
    )
    store.close()
    url = _closed_port_url()
    monkeypatch.delenv("PAGELENS_EMBEDDER_RETRIES", raising=False)
    if how == "env":
        monkeypatch.setenv("PAGELENS_EMBEDDER_URL", url)
        argv = ["-c", str(coll), "search", "alpha"]
    else:
        monkeypatch.delenv("PAGELENS_EMBEDDER_URL", raising=False)
        argv = ["--embedder", url, "-c", str(coll), "search", "alpha"]
    started = time.monotonic()
    result = CliRunner().invoke(cli, argv)
    elapsed = time.monotonic() - started
    assert result.exit_code == 1, result.output
    assert elapsed < 10, elapsed
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "connection refused" in errors[0] and url in errors[0]
    assert "Traceback" not in result.output


def _page_vectors(store: Collection) -> dict[tuple[str, int], np.ndarray]:
    out = {}
    for doc in store.documents():
        for page in store.pages(doc.id):
            vec = store.vector(page.id)
            if vec is not None:
                out[(doc.name, page.number)] = vec
    return out


def test_failed_pages_stay_pending_are_named_and_filled_in_later(tmp_path, make_pdf):
    """A refused page and an outage: nothing stored without a vector; the next run fills in."""
    state = {"down": False}

    def script(n, inputs):
        if state["down"]:
            return ("status", 503, {})
        if n == 2:  # the first page request: the server refuses its second image
            return ("refuse", 1)
        return "ok"

    endpoint = ScriptedEndpoint(script)
    docs = [make_pdf("one.pdf", [f"page {i} of one" for i in range(4)])]
    docs.append(make_pdf("two.pdf", [f"page {i} of two" for i in range(4)]))
    settings = RenderSettings(max_pixels=TOKENS * 784)
    store = Collection(tmp_path / "c")
    with endpoint.serve() as url:
        remote = fast(url, retries=1, batch_size=2, concurrency=1)
        indexer = Indexer(store, remote, settings=settings, batch_size=2)
        assert indexer.batch_size == 2  # batch_hint: 2 per request x 1 in flight

        calls = {"n": 0}
        real = remote.embed_images

        def outage_after_two_calls(images, **kw):
            calls["n"] += 1
            if calls["n"] == 3:
                state["down"] = True  # the endpoint goes away for the rest of this run
            return real(images, **kw)

        remote.embed_images = outage_after_two_calls
        report = indexer.add(docs)
        named = {(f["document"], f["page"]) for f in report.failed}
        # Page 2 of one.pdf was refused; the outage hit the third batch (two.pdf p1-2).
        assert named == {("one.pdf", 2), ("two.pdf", 1), ("two.pdf", 2)}
        assert all(f["reason"] for f in report.failed)
        assert report.stopped and "503" in report.stopped
        stats = store.stats()
        assert (stats.pages, stats.pending) == (8, 5)  # the last batch was never sent
        stored = _page_vectors(store)
        assert set(stored) == {("one.pdf", 1), ("one.pdf", 3), ("one.pdf", 4)}

        state["down"] = False
        remote.embed_images = real
        again = Indexer(store, remote, settings=settings).add(docs)
        assert again.failed == [] and again.stopped is None
        assert again.pages_stored == 0  # files were complete: nothing re-rendered
        assert again.pages_embedded + again.pages_reused == 5
        remote.close()
    stats = store.stats()
    assert (stats.documents, stats.pages, stats.pending) == (2, 8, 0)
    vectors = _page_vectors(store)
    assert len(vectors) == 8
    from indexer.maintenance.check import check

    assert check(store).ok
    store.close()


def test_app_job_names_failed_pages(tmp_path, make_pdf):
    """The web app's background embedding says which pages got no vector, and why."""
    from app.web.services import EmbedJob, ModelLoader

    endpoint = ScriptedEndpoint(lambda n, inputs: "ok" if n == 1 else ("status", 503, {}))
    store = Collection(tmp_path / "c")
    pdf = make_pdf("app.pdf", ["alpha", "beta"])
    Indexer(store, None, settings=RenderSettings(max_pixels=TOKENS * 784)).add([pdf], embed=False)
    with endpoint.serve() as url:
        remote = fast(url, retries=0)
        job = EmbedJob(store, ModelLoader(loader=lambda *a, **k: remote))
        assert job.start()
        job._thread.join(30)
        remote.close()
    assert job.state == "failed"
    assert "app.pdf p.1" in job.error and "stay pending" in job.error
    assert store.stats().pending == 2
    store.close()


def test_cli_names_failed_pages_and_exits_1(tmp_path, make_pdf, monkeypatch):
    from app.cli import cli

    endpoint = ScriptedEndpoint(lambda n, inputs: "ok" if n == 1 else ("status", 503, {}))
    pdf = make_pdf("doc.pdf", ["alpha", "beta"])
    monkeypatch.setenv("PAGELENS_EMBEDDER_RETRIES", "0")
    with endpoint.serve() as url:
        result = CliRunner().invoke(
            cli, ["--embedder", url, "-c", str(tmp_path / "c"), "index", str(pdf)]
        )
    assert result.exit_code == 1, result.output
    assert "not embedded  doc.pdf p.1" in result.output
    assert "2 page(s) are still waiting for vectors" in result.output


def test_cli_wrong_key_is_one_clean_line(tmp_path, make_pdf, monkeypatch):
    from app.cli import cli

    endpoint = ScriptedEndpoint(lambda n, inputs: "ok", key="sk-server-side")
    monkeypatch.setenv("PAGELENS_API_KEY", "sk-client-wrong")
    pdf = make_pdf("doc.pdf", ["alpha"])
    with endpoint.serve() as url:
        result = CliRunner().invoke(
            cli, ["--embedder", url, "-c", str(tmp_path / "c"), "index", str(pdf)]
        )
    assert result.exit_code == 1, result.output
    assert "refused the request (HTTP 401)" in result.output
    assert "sk-" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c" / "pages").exists() or not any((tmp_path / "c" / "pages").iterdir())


def test_serve_can_front_a_remote_embedder(fake_server, monkeypatch):
    """``pagelens --embedder URL serve``: a gateway whose vectors are the endpoint's."""
    from fastapi.testclient import TestClient

    from app.cli import cli

    calls: dict = {}
    monkeypatch.setattr("uvicorn.run", lambda a, **kw: calls.update(app=a, **kw))
    result = CliRunner().invoke(cli, ["--embedder", fake_server, "serve", "--port", "8125"])
    assert result.exit_code == 0, result.output
    gateway = calls["app"]
    assert isinstance(gateway.state.embedder, RemoteEmbedder)
    with TestClient(gateway, base_url="http://127.0.0.1:8125") as client:
        card = client.get("/v1/models").json()["data"][0]
        assert (card["id"], card["dim"]) == ("pagelens/fake-embedder", 32)
        body = {"model": card["id"], "input": ["pump seal"], "encoding_format": "float"}
        got = client.post("/v1/embeddings", json=body).json()["data"][0]["embedding"]
    assert cosines([got], FakeEmbedder(dim=32).embed_texts(["pump seal"]))[0] >= 0.9999
    gateway.state.embedder.close()


# --------------------------------------------------------------------------- pagelens serve


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(model_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    env.pop("PAGELENS_API_KEY", None)
    argv = [sys.executable, "-c", "from app.cli import main; main()", "--model", str(model_dir)]
    argv += ["--device", "cpu"]
    argv += ["--image-tokens", str(TOKENS), "serve", "--port", str(port), "--max-wait-ms", "1"]
    return subprocess.Popen(
        [*argv, *extra],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def wait_healthy(proc: subprocess.Popen, url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pagelens serve died: {proc.stderr.read().decode()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("pagelens serve did not start")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


class Served:
    """One ``pagelens serve`` process on a fixed port, which a test may kill and restart."""

    def __init__(self, model_dir: Path) -> None:
        self.model_dir = model_dir
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = start_serve(model_dir, self.port)
        self.restarts = 0

    def kill_and_restart(self) -> None:
        """SIGKILL the server and start a new one on the same port (without waiting for it)."""
        stop(self.proc)
        self.proc = start_serve(self.model_dir, self.port)
        self.restarts += 1


@pytest.fixture(scope="module")
def served(tiny_model_dir) -> Iterator[Served]:
    server = Served(tiny_model_dir)
    try:
        wait_healthy(server.proc, server.url)
        yield server
    finally:
        stop(server.proc)


@pytest.fixture
def serve_url(served) -> str:
    wait_healthy(served.proc, served.url)  # a test before may have restarted it
    return served.url


@pytest.fixture(scope="module")
def local16(tiny_model_dir):
    """The same tiny model in-process, at the same visual-token budget as the server."""
    return load_embedder(tiny_model_dir, device="cpu", max_image_tokens=TOKENS)


def test_cli_index_and_search_through_pagelens_serve_equal_in_process(
    serve_url, local16, tmp_path, make_pdf
):
    from app.cli import cli
    from retriever.search import Retriever

    topics = [
        "quarterly revenue grew in Europe",
        "replace the hydraulic pump seal",
        "photosynthesis in green leaves",
        "the churn rate fell in 2023",
        "safety instructions for the ladder",
    ]
    one = make_pdf("one.pdf", topics[:3])
    two = make_pdf("two.pdf", topics[3:])
    runner = CliRunner()
    remote_dir = tmp_path / "remote"
    base = ["--embedder", serve_url, "-c", str(remote_dir)]
    result = runner.invoke(cli, [*base, "index", str(one), str(two), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["pages_embedded"] == 5 and report["failed"] == [] and report["pending"] == 0

    local_store = Collection(tmp_path / "local")
    Indexer(local_store, local16).add([one, two])
    remote_store = Collection(remote_dir, create=False)
    assert remote_store.render_settings() == local_store.render_settings()
    got, want = _page_vectors(remote_store), _page_vectors(local_store)
    assert set(got) == set(want) and len(got) == 5
    keys = sorted(want)
    assert cosines([got[k] for k in keys], [want[k] for k in keys]).min() >= 0.9999
    # The same identity: the served weights' fingerprint is the local model's.
    assert local16.fingerprint and remote_store.model_fingerprint == local16.fingerprint
    assert remote_store.model_fingerprint == local_store.model_fingerprint
    assert remote_store.same_model(
        local_store.model_id, local_store.dim, fingerprint=local_store.model_fingerprint
    )
    remote_store.close()

    local_retriever = Retriever(local16, local_store)
    for question in ("hydraulic pump", "churn in 2023"):
        result = runner.invoke(cli, [*base, "search", question, "-k", "5", "--json"])
        assert result.exit_code == 0, result.output
        hits = json.loads(result.stdout)["hits"]
        expected = local_retriever.search(question, 5)
        assert [(h["document"], h["page"]) for h in hits] == [
            (h.document, h.page) for h in expected
        ]
        assert np.allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-4)

    # A collection built in-process takes remote vectors (same model, same identity).
    more = make_pdf("three.pdf", ["a third document about ladders"])
    mixed = ["-c", str(tmp_path / "local"), "--embedder", serve_url]
    local_store.close()
    result = runner.invoke(cli, [*mixed, "index", str(more)])
    assert result.exit_code == 0, result.output


def test_server_killed_and_restarted_mid_run_resumes(
    served, serve_url, local16, tmp_path, make_pdf
):
    docs = [make_pdf(f"d{i}.pdf", [f"document {i} page {j}" for j in range(3)]) for i in range(3)]
    store = Collection(tmp_path / "c")
    # Retries for long enough to cover the restart (the server needs seconds to load).
    remote = load_remote_embedder(
        serve_url, batch_size=2, concurrency=1, retries=120, backoff=0.2, max_backoff=1.0
    )
    indexer = Indexer(store, remote, batch_size=2)
    restarts = served.restarts

    def progress(p) -> None:
        if p.phase == "vectors" and p.done >= 2 and served.restarts == restarts:
            served.kill_and_restart()  # mid-run: the next request finds nobody there

    report = indexer.add(docs, progress=progress)
    remote.close()
    assert served.restarts == restarts + 1, "the server was never killed"
    assert remote.stats["retries"] >= 1
    assert report.failed == [] and report.stopped is None and report.pending == 0
    assert report.pages_embedded == 9
    stats = store.stats()
    assert (stats.documents, stats.pages, stats.pending) == (3, 9, 0)
    got = _page_vectors(store)
    local_store = Collection(tmp_path / "local")
    Indexer(local_store, local16).add(docs)
    want = _page_vectors(local_store)
    keys = sorted(want)
    assert sorted(got) == keys
    assert cosines([got[k] for k in keys], [want[k] for k in keys]).min() >= 0.9999
    from indexer.maintenance.check import check

    assert check(store).ok
    store.close()
    local_store.close()
