"""The guarded URL fetcher (app/server/fetch.py) on its own: every SSRF rule, hop by hop.

The app-level tests (tests/test_server.py) check that requests reach it; these check the
fetcher's answers directly, against a real HTTP server on loopback that a subclass treats as
"public" under the name ``images.test`` (nothing else may reach loopback).
"""

from __future__ import annotations

import http.server
import ipaddress
from collections.abc import Iterator

import pytest

from app.server.errors import ApiError
from app.server.fetch import UrlImageFetcher
from tests.support.http_helpers import PublicTestHostFetcher, http_server

PAYLOAD = b"\x89PNG not really, but bytes"


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(PAYLOAD)))
            self.end_headers()
            self.wfile.write(PAYLOAD)
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/") :].replace("~", "://", 1))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/nolocation":
            self.send_response(302)
            self.end_headers()
        elif self.path == "/big":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\0" * 5000)
        elif self.path == "/host":
            body = self.headers.get("Host", "").encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with http_server(_Handler) as p:
        yield p


def refused(fetcher: UrlImageFetcher, url: str, **kw) -> ApiError:
    with pytest.raises(ApiError) as info:
        fetcher.fetch(url, param="p", **kw)
    assert info.value.status == 400 and info.value.param == "p"
    return info.value


def test_is_public():
    public = ["93.184.216.34", "8.8.8.8", "2606:4700::1111"]
    private = [
        "127.0.0.1",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.1.1",
        "100.64.0.1",
        "0.0.0.0",
        "255.255.255.255",
        "224.0.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "::ffff:10.0.0.1",
        "::ffff:127.0.0.1",
        "2002:7f00:1::1",
        "192.0.2.1",
        "198.18.0.1",
        "240.0.0.1",
    ]
    assert all(UrlImageFetcher.is_public(ipaddress.ip_address(a)) for a in public)
    assert not any(UrlImageFetcher.is_public(ipaddress.ip_address(a)) for a in private)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x.png",
        "gopher://example.com/",
        "http://user:pw@93.184.216.34/x.png",
        "http:///x.png",
        "http://93.184.216.34:99999/x.png",
        "http://127.0.0.1/x.png",
        "http://[::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "http://2130706433/x.png",
        "http://localhost/x.png",
    ],
)
def test_refused_urls(url):
    error = refused(UrlImageFetcher(timeout=2), url)
    assert error.code in ("invalid_image_url", "image_url_not_allowed")
    assert "refused" in error.message or "non-public" in error.message


def test_fetch_pins_the_checked_address_and_keeps_the_name(port):
    fetcher = PublicTestHostFetcher(timeout=5)
    assert fetcher.fetch(f"http://images.test:{port}/img.png") == PAYLOAD
    assert fetcher.fetch(f"http://images.test:{port}/host") == f"images.test:{port}".encode()


def test_redirects_are_rechecked(port):
    fetcher = PublicTestHostFetcher(timeout=5)
    ok = f"http://images.test:{port}/to/http~images.test:{port}/img.png"
    assert fetcher.fetch(ok) == PAYLOAD
    for target in (f"127.0.0.1:{port}/img.png", f"localhost:{port}/img.png"):
        error = refused(fetcher, f"http://images.test:{port}/to/http~{target}")
        assert error.code == "image_url_not_allowed"
    error = refused(fetcher, f"http://images.test:{port}/to/file~/etc/passwd")
    assert "only http and https" in error.message
    assert "redirects" in refused(fetcher, f"http://images.test:{port}/loop").message
    assert "Location" in refused(fetcher, f"http://images.test:{port}/nolocation").message


def test_size_limit_and_http_errors(port):
    fetcher = PublicTestHostFetcher(timeout=5)
    assert refused(fetcher, f"http://images.test:{port}/big", max_bytes=1000).code == (
        "image_too_large"
    )
    error = refused(fetcher, f"http://images.test:{port}/missing")
    assert error.code == "invalid_image_url" and "404" in error.message
