"""The remote reranker and ``/v1/rerank``, against real HTTP servers on loopback.

Two kinds of server: a scripted ``/v1/rerank`` stub written here on ``http.server`` (the
request shapes vLLM takes, results sorted by score as servers send them, and misbehaviour
on purpose: 503s, refused images, a slow answer, a stop mid-test); and ``create_app`` with
the fake embedder and :class:`FakeReranker` on uvicorn (``pagelens serve --reranker``'s
app), where a remote rerank must give exactly the in-process scores and order.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from app.server import create_app
from indexer.errors import EndpointError, ModelNotAvailableError
from indexer.model import FakeEmbedder
from indexer.model.remote import image_data_url
from indexer.model.rerank import FakeReranker, RerankPage, RerankQuery, load_reranker
from indexer.model.rerank.remote import RemoteReranker, load_remote_reranker
from indexer.model.rerank.remote_wire import to_unit_scores
from tests.test_server import live_server

# --------------------------------------------------------------------------- inputs


def page_image(seed: int, size=(48, 36)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


PAGES = [
    RerankPage(page_image(1), "invoice total due march"),
    RerankPage(page_image(2), "quarterly revenue report"),
    RerankPage(None, "the invoice is due"),  # a page still waiting for its image
    RerankPage(page_image(3), ""),  # a scan without a text layer
    RerankPage(page_image(4), "total revenue march invoice"),
    RerankPage(page_image(5), "nothing relevant here"),
    RerankPage(None, "march"),
]
QUERIES = {
    "text": RerankQuery(text="invoice due in march"),
    "image": RerankQuery(image=page_image(9)),
    "text+image": RerankQuery(text="total revenue", image=page_image(9)),
}


def pixels(image: Image.Image) -> bytes:
    return image.convert("RGB").tobytes()


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


# --------------------------------------------------------------------------- the stub


@dataclass
class StubRerank:
    """A ``/v1/rerank`` server: scores documents' text with :class:`FakeReranker`, answers
    the results best first; ``fail_next``, ``delay`` and ``refuse_images`` misbehave."""

    model: str = "stub/reranker"
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    delay: float = 0.0
    refuse_images: bool = False
    logits: bool = False
    url: str = ""
    _server: ThreadingHTTPServer | None = None
    _connections: list[socket.socket] = field(default_factory=list)

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None):
        self.failures += [(status, headers or {})] * times

    def answer(self, body: dict) -> tuple[int, dict]:
        def text_of(item: Any) -> str:
            if isinstance(item, str):
                return item
            return " ".join(p["text"] for p in item["content"] if p["type"] == "text")

        images = [d for d in [body["query"], *body["documents"]] if not isinstance(d, str)]
        if self.refuse_images and images:
            return 400, {"error": {"message": "this model takes text only", "code": 400}}
        query_text = text_of(body["query"])
        query = RerankQuery(text=query_text or None, image=None if query_text else page_image(0))
        pages = [RerankPage(None, text_of(d)) for d in body["documents"]]
        scores = FakeReranker().score(query, pages).astype(float)
        if self.logits:
            scores = scores * 8 - 4
        order = sorted(range(len(pages)), key=lambda i: -scores[i])[: body["top_n"]]
        results = [{"index": i, "relevance_score": scores[i]} for i in order]
        return 200, {"id": "x", "model": self.model, "results": results}

    def start(self) -> StubRerank:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                stub._connections.append(self.request)  # so that stop() can cut them
                super().setup()

            def do_GET(self) -> None:  # noqa: N802
                if self.path != "/v1/models":
                    return self._json(404, {"error": {"message": "no route"}})
                self._json(200, {"object": "list", "data": [{"id": stub.model}]})

            def do_POST(self) -> None:  # noqa: N802
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.headers.append({k.lower(): v for k, v in self.headers.items()})
                body = json.loads(raw or b"{}")
                stub.requests.append(body)
                if stub.delay:
                    time.sleep(stub.delay)
                if stub.failures:
                    status, headers = stub.failures.pop(0)
                    return self._json(status, {"error": {"message": f"stub {status}"}}, headers)
                self._json(*stub.answer(body))

            def _json(self, status: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (the slow-server test)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop as a killed process does: the port closes and open connections drop."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for conn in self._connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


@pytest.fixture
def stub() -> Iterator[StubRerank]:
    server = StubRerank().start()
    try:
        yield server
    finally:
        server.stop()


class RecordingReranker(FakeReranker):
    """The fake reranker, keeping what the server handed it (to check the pixels)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[RerankQuery, list[RerankPage]]] = []

    def score(self, query, pages):
        self.seen.append((query, list(pages)))
        return super().score(query, pages)


