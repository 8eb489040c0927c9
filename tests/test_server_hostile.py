"""The API under hostile input (issue #15): each test here failed on the server before it.

Image bombs and foreign formats, bodies without a length, malformed Unicode, numbers past
SQLite's range, leaked paths, DNS rebinding and an empty API key.
"""

from __future__ import annotations

import io
import json
import os

import pytest
from fastapi.testclient import TestClient
from PIL import EpsImagePlugin, Image

from app.server import create_app
from app.server.guard import LOOPBACK_HOSTS
from indexer.model import FakeEmbedder
from indexer.pages.raster import TARGET_PIXELS, ImageRefusedError, decode_image
from tests.support.http_helpers import post_chunked
from tests.test_server import assert_error, data_url, embed, indexed, live_server  # noqa: F401

EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto showpage\n%%EOF\n"


class SizeRecorder(FakeEmbedder):
    """FakeEmbedder that remembers the size of every image it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[tuple[int, int]] = []

    def embed_images(self, images, *, instruction=None):
        self.sizes += [im.size for im in images]
        return super().embed_images(images, instruction=instruction)


def encoded(size, fmt="PNG", mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (250, 250, 250) if mode == "RGB" else 0).save(buf, format=fmt)
    return buf.getvalue()


def post(client, path: str, body: dict):
    """POST JSON written with ASCII escapes (a lone surrogate travels as ``\\ud800``)."""
    return client.post(path, content=json.dumps(body), headers={"Content-Type": "application/json"})


@pytest.fixture
def recorder():
    return SizeRecorder()


@pytest.fixture
def client(recorder):
    with TestClient(create_app(recorder, max_wait_ms=1)) as c:
        yield c


# --------------------------------------------------------------------------- images


def test_eps_and_other_plugins_are_never_reached(client, monkeypatch):
    opened = []
    real = EpsImagePlugin.EpsImageFile._open
    monkeypatch.setattr(
        EpsImagePlugin.EpsImageFile, "_open", lambda self: opened.append(1) or real(self)
    )
    r = embed(client, input=[{"image": data_url(EPS, "image/eps")}])
    error = assert_error(r, 400, code="invalid_image", param="input[0].image")
    assert "PNG, JPEG, WebP, TIFF, BMP or GIF" in error["message"]
    with pytest.raises(ImageRefusedError) as info:
        decode_image(io.BytesIO(EPS))
    assert info.value.reason == "format"
    assert opened == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"])
def test_every_allowed_format_embeds(client, fmt):
    r = embed(client, input=[{"image": data_url(encoded((30, 20), fmt))}])
    assert r.status_code == 200, r.text


def test_large_images_are_kept_near_gme_budget(client, recorder):
    # 2400 x 2400 = 5.8 M pixels: under the decode cap, over what GME can use.
    r = embed(client, input=[{"image": data_url(encoded((2400, 2400)))}])
    assert r.status_code == 200, r.text
    (size,) = recorder.sizes
    assert size[0] * size[1] <= TARGET_PIXELS and size == (1200, 1200)
    # The bomb: a small PNG claiming 7000 x 7000 pixels is refused from its header.
    bomb = encoded((7000, 7000))
    assert len(bomb) < 200_000
    error = assert_error(embed(client, input=[{"image": data_url(bomb)}]), 400)
    assert error["code"] == "image_too_large" and "7000x7000" in error["message"]


def test_jpeg_is_downscaled_while_decoding():
    data = encoded((2000, 2000), "JPEG")
    im = decode_image(io.BytesIO(data), target_pixels=250_000)
    assert im.size == (500, 500)
    assert im.decoderconfig and im.decoderconfig[0] == 4  # libjpeg decoded at 1/4 scale
    png = decode_image(io.BytesIO(encoded((2000, 2000))), target_pixels=250_000)
    assert png.size == (500, 500)
    # A JPEG may claim more pixels than other formats, as it never exists at full size.
    big = encoded((3000, 3000), "JPEG")
    assert decode_image(io.BytesIO(big), max_pixels=4_000_000).size == (1500, 1500)
    with pytest.raises(ImageRefusedError):
        decode_image(io.BytesIO(encoded((3000, 3000))), max_pixels=4_000_000)


def test_request_pixel_budget(recorder):
    app = create_app(recorder, max_wait_ms=1, max_request_pixels=100_000)
    small = data_url(encoded((200, 200)))  # 40,000 pixels each
    with TestClient(app) as c:
        assert embed(c, input=[{"image": small}, {"image": small}]).status_code == 200
        r = embed(c, input=[{"image": small}] * 3)
        error = assert_error(r, 400, code="image_too_large", param="input[2].image")
        assert "100,000 pixels" in error["message"]


# --------------------------------------------------------------------------- bodies


def test_chunked_body_is_counted(recorder):
    import httpx

    app = create_app(recorder, max_wait_ms=1, max_request_bytes=10_000)
    with live_server(app) as url:
        small = b'{"model": "pagelens", "input": "hello"}'
        status, _ = post_chunked(url, "/v1/embeddings", [small[:10], small[10:]])
        assert status == 200
        pad = b" " * 4096
        chunks = [b'{"model": "pagelens", "input": "hello"', *[pad] * 10, b"}"]
        status, body = post_chunked(url, "/v1/embeddings", chunks)
        assert status == 413, body
        assert b"request_too_large" in body
        assert httpx.get(url + "/health").json()["status"] == "ok"


# --------------------------------------------------------------------------- 4xx not 500


@pytest.mark.parametrize(
    "body",
    [
        {"input": "\ud800"},
        {"input": ["fine", "bad \udfff"]},
        {"input": [{"text": "x\ud800y"}]},
        {"input": "x", "instruction": "\ud83d"},
    ],
)
def test_lone_surrogates_are_400(client, body):
    r = post(client, "/v1/embeddings", {"model": "pagelens", **body})
    error = assert_error(r, 400)
    assert "surrogate" in error["message"]
    assert error["param"].startswith(("input", "instruction"))


def test_search_bad_unicode_and_numbers(client, indexed):  # noqa: F811
    def search(**body):
        return post(client, "/v1/search", {"collection": indexed, **body})

    assert "surrogate" in assert_error(search(query="\ud800"), 400, param="query")["message"]
    assert_error(search(query="x", documents=["\udc00"]), 400, param="documents")
    big = "99999999999999999999999"
    assert_error(search(query="x", pages=f"1-{big}"), 400, code="invalid_query")
    assert_error(search(query="x", pages=big), 400, code="invalid_query")
    assert_error(search(query="x", documents=[int(big)]), 404, code="document_not_found")
    r = client.get(f"/v1/pages/{big}/image?collection={indexed}")
    assert_error(r, 404, code="page_not_found")
    r = client.get(f"/v1/pages/-{big}/image?collection={indexed}")
    assert r.status_code in (400, 404)


@pytest.mark.parametrize(
    ("field", "body"),
    [
        ("question", {"question": "\ud800"}),
        ("collection", {"question": "x", "collection": "c\udfff"}),
        ("documents", {"question": "x", "documents": ["a.pdf", "\udc00"]}),
    ],
)
def test_ask_lone_surrogates_are_400(recorder, field, body):
    """/v1/ask refuses what /v1/search refuses, before searching or sending anything (it
    answered 500, a traceback in the log, when a lone surrogate reached the search)."""
    from retriever.ask import LLMSettings

    llm = LLMSettings(url="http://127.0.0.1:9/v1", retries=0)  # never reached
    with TestClient(create_app(recorder, max_wait_ms=1, llm=llm)) as c:
        error = assert_error(post(c, "/v1/ask", body), 400)
    assert "surrogate" in error["message"] and error["param"].startswith(field), error


def test_errors_name_the_collection_not_its_path(client, indexed, _isolated_home):  # noqa: F811
    home = str(_isolated_home)
    checks = [
        client.get(f"/v1/pages/0/image?collection={indexed}"),
        client.post(
            "/v1/search", json={"query": "x", "collection": indexed, "documents": ["ghost.pdf"]}
        ),
    ]
    for r in checks:
        error = assert_error(r, 404)
        assert home not in error["message"] and "/" not in error["message"], error
        assert f"'{indexed}'" in error["message"], error


# --------------------------------------------------------------------------- exposure


def test_loopback_names_only(recorder):
    app = create_app(recorder, max_wait_ms=1, allowed_hosts=LOOPBACK_HOSTS | {"pagelens.lan"})
    with TestClient(app, base_url="http://127.0.0.1:8000") as c:
        assert c.get("/v1/models").status_code == 200
        for host in ("localhost:8000", "[::1]:8000", "127.0.0.1", "PageLens.lan:1"):
            assert c.get("/v1/models", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:8000", "127.0.0.1.evil.example", ""):
            r = c.get("/v1/models", headers={"Host": host})
            assert_error(r, 400, code="invalid_host")
        assert c.get("/health", headers={"Host": "evil.example"}).status_code == 400


def test_serve_guards_loopback_and_refuses_empty_key(monkeypatch):
    from typer.testing import CliRunner

    import app.cli.common
    from app.cli import cli

    calls = {}
    monkeypatch.setattr(app.cli.common.Options, "embedder", lambda self: FakeEmbedder())
    monkeypatch.setattr("uvicorn.run", lambda a, **kw: calls.update(app=a, **kw))
    monkeypatch.delenv("PAGELENS_API_KEY", raising=False)
    assert CliRunner().invoke(cli, ["serve"]).exit_code == 0
    with TestClient(calls["app"], base_url="http://localhost:8000") as c:
        assert c.get("/health").status_code == 200
        assert_error(c.get("/health", headers={"Host": "rebound.example"}), 400)
    ok = CliRunner().invoke(cli, ["serve", "--allow-host", "box.lan"])
    assert ok.exit_code == 0
    with TestClient(calls["app"], base_url="http://box.lan:8000") as c:
        assert c.get("/health").status_code == 200
    assert CliRunner().invoke(cli, ["serve", "--host", "0.0.0.0", "--api-key", "k"]).exit_code == 0
    with TestClient(calls["app"], base_url="http://anything.example") as c:
        assert c.get("/health").status_code == 200  # not loopback: the key guards it

    calls.clear()
    for args, env in ((["serve", "--api-key", ""], None), (["serve"], "  ")):
        if env is not None:
            monkeypatch.setenv("PAGELENS_API_KEY", env)
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 2, result.output
        assert "empty" in result.output and not calls
    with pytest.raises(ValueError, match="empty"):
        create_app(FakeEmbedder(), api_key="")


# --------------------------------------------------------------------------- third parties


def test_docs_load_nothing_from_elsewhere(client):
    """/docs was Swagger UI from a CDN with the framework's favicon: opening it told third
    parties a PageLens server runs here. Now one page, rendered here, with nothing to load."""
    import re

    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    assert "/v1/search" in page and "/v1/embeddings" in page and "SearchRequest" in page
    assert "<script" not in page.lower()
    links = re.findall(r"""(?:src|href|action)\s*=\s*["']?([^"' >]+)""", page, re.I)
    assert links and all(not re.match(r"(?i)([a-z][a-z0-9+.-]*:)?//", u) for u in links), links
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert client.get("/redoc").status_code == 404  # ReDoc loads from a CDN too
    assert client.get("/docs/oauth2-redirect").status_code == 404
    assert client.get("/openapi.json").json()["paths"]


def test_api_key_in_the_url_is_not_logged(tmp_path):
    """A key sent as ?api_key= is refused (only the header counts) and reaches the access log,
    formatted by the real server, only as REDACTED."""
    import logging
    import socket
    import threading
    import time
    import urllib.error
    import urllib.request

    import uvicorn

    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    access = logging.getLogger("uvicorn.access")
    app = create_app(FakeEmbedder(), api_key="right-key", max_wait_ms=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, log_level="info", access_log=True)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    access.addHandler(handler)
    try:
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.01)
        base = f"http://127.0.0.1:{port}"
        for url in (
            f"{base}/v1/models?api_key=s3cret-in-url",
            f"{base}/v1/search?collection=c&Token=s3cret-in-url",
        ):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url, timeout=10)
            assert refused.value.code == 401
        request = urllib.request.Request(
            f"{base}/v1/models?api_key=s3cret-in-url",
            headers={"Authorization": "Bearer right-key"},
        )
        with urllib.request.urlopen(request, timeout=10) as r:  # the header works as always
            assert r.status == 200
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
        access.removeHandler(handler)
    assert len(lines) == 3, lines
    assert not [line for line in lines if "s3cret" in line], lines
    assert "/v1/models?api_key=REDACTED" in lines[0] and "collection=c&Token=REDACTED" in lines[1]

    from app.server.guard import redact_query

    assert redact_query(b"collection=c&API-KEY=s&x=1&token=t&keys=k") == (
        b"collection=c&API-KEY=REDACTED&x=1&token=REDACTED&keys=k"
    )


