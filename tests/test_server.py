"""The HTTP API (app/server/): OpenAI shapes, multimodal inputs, search, errors, auth, SSRF.

Most tests use FakeEmbedder through FastAPI's TestClient (fast). The official ``openai``
client talks to a live uvicorn server running the tiny random-weight GME checkpoint, and its
vectors are compared with the library's ``embed_*`` calls.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app.server import UrlImageFetcher, create_app
from indexer.model import QUERY_INSTRUCTION, FakeEmbedder

# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """Run ``app`` on uvicorn in a background thread on a free loopback port; yields the URL."""
    import uvicorn

    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on such sockets, and without
    # it every response waits ~40 ms (Nagle + delayed ACK). uvicorn's own binding does this.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def png_bytes(size=(40, 30), color=(200, 30, 30), mode="RGB") -> bytes:
    image = Image.new(mode, size, color)
    for x in range(0, size[0], 4):  # some structure, so images differ by more than colour
        image.putpixel((x, x % size[1]), (0, 0, 0) if mode == "RGB" else 0)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def open_png(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    im.load()
    return im


class RecordingEmbedder(FakeEmbedder):
    """FakeEmbedder that remembers the instruction of every call."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.instructions: list[tuple[str, str | None]] = []

    def embed_texts(self, texts, *, instruction=None):
        self.instructions.append(("texts", instruction))
        return super().embed_texts(texts, instruction=instruction)

    def embed_images(self, images, *, instruction=None):
        self.instructions.append(("images", instruction))
        return super().embed_images(images, instruction=instruction)

    def embed_fused(self, texts, images, *, instruction=None):
        self.instructions.append(("fused", instruction))
        return super().embed_fused(texts, images, instruction=instruction)


@pytest.fixture
def fake():
    return RecordingEmbedder()


@pytest.fixture
def client(fake) -> Iterator[TestClient]:
    with TestClient(create_app(fake, max_wait_ms=1)) as c:
        yield c


def embed(client: TestClient, **body):
    body.setdefault("model", "pagelens/fake-embedder")
    return client.post("/v1/embeddings", json=body)


def assert_error(response, status: int, *, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if status < 500:
        assert error["type"] == "invalid_request_error"
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# --------------------------------------------------------------------------- embeddings


def test_text_embeddings_match_library_in_float_and_base64(client, fake):
    texts = ["quarterly revenue grew", "the hydraulic pump", "churn rose to nine percent"]
    expected = FakeEmbedder().embed_texts(texts)
    r = embed(client, input=texts)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == "pagelens/fake-embedder"
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" for d in body["data"])
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_array_equal(got, expected)
    # FakeEmbedder has no tokenizer: one token per word or punctuation mark
    assert body["usage"] == {"prompt_tokens": 11, "total_tokens": 11}

    b64 = embed(client, input=texts, encoding_format="base64").json()
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]]
    )
    np.testing.assert_array_equal(decoded, expected)

    single = embed(client, input="the hydraulic pump").json()
    assert len(single["data"]) == 1
    np.testing.assert_array_equal(np.float32(single["data"][0]["embedding"]), expected[1])


def test_image_and_fused_items_and_instructions(client, fake):
    png = png_bytes()
    image = open_png(png)
    r = embed(
        client,
        input=[
            {"image": data_url(png)},
            {"text": "a red chart", "image": data_url(png)},
            "words",
            {"text": "only text"},
        ],
    )
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float32)
    ref = FakeEmbedder()
    np.testing.assert_array_equal(got[0], ref.embed_images([image])[0])
    np.testing.assert_array_equal(got[1], ref.embed_fused(["a red chart"], [image])[0])
    np.testing.assert_array_equal(got[2], ref.embed_texts(["words"])[0])
    np.testing.assert_array_equal(got[3], ref.embed_texts(["only text"])[0])
    assert {kind for kind, _ in fake.instructions} == {"texts", "images", "fused"}
    assert all(instr is None for _, instr in fake.instructions)

    fake.instructions.clear()
    assert embed(client, input=["q"], input_type="query").status_code == 200
    assert fake.instructions == [("texts", QUERY_INSTRUCTION)]
    fake.instructions.clear()
    assert embed(client, input=["d"], input_type="document").status_code == 200
    assert embed(client, input=["c"], instruction="Find the invoice.").status_code == 200
    assert fake.instructions == [("texts", None), ("texts", "Find the invoice.")]
    assert_error(
        embed(client, input=["x"], instruction="a", input_type="query"), 400, param="instruction"
    )