@contextlib.contextmanager
def pagelens_server(reranker=None, **options: Any) -> Iterator[str]:
    app = create_app(FakeEmbedder(), reranker=reranker, prepare_queries=False, **options)
    with live_server(app) as url:
        yield url


def fast(url: str, **options: Any) -> RemoteReranker:
    """A connected reranker with test-sized backoffs."""
    options.setdefault("backoff", 0.01)
    options.setdefault("max_backoff", 0.05)
    return RemoteReranker(url, **options).connect()


# --------------------------------------------------------------------------- pagelens serve


@pytest.mark.parametrize("kind", list(QUERIES))
def test_remote_through_the_server_equals_in_process(kind):
    in_process = FakeReranker()
    served = RecordingReranker()
    query = QUERIES[kind]
    with pagelens_server(served) as url:
        remote = fast(url, batch_size=3)  # three requests, sent side by side
        try:
            got = remote.score(query, PAGES)
        finally:
            remote.close()
    want = in_process.score(query, PAGES)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-want, kind="stable"))
    assert remote.model_id == "pagelens/fake-reranker"

    # The server's reranker saw the very pixels and texts (its chunks arrive in any order).
    def key(page: RerankPage) -> tuple[str, bytes]:
        return page.text, b"" if page.image is None else pixels(page.image)

    seen_pages = [p for _q, chunk in served.seen for p in chunk]
    assert sorted(map(key, seen_pages)) == sorted(map(key, PAGES))
    assert sorted(len(chunk) for _q, chunk in served.seen) == [1, 3, 3]
    seen_query = served.seen[0][0]
    assert seen_query.text == query.text
    if query.image is not None:
        assert pixels(seen_query.image) == pixels(query.image)


def test_the_server_lists_the_reranker_and_guards_it_with_the_key():
    with pagelens_server(FakeReranker(), api_key="s3cret") as url:
        models = httpx.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"})
        cards = {c["id"]: c for c in models.json()["data"]}
        assert cards["pagelens/fake-reranker"]["task"] == "rerank"
        assert (
            httpx.post(url + "/v1/rerank", json={"query": "a", "documents": ["a"]}).status_code
            == 401
        )
        with pytest.raises(EndpointError, match="PAGELENS_RERANK_API_KEY") as info:
            fast(url)
        assert "\n" not in str(info.value)
        remote = fast(url, api_key="s3cret")
        assert "s3cret" not in repr(remote)
        scores = remote.score(QUERIES["text"], PAGES[:2])
        np.testing.assert_array_equal(scores, FakeReranker().score(QUERIES["text"], PAGES[:2]))
        remote.close()
        with pytest.raises(ModelNotAvailableError, match="serves"):
            fast(url, api_key="s3cret", model="some/other-reranker")


BAD = "data:image/png;base64,AAAA"


