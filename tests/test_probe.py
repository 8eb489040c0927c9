# ruff: noqa: E501  (the probe table reads best one request per line)
"""The security probe of issue #15, kept as a table against a live ``pagelens serve`` app.

Every row is one hostile request (authentication, oversized and malformed inputs, SSRF
addresses and redirects, path tricks, foreign Host names). Each must be answered with the
expected 4xx and an OpenAI-style error whose message says what was wrong, never with a 5xx,
a traceback or a server path, and ``/health`` must answer after each.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import io
import json
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

from app.server import create_app
from app.server.guard import LOOPBACK_HOSTS
from indexer.model import FakeEmbedder
from tests.support.http_helpers import PublicTestHostFetcher, http_server, post_chunked
from tests.test_server import indexed, live_server  # noqa: F401

KEY = "probe-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def png(size=(20, 20)) -> str:
    buf = io.BytesIO()
    Image.new("RGB", size, "white").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


EPS = "data:image/eps;base64," + base64.b64encode(b"%!PS-Adobe-3.0 EPSF-3.0\n").decode()
BIG = "99999999999999999999999"


class _Redirector(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(302)
        self.send_header("Location", "http://" + self.path[len("/to/") :])
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def redirector() -> Iterator[int]:
    with http_server(_Redirector) as port:
        yield port


@pytest.fixture
def server(indexed, redirector) -> Iterator[str]:  # noqa: F811
    app = create_app(
        FakeEmbedder(),
        api_key=KEY,
        url_fetcher=PublicTestHostFetcher(timeout=5),
        allowed_hosts=LOOPBACK_HOSTS,
        max_wait_ms=1,
        max_request_bytes=2_000_000,
    )
    with live_server(app) as url:
        yield url


def embed(*items, **extra) -> dict:
    """An embeddings body: one string or list as ``input`` itself, other items as a list."""
    single = len(items) == 1 and isinstance(items[0], str | list)
    return {"model": "pagelens", "input": items[0] if single else list(items), **extra}


# (name, method, path, headers, json body or raw bytes, status, code or None)
PROBES = [
    # authentication
    ("no key", "GET", "/v1/models", {}, None, 401, "invalid_api_key"),
    ("wrong key", "GET", "/v1/models", {"Authorization": "Bearer nope"}, None, 401, None),
    ("empty bearer", "GET", "/v1/models", {"Authorization": "Bearer"}, None, 401, None),
    ("basic auth", "GET", "/v1/models", {"Authorization": "Basic cHJvYmU6a2V5"}, None, 401, None),
    ("key in query", "GET", f"/v1/models?api_key={KEY}", {}, None, 401, None),
    # exposure
    (
        "rebound host",
        "GET",
        "/v1/models",
        {**AUTH, "Host": "evil.example"},
        None,
        400,
        "invalid_host",
    ),
    # oversized
    (
        "too many inputs",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed(*["x"] * 300),
        400,
        "too_many_inputs",
    ),
    (
        "long text",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed("x" * 70_000),
        400,
        "context_length_exceeded",
    ),
    (
        "pixel bomb",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": png((7000, 7000))}),
        400,
        "image_too_large",
    ),
    (
        "k too big",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "k": 10**6, "collection": "reports"},
        400,
        None,
    ),
    # malformed
    ("bad json", "POST", "/v1/embeddings", AUTH, b"{not json", 400, "invalid_json"),
    ("token arrays", "POST", "/v1/embeddings", AUTH, embed([[1, 2, 3]]), 400, None),
    ("empty input", "POST", "/v1/embeddings", AUTH, embed([]), 400, "empty_input"),
    ("lone surrogate", "POST", "/v1/embeddings", AUTH, embed("\ud800"), 400, None),
    (
        "surrogate query",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "\udfff", "collection": "reports"},
        400,
        None,
    ),
    (
        "not base64",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "data:image/png;base64,@@@"}),
        400,
        "invalid_image",
    ),
    ("eps image", "POST", "/v1/embeddings", AUTH, embed({"image": EPS}), 400, "invalid_image"),
    ("zero dims", "POST", "/v1/embeddings", AUTH, embed("x", dimensions=0), 400, None),
    (
        "unknown model",
        "POST",
        "/v1/embeddings",
        AUTH,
        {"model": "gpt-4", "input": "x"},
        404,
        "model_not_found",
    ),
    (
        "huge pages",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "reports", "pages": f"1-{BIG}"},
        400,
        "invalid_query",
    ),
    (
        "huge document",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "reports", "documents": [int(BIG)]},
        404,
        None,
    ),
    (
        "huge page id",
        "GET",
        f"/v1/pages/{BIG}/image?collection=reports",
        AUTH,
        None,
        404,
        "page_not_found",
    ),
    (
        "negative page id",
        "GET",
        "/v1/pages/-1/image?collection=reports",
        AUTH,
        None,
        404,
        "page_not_found",
    ),
    ("wrong method", "DELETE", "/v1/embeddings", AUTH, None, 405, None),
    # SSRF
    (
        "loopback url",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://127.0.0.1/x.png"}),
        400,
        None,
    ),
    (
        "metadata url",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://169.254.169.254/latest/"}),
        400,
        None,
    ),
    (
        "v6 loopback",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://[::1]/x.png"}),
        400,
        None,
    ),
    (
        "mapped v4",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://[::ffff:10.0.0.1]/x"}),
        400,
        None,
    ),
    (
        "decimal ip",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://2130706433/x.png"}),
        400,
        None,
    ),
    (
        "file url",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "file:///etc/passwd"}),
        400,
        "invalid_image",
    ),
    (
        "userinfo",
        "POST",
        "/v1/embeddings",
        AUTH,
        embed({"image": "http://u:p@images.test/x"}),
        400,
        None,
    ),
    # path tricks
    (
        "dotdot collection",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "../reports"},
        400,
        "invalid_collection",
    ),
    (
        "absolute collection",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "/etc"},
        400,
        "invalid_collection",
    ),
    (
        "home collection",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "~root"},
        400,
        "invalid_collection",
    ),
    (
        "encoded dotdot",
        "GET",
        "/v1/pages/1/image?collection=..%2F..%2Fetc",
        AUTH,
        None,
        400,
        "invalid_collection",
    ),
    (
        "missing collection",
        "POST",
        "/v1/search",
        AUTH,
        {"query": "x", "collection": "nope"},
        404,
        "collection_not_found",
    ),
    ("model path", "GET", "/v1/models/..%2F..%2Fetc%2Fpasswd", AUTH, None, 404, "model_not_found"),
    ("page path", "GET", "/v1/pages/..%2F..%2Fetc%2Fpasswd/image", AUTH, None, 404, None),
]


def _send(client: httpx.Client, method: str, path: str, headers: dict, body) -> httpx.Response:
    if body is None:
        return client.request(method, path, headers=headers)
    if isinstance(body, bytes):
        content = body
    else:  # ASCII-escaped JSON, so lone surrogates travel as \\ud800
        content = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    return client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize(
    ("name", "method", "path", "headers", "body", "status", "code"),
    PROBES,
    ids=[p[0] for p in PROBES],
)
def test_probe(server, _isolated_home, name, method, path, headers, body, status, code):
    with httpx.Client(base_url=server, timeout=30) as client:
        try:
            r = _send(client, method, path, headers, body)
        except httpx.RemoteProtocolError:  # the server may close after a refused body
            r = None
        if r is not None:
            assert r.status_code == status, (name, r.status_code, r.text[:300])
            error = r.json()["error"]
            assert len(error["message"]) > 15, error
            assert "Traceback" not in r.text and str(_isolated_home) not in r.text
            if code is not None:
                assert error["code"] == code, (name, error)
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_redirect_to_loopback_is_refused(server, redirector):
    hop = f"http://images.test:{redirector}/to/127.0.0.1:{redirector}/x.png"
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post("/v1/embeddings", json=embed({"image": hop}), headers=AUTH)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "image_url_not_allowed"
        assert "non-public" in r.json()["error"]["message"]
        assert client.get("/health").status_code == 200


def test_chunked_body_over_the_limit(server):
    chunks = [b'{"model": "pagelens", "input": "', *[b"a" * 65536] * 40, b'"}']
    status, body = post_chunked(server, "/v1/embeddings", chunks, AUTH)
    assert status == 413 and b"request_too_large" in body, body[:300]
    assert httpx.get(server + "/health").status_code == 200


def test_declared_length_over_the_limit(server):
    import urllib.parse

    parts = urllib.parse.urlsplit(server)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest("POST", "/v1/embeddings")
    for name, value in {**AUTH, "Content-Type": "application/json"}.items():
        conn.putheader(name, value)
    conn.putheader("Content-Length", "99999999")
    conn.endheaders(b"{}")
    response = conn.getresponse()
    assert response.status == 413 and b"request_too_large" in response.read()
    conn.close()
    assert httpx.get(server + "/health").status_code == 200
