"""Shared pieces for the SSRF tests (tests/test_fetch.py, tests/test_probe.py): a fetcher
that treats the name ``images.test`` as a public host at 127.0.0.1 (nothing else may reach
loopback, so redirects and pinning can be tested against a real local server), and a
throwaway HTTP server on a free loopback port."""

from __future__ import annotations

import http.server
import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from app.server.fetch import UrlImageFetcher


class PublicTestHostFetcher(UrlImageFetcher):
    """``images.test`` is a "public" host at 127.0.0.1; every other name is checked as usual."""

    def allowed_addresses(self, host, port):
        if host == "images.test":
            return [ipaddress.ip_address("127.0.0.1")]
        return super().allowed_addresses(host, port)


@contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[int]:
    """Serve ``handler`` on a free loopback port in a thread; yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