def test_dimensions_truncate_and_renormalise(client):
    png = data_url(png_bytes())  # an image spreads over all dimensions
    full = np.float32(embed(client, input=[{"image": png}]).json()["data"][0]["embedding"])
    r = embed(client, input=[{"image": png}], dimensions=16)
    cut = np.float32(r.json()["data"][0]["embedding"])
    assert cut.shape == (16,)
    np.testing.assert_allclose(cut, full[:16] / np.linalg.norm(full[:16]), rtol=1e-5)
    assert abs(np.linalg.norm(cut) - 1) < 1e-5
    assert_error(embed(client, input="pump", dimensions=65), 400, param="dimensions")
    assert_error(embed(client, input="pump", dimensions=0), 400, param="dimensions")


def test_models_health_and_openapi(client):
    models = client.get("/v1/models").json()
    assert models == {
        "object": "list",
        "data": [
            {
                "id": "pagelens/fake-embedder",
                "object": "model",
                "created": 0,
                "owned_by": "pagelens",
                # What a remote PageLens client needs for identical vectors.
                "dim": 64,
                "max_image_tokens": 1280,
            }
        ],
    }
    assert client.get("/v1/models/fake-embedder").json()["id"] == "pagelens/fake-embedder"
    assert_error(client.get("/v1/models/text-embedding-3-small"), 404, code="model_not_found")
    embed(client, input=["a", "b"])
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["model"] == "pagelens/fake-embedder"
    assert health["dim"] == 64 and health["batches"] >= 1 and health["max_batch_seen"] >= 2
    schema = client.get("/openapi.json").json()
    assert {
        "/v1/embeddings",
        "/v1/search",
        "/v1/models",
        "/health",
        "/v1/pages/{page_id}/image",
    } <= set(schema["paths"])


@pytest.mark.parametrize(
    "model",
    [
        "pagelens/fake-embedder",
        "fake-embedder",
        "FAKE-EMBEDDER",
        "pagelens",
        "gme-Qwen2-VL-2B-Instruct",
        "Alibaba-NLP/gme-Qwen2-VL-2B-Instruct",
    ],
)
def test_model_names_accepted(client, model):
    assert embed(client, model=model, input="x").status_code == 200


def test_unknown_model_is_404(client):
    assert_error(
        embed(client, model="text-embedding-3-small", input="x"),
        404,
        code="model_not_found",
        param="model",
    )


def test_bad_requests_are_openai_errors(client):
    r = client.post(
        "/v1/embeddings",
        content=b'{"model": "pagelens", "input": [',
        headers={"content-type": "application/json"},
    )
    assert_error(r, 400, code="invalid_json")
    assert_error(client.post("/v1/embeddings", json={"input": "x"}), 400, param="model")
    assert_error(embed(client, input=""), 400, code="empty_input", param="input")
    assert_error(embed(client, input=[]), 400, code="empty_input")
    assert_error(embed(client, input=["ok", "  "]), 400, code="empty_input", param="input[1]")
    assert_error(embed(client, input=["x"] * 257), 400, code="too_many_inputs")
    assert_error(embed(client, input=[[1, 2, 3]]), 400)  # token arrays are not supported
    assert_error(embed(client, input=[{}]), 400, param="input[0]")
    assert_error(embed(client, input=[{"text": "a", "video": "b"}]), 400)
    assert_error(embed(client, input="x", encoding_format="int8"), 400)
    assert_error(embed(client, input="x" * 70_000), 400, code="context_length_exceeded")
    assert_error(client.get("/v1/nothing"), 404)