def test_the_endpoint_shapes_and_limits():
    doc = image_data_url(page_image(1))
    with pagelens_server(FakeReranker(), max_items=4) as url:
        post = lambda body: httpx.post(url + "/v1/rerank", json=body)  # noqa: E731
        answer = post(
            {
                "model": "fake-reranker",
                "query": "invoice march",
                "documents": [
                    "march",
                    {"text": "invoice march", "image": doc},  # PageLens's / Jina's form
                    {"content": [{"type": "image_url", "image_url": {"url": doc}}]},
                ],
                "top_n": 2,
                "return_documents": True,
            }
        ).json()
        assert [r["index"] for r in answer["results"]] == [1, 0]
        assert answer["results"][0]["relevance_score"] == 1.0
        assert answer["results"][0]["document"] == {"text": "invoice march"}
        # vLLM's older form: one {"content"} object, one document per part.
        parts = [
            {"type": "text", "text": "march"},
            {"type": "image_url", "image_url": {"url": doc}},
        ]
        single = post({"query": "march", "documents": {"content": parts}}).json()
        assert sorted(r["index"] for r in single["results"]) == [0, 1]
        refusals = {
            "documents": {"query": "a", "documents": ["a"] * 5},
            "documents[0].image": {"query": "a", "documents": [{"text": "a", "image": BAD}]},
            "model": {"model": "gme-2b", "query": "a", "documents": ["a"]},
            "top_n": {"query": "a", "documents": ["a"], "top_n": 0},
            "query": {"query": "  ", "documents": ["a"]},
        }  # fmt: skip
        for param, body in refusals.items():
            response = post(body)
            assert 400 <= response.status_code < 500, (param, response.text)
            assert response.json()["error"]["param"] == param
        two_images = {"content": [{"type": "image_url", "image_url": {"url": doc}}] * 2}
        assert post({"query": "a", "documents": [two_images]}).status_code == 400


def test_a_server_without_a_reranker_says_so():
    with pagelens_server(None) as url:
        response = httpx.post(url + "/v1/rerank", json={"query": "a", "documents": ["a"]})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "reranker_not_configured"
        remote = fast(url)  # it lists only its embedder, taken as the one model
        with pytest.raises(EndpointError, match="--reranker") as info:
            remote.score(QUERIES["text"], PAGES[:1])
        assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- the stub server


def test_request_shape_and_results_mapped_back_by_index(stub):
    remote = fast(stub.url, api_key="sk-rerank")
    assert remote.model_id == "stub/reranker"
    scores = remote.score(QUERIES["text+image"], PAGES)
    (body,) = stub.requests[-1:]
    assert body["model"] == "stub/reranker" and body["top_n"] == len(PAGES)
    assert stub.headers[-1]["authorization"] == "Bearer sk-rerank"
    query_parts = body["query"]["content"]
    assert [p["type"] for p in query_parts] == ["image_url", "text"]
    assert pixels(decode_data_url(query_parts[0]["image_url"]["url"])) == pixels(page_image(9))
    for sent, page in zip(body["documents"], PAGES, strict=True):
        if page.image is None:
            assert sent == page.text  # text-only documents stay plain strings
            continue
        kinds = [p["type"] for p in sent["content"]]
        assert kinds == (["image_url", "text"] if page.text else ["image_url"])
        assert pixels(decode_data_url(sent["content"][0]["image_url"]["url"])) == pixels(page.image)
    # The stub answers best first; the scores come back in page order all the same.
    expected = FakeReranker().score(RerankQuery(text="total revenue"), PAGES)
    np.testing.assert_array_equal(scores, expected)
    text_only = remote.score(QUERIES["text"], PAGES[:2])
    assert stub.requests[-1]["query"] == "invoice due in march"
    assert text_only.shape == (2,)


def test_retries_on_503_then_gives_one_line(stub):
    remote = fast(stub.url, retries=3)
    stub.fail_next(503, 2, {"Retry-After": "0"})
    np.testing.assert_array_equal(
        remote.score(QUERIES["text"], PAGES), FakeReranker().score(QUERIES["text"], PAGES)
    )
    assert remote.stats["retries"] == 2
    stub.fail_next(503, 10)
    with pytest.raises(EndpointError, match="HTTP 503") as info:
        remote.score(QUERIES["text"], PAGES)
    assert "\n" not in str(info.value) and "4 tries" in str(info.value)


def test_a_stopped_server_fails_at_once_in_one_line(stub):
    remote = fast(stub.url, batch_size=2)
    assert remote.score(QUERIES["text"], PAGES).shape == (len(PAGES),)
    stub.stop()  # the server is killed mid-session
    started = time.monotonic()
    with pytest.raises(EndpointError, match="connection refused") as info:
        remote.score(QUERIES["text"], PAGES)
    assert time.monotonic() - started < 2.0
    assert "\n" not in str(info.value) and stub.url.split("//")[1] in str(info.value)