# --------------------------------------------------------------------------- peak memory

#: The figure docs/SECURITY.md (HTTP API: security and limits) states for the worst request
#: the default limits allow.
PEAK_LIMIT_MB = 1024


def worst_allowed_request() -> bytes:
    """A body at every default limit at once: 64 MB, 256 inputs, 64 M decoded pixels.

    15 small PNGs that claim 4000 x 4000 pixels (the most a non-JPEG may have), each kept
    at 2000 x 2000 after decoding, one incompressible 2000 x 2000 PNG (~12 MB), 240 texts
    of the longest allowed length, and whitespace up to the body limit.
    """
    import base64

    from app.server.limits import MAX_ITEMS, MAX_REQUEST_BYTES, MAX_TEXT_CHARS

    solid = data_url(encoded((4000, 4000)))
    noise = io.BytesIO()
    pixels = Image.frombytes("RGB", (2000, 2000), os.urandom(2000 * 2000 * 3))
    pixels.save(noise, format="PNG", compress_level=1)
    noisy = "data:image/png;base64," + base64.b64encode(noise.getvalue()).decode()
    items = [{"image": solid}] * 15 + [{"image": noisy}]
    items += ["word " * (MAX_TEXT_CHARS // 5)] * (MAX_ITEMS - len(items))
    body = json.dumps({"model": "pagelens", "input": items}).encode()
    assert len(body) < MAX_REQUEST_BYTES
    return body[:-1] + b" " * (MAX_REQUEST_BYTES - len(body) - 1) + b"}"


@pytest.mark.slow
def test_worst_allowed_request_peak_memory(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    import httpx

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "PAGELENS_HOME": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, str(root / "tests" / "support" / "server_peak.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        started = json.loads(proc.stdout.readline())
        url = f"http://127.0.0.1:{started['port']}"
        body = worst_allowed_request()
        r = httpx.post(
            url + "/v1/embeddings",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=300,
        )
        assert r.status_code == 200, r.text[:500]
        assert len(r.json()["data"]) == 256
        proc.stdin.write("\n")
        proc.stdin.flush()
        peak = json.loads(proc.stdout.readline())["peak_mb"]
    finally:
        proc.kill()
        proc.wait(10)
    print(f"server idle {started['idle_mb']:.0f} MB, peak {peak:.0f} MB")
    assert peak < PEAK_LIMIT_MB, (started, peak)