def test_bad_images_are_refused(client):
    ok = data_url(png_bytes())
    assert embed(client, input=[{"image": ok}]).status_code == 200
    assert_error(
        embed(client, input=[{"image": data_url(b"not an image at all")}]),
        400,
        code="invalid_image",
        param="input[0].image",
    )
    assert_error(
        embed(client, input=["x", {"image": "data:image/png;base64,@@@"}]),
        400,
        code="invalid_image",
        param="input[1].image",
    )
    assert_error(
        embed(client, input=[{"image": "data:image/png,rawbytes"}]), 400, code="invalid_image"
    )
    assert_error(embed(client, input=[{"image": "/etc/passwd"}]), 400, code="invalid_image")
    assert_error(embed(client, input=[{"image": "file:///etc/passwd"}]), 400, code="invalid_image")


def test_oversized_images_are_refused(fake):
    app = create_app(fake, max_image_bytes=10_000, max_image_pixels=100_000, max_wait_ms=1)
    with TestClient(app) as c:
        big_bytes = np.random.default_rng(0).integers(0, 255, (80, 80, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(big_bytes).save(buf, format="PNG")  # noise: ~19 kB
        assert len(buf.getvalue()) > 10_000
        assert_error(
            embed(c, input=[{"image": data_url(buf.getvalue())}]), 400, code="image_too_large"
        )
        many_pixels = png_bytes(size=(1000, 200), color=(255, 255, 255))  # small file
        assert len(many_pixels) < 10_000
        assert_error(
            embed(c, input=[{"image": data_url(many_pixels)}]), 400, code="image_too_large"
        )
        assert embed(c, input=[{"image": data_url(png_bytes())}]).status_code == 200


def test_full_queue_answers_503_with_retry_after():
    gate, entered = threading.Event(), threading.Event()

    class Blocking(FakeEmbedder):
        def embed_texts(self, texts, *, instruction=None):
            entered.set()
            gate.wait(10)
            return super().embed_texts(texts, instruction=instruction)

    app = create_app(Blocking(), max_batch=1, max_wait_ms=0, max_queue=2)
    with TestClient(app) as c:
        results = []
        first = threading.Thread(target=lambda: results.append(embed(c, input="a")))
        first.start()
        batcher = app.state.batcher
        assert entered.wait(10)  # the worker holds "a" and is blocked in the model
        deadline = time.monotonic() + 10
        second = threading.Thread(target=lambda: results.append(embed(c, input=["b", "c"])))
        second.start()
        while batcher.queued() < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        full = embed(c, input="d")
        assert_error(full, 503, code="server_overloaded")
        assert full.json()["error"]["type"] == "server_error"
        assert full.headers["retry-after"] == "1"
        gate.set()
        first.join(10)
        second.join(10)
        assert sorted(r.status_code for r in results) == [200, 200]
        assert embed(c, input="e").status_code == 200


def test_api_key_guards_everything_but_health(fake):
    with TestClient(create_app(fake, api_key="s3cret", max_wait_ms=1)) as c:
        assert c.get("/health").status_code == 200
        for method, path in [
            ("GET", "/v1/models"),
            ("POST", "/v1/embeddings"),
            ("POST", "/v1/search"),
            ("GET", "/v1/pages/1/image"),
            ("GET", "/openapi.json"),
        ]:
            assert_error(c.request(method, path), 401, code="invalid_api_key")
        wrong = {"Authorization": "Bearer nope"}
        body = {"model": "pagelens", "input": "x"}
        assert_error(c.post("/v1/embeddings", json=body, headers=wrong), 401)
        assert_error(c.get("/v1/models", headers={"Authorization": "s3cret"}), 401)
        good = {"Authorization": "Bearer s3cret"}
        r = c.post("/v1/embeddings", json={"model": "pagelens", "input": "x"}, headers=good)
        assert r.status_code == 200
        assert c.get("/v1/models", headers=good).status_code == 200


# --------------------------------------------------------------------------- SSRF


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x.png",
        "http://127.0.0.1:8000/health",
        "http://localhost/x.png",
        "http://LOCALHOST:9/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "http://10.1.2.3/x.png",
        "http://172.16.0.1/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/x.png",
        "http://[fe80::1]/x.png",
        "http://[fd00::1]/x.png",
        "http://224.0.0.1/x.png",
        "https://127.0.0.1/x.png",
        "http://2130706433/x.png",  # 127.0.0.1 as one number
    ],
)
def test_url_images_to_private_addresses_are_refused(fake, url):
    with TestClient(create_app(fake, allow_url_images=True, max_wait_ms=1)) as c:
        error = assert_error(embed(c, input=[{"image": url}]), 400, param="input[0].image")
        assert error["code"] in ("image_url_not_allowed", "invalid_image_url")