def test_a_slow_server_fails_within_the_timeout(stub):
    remote = fast(stub.url, timeout=0.5)
    stub.delay = 3.0
    started = time.monotonic()
    with pytest.raises(EndpointError, match=r"within 0.5 s") as info:
        remote.score(QUERIES["text"], PAGES)
    assert time.monotonic() - started < 1.5
    assert "\n" not in str(info.value)


def test_a_text_only_server_gets_page_text(stub, caplog):
    stub.refuse_images = True
    remote = fast(stub.url)
    scores = remote.score(QUERIES["text"], PAGES)
    np.testing.assert_array_equal(scores, FakeReranker().score(QUERIES["text"], PAGES))
    assert remote.images is False and all(
        isinstance(d, str) for d in stub.requests[-1]["documents"]
    )
    assert "text only" in caplog.text
    with pytest.raises(EndpointError, match="takes no images"):
        remote.score(QUERIES["image"], PAGES)
    strict = fast(stub.url, images=True)
    with pytest.raises(EndpointError, match="refused image documents"):
        strict.score(QUERIES["text"], PAGES)


def test_logits_become_unit_scores_in_the_same_order(stub):
    stub.logits = True
    scores = fast(stub.url).score(QUERIES["text"], PAGES)
    want = FakeReranker().score(QUERIES["text"], PAGES)
    assert scores.min() >= 0 and scores.max() <= 1
    assert list(np.argsort(-scores, kind="stable")) == list(np.argsort(-want, kind="stable"))
    np.testing.assert_allclose(to_unit_scores([0.2, 0.9]), [0.2, 0.9])


# --------------------------------------------------------------------------- configuration


def test_configured_through_the_environment(stub, monkeypatch):
    monkeypatch.setenv("PAGELENS_RERANK_URL", stub.url + "/v1/")
    monkeypatch.setenv("PAGELENS_RERANK_MODEL", "reranker")  # the last path part is enough
    monkeypatch.setenv("PAGELENS_RERANK_API_KEY", "sk-env")
    monkeypatch.setenv("PAGELENS_RERANK_TIMEOUT", "7")
    reranker = load_reranker()
    assert isinstance(reranker, RemoteReranker)
    assert reranker.model_id == "stub/reranker" and reranker.timeout == 7.0
    reranker.score(QUERIES["text"], PAGES[:1])
    assert stub.headers[-1]["authorization"] == "Bearer sk-env"
    monkeypatch.setenv("PAGELENS_RERANK_MODEL", "other")
    with pytest.raises(ModelNotAvailableError, match="PAGELENS_RERANK_MODEL"):
        load_remote_reranker()
    # a model name (not a URL) is a model run here: without its weights, one clear paragraph
    with pytest.raises(ModelNotAvailableError, match="Cannot load the reranker"):
        load_reranker("no-such/reranker")
    with pytest.raises(EndpointError, match="reranker URL"):
        RemoteReranker("http://user:pw@host:1/v1")


def test_serve_with_a_reranker_exposes_rerank(monkeypatch):
    import uvicorn

    from app.cli import cli

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **_kw: apps.append(app))
    with pagelens_server(FakeReranker()) as upstream:
        result = CliRunner().invoke(
            cli, ["--embedder", upstream, "serve", "--reranker", upstream, "--port", "1"]
        )
        assert result.exit_code == 0, result.output
        assert "/v1/rerank reranks with pagelens/fake-reranker" in result.output
        with live_server(apps[0]) as url:  # the served app reranks through the upstream
            remote = fast(url)
            np.testing.assert_array_equal(
                remote.score(QUERIES["text"], PAGES), FakeReranker().score(QUERIES["text"], PAGES)
            )
    refused = CliRunner().invoke(cli, ["serve", "--reranker", "no-such/reranker"])
    assert refused.exit_code != 0 and "Cannot load the reranker 'no-such/reranker'" in (
        refused.output
    )