def test_url_images_are_off_by_default(client):
    assert_error(
        embed(client, input=[{"image": "http://93.184.216.34/x.png"}]),
        400,
        code="image_url_not_allowed",
    )
    assert_error(client.post("/v1/search", json={"image": "http://93.184.216.34/x.png"}), 404)


class _ImageHandler(http.server.BaseHTTPRequestHandler):
    png = png_bytes()

    def do_GET(self):  # noqa: N802
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(self.png)))
            self.end_headers()
            self.wfile.write(self.png)
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", "http://" + self.path[len("/to/") :])
            self.end_headers()
        elif self.path == "/big.png":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 300_000)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


class _TestFetcher(UrlImageFetcher):
    """Treats the name ``images.test`` as a public host (at 127.0.0.1); all else as usual."""

    def allowed_addresses(self, host, port):
        if host == "images.test":
            return [ipaddress.ip_address("127.0.0.1")]
        return super().allowed_addresses(host, port)


def test_url_fetch_pins_checked_address_and_rechecks_redirects(fake):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHandler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        app = create_app(
            fake, url_fetcher=_TestFetcher(timeout=5), max_wait_ms=1, max_image_bytes=100_000
        )
        with TestClient(app) as c:
            good = embed(c, input=[{"image": f"http://images.test:{port}/img.png"}])
            assert good.status_code == 200, good.text
            expected = FakeEmbedder().embed_images([open_png(_ImageHandler.png)])[0]
            np.testing.assert_array_equal(np.float32(good.json()["data"][0]["embedding"]), expected)
            # a redirect to another allowed name is followed ...
            hop = f"http://images.test:{port}/to/images.test:{port}/img.png"
            assert embed(c, input=[{"image": hop}]).status_code == 200
            # ... but one to a loopback name or address is checked again and refused
            for target in (f"127.0.0.1:{port}/img.png", f"localhost:{port}/img.png"):
                bad = embed(c, input=[{"image": f"http://images.test:{port}/to/{target}"}])
                assert_error(bad, 400, code="image_url_not_allowed")
            assert_error(
                embed(c, input=[{"image": f"http://images.test:{port}/big.png"}]),
                400,
                code="image_too_large",
            )
            assert_error(
                embed(c, input=[{"image": f"http://images.test:{port}/nope"}]),
                400,
                code="invalid_image_url",
            )
    finally:
        server.shutdown()


# --------------------------------------------------------------------------- search


@pytest.fixture
def indexed(make_pdf, _isolated_home):
    """A collection 'reports' under PAGELENS_HOME, embedded with FakeEmbedder."""
    from indexer.pipeline import Indexer
    from indexer.store import Collection

    pdf = make_pdf(
        "report.pdf",
        [
            "Quarterly revenue grew in Europe.",
            "Customer churn in 2023 rose to nine percent.",
            "Replace the hydraulic pump every year.",
        ],
    )
    make_pdf("manual.pdf", ["Torque settings for bolts."])
    store = Collection(_isolated_home / "reports")
    Indexer(store, FakeEmbedder()).add([pdf.parent])
    store.close()
    return "reports"


def test_search_and_page_images(client, indexed):
    r = client.post("/v1/search", json={"query": "churn in 2023", "k": 3, "collection": indexed})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pending"] == 0 and len(body["hits"]) == 3
    hit = body["hits"][0]
    assert {"document", "page", "score", "page_id", "snippet", "image_url"} <= set(hit)
    assert hit["image_url"] == f"/v1/pages/{hit['page_id']}/image?collection=reports"
    scores = [h["score"] for h in body["hits"]]
    assert scores == sorted(scores, reverse=True)
    image = client.get(hit["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert open_png(image.content).width > 0

    text = client.post(
        "/v1/search", json={"query": "nine percent", "mode": "text", "collection": indexed}
    ).json()
    assert (text["hits"][0]["document"], text["hits"][0]["page"]) == ("report.pdf", 2)
    only = client.post(
        "/v1/search",
        json={"query": "pump", "k": 10, "collection": indexed, "documents": ["manual.pdf"]},
    ).json()
    assert {h["document"] for h in only["hits"]} == {"manual.pdf"}
    pages = client.post(
        "/v1/search", json={"query": "pump", "k": 10, "collection": indexed, "pages": "2-3"}
    ).json()
    assert pages["hits"] and all(2 <= h["page"] <= 3 for h in pages["hits"])
    by_image = client.post(
        "/v1/search", json={"image": data_url(image.content), "k": 2, "collection": indexed}
    )
    assert by_image.status_code == 200 and by_image.json()["hits"][0]["page_id"] == hit["page_id"]


def test_search_errors(client, indexed):
    def search(**body):
        return client.post("/v1/search", json=body)

    for bad in ("../reports", "/tmp", "a/b", ".hidden", "~", "..", "x\\y"):
        assert_error(
            search(query="x", collection=bad), 400, param="collection", code="invalid_collection"
        )
    assert_error(search(query="x", collection="nope"), 404, code="collection_not_found")
    assert_error(search(query="x"), 404, code="collection_not_found")  # no 'default' yet
    assert_error(search(collection=indexed), 400, code="invalid_query")
    assert_error(search(query="x", collection=indexed, k=0), 400, param="k")
    assert_error(search(query="x", collection=indexed, mode="fuzzy"), 400, param="mode")
    assert_error(search(query="x", collection=indexed, pages="7-3"), 400)
    assert_error(
        search(query="x", collection=indexed, documents=["ghost.pdf"]),
        404,
        code="document_not_found",
    )
    assert_error(
        search(query="x", collection=indexed, image="data:image/png;base64,AAAA"),
        400,
        param="image",
    )
    assert_error(client.get("/v1/pages/99999/image?collection=reports"), 404, code="page_not_found")
    assert_error(client.get("/v1/pages/1/image?collection=../etc"), 400)


def test_search_model_mismatch(indexed):
    with TestClient(create_app(FakeEmbedder(model_id="other/model"), max_wait_ms=1)) as c:
        r = c.post("/v1/search", json={"query": "x", "collection": indexed})
        assert_error(r, 409, code="model_mismatch")


# --------------------------------------------------------------------------- CLI


def test_serve_command_builds_the_app(monkeypatch):
    from typer.testing import CliRunner

    import app.cli.common
    from app.cli import cli

    calls = {}
    monkeypatch.setattr(app.cli.common.Options, "embedder", lambda self: FakeEmbedder())
    monkeypatch.setattr("uvicorn.run", lambda a, **kw: calls.update(app=a, **kw))
    monkeypatch.setenv("PAGELENS_API_KEY", "k")
    result = CliRunner().invoke(
        cli,
        [
            "serve",
            "--port",
            "8123",
            "--max-batch",
            "4",
            "--max-wait-ms",
            "3",
            "--max-queue",
            "9",
            "--allow-url-images",
        ],
    )
    assert result.exit_code == 0, result.output
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8123
    batcher = calls["app"].state.batcher
    assert (batcher.max_batch, batcher.max_wait, batcher.max_queue) == (4, 0.003, 9)
    with TestClient(calls["app"], base_url="http://127.0.0.1:8123") as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/v1/models", headers={"Authorization": "Bearer k"}).status_code == 200
    bad = CliRunner().invoke(cli, ["serve", "--max-batch", "0"])
    assert bad.exit_code == 2


# --------------------------------------------------------------------------- live, openai


def cosines(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def tiny_server(tiny_embedder):
    with live_server(create_app(tiny_embedder, max_wait_ms=2)) as url:
        yield url


def readme_snippet() -> str:
    """The README's OpenAI-client example, read from README.md itself so they cannot drift."""
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    snippet = next(b for b in blocks if "OpenAI(base_url" in b)
    assert len(snippet.strip().splitlines()) == 3
    return snippet


def test_openai_client_gets_library_vectors(tiny_server, tiny_embedder):
    from openai import OpenAI

    client = OpenAI(base_url=tiny_server + "/v1", api_key="unused", max_retries=0)
    texts = ["quarterly revenue grew in Europe", "replace the hydraulic pump"]
    default = client.embeddings.create(model="gme-Qwen2-VL-2B-Instruct", input=texts)
    as_float = client.embeddings.create(model="model", input=texts, encoding_format="float")
    assert default.usage.prompt_tokens > 0
    assert default.usage.prompt_tokens == as_float.usage.prompt_tokens
    expected = tiny_embedder.embed_texts(texts)
    for response in (default, as_float):  # base64 (the client's default) and float
        got = np.array([d.embedding for d in response.data])
        assert got.shape == (2, tiny_embedder.dim)
        assert cosines(got, expected).min() >= 0.9999

    query = client.embeddings.create(
        model="model", input=texts[:1], extra_body={"input_type": "query"}
    )
    expected_q = tiny_embedder.embed_texts(texts[:1], instruction=QUERY_INSTRUCTION)
    assert cosines([query.data[0].embedding], expected_q)[0] >= 0.9999

    png = png_bytes(size=(56, 56))
    image = open_png(png)
    items = [{"image": data_url(png)}, {"text": "a red chart", "image": data_url(png)}]
    mixed = client.embeddings.create(model="model", input=items)  # objects pass through
    got = np.array([d.embedding for d in mixed.data])
    assert cosines(got[:1], tiny_embedder.embed_images([image])).min() >= 0.9999
    assert cosines(got[1:], tiny_embedder.embed_fused(["a red chart"], [image])).min() >= 0.9999
    cut = client.embeddings.create(model="model", input=texts[:1], dimensions=16)
    assert len(cut.data[0].embedding) == 16


def test_openai_client_errors(tiny_server):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=tiny_server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert info.value.code == "model_not_found"
    too_long = " ".join(["revenue"] * 2500)
    with pytest.raises(openai.BadRequestError) as info:
        client.embeddings.create(model="model", input=["fine", too_long])
    assert info.value.code == "context_length_exceeded" and info.value.param == "input[1]"
    assert "1800" in str(info.value)
    assert [m.id for m in client.models.list()] == ["model"]


def test_readme_snippet_runs_against_live_server(tiny_server, capsys):
    port = tiny_server.rsplit(":", 1)[1]
    code = readme_snippet().replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    values = [float(v) for v in printed.strip().strip("[]").split(",")]
    assert len(values) == 4
