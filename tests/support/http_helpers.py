"""Shared HTTP pieces for the hostile-input tests (test_fetch, test_probe, test_server_hostile):
a fetcher that treats the name ``images.test`` as a public host at 127.0.0.1 (nothing else may
reach loopback, so redirects and pinning can be tested against a real local server), a
throwaway HTTP server on a free loopback port, and a chunked POST that reads the answer while
it sends."""

from __future__ import annotations

import http.server
import ipaddress
import socket
import threading
import urllib.parse
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


def post_chunked(
    url: str, path: str, chunks: list[bytes], headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """POST ``chunks`` with chunked transfer encoding; returns (status, raw response body).

    A server that enforces a body limit answers 413 and closes while the client is still
    sending, so the rest of the body meets a reset. That is the behaviour under test, so the
    body is sent from a thread that ignores send errors while this thread reads the answer
    (``http.client`` sends the whole body before reading and would fail on the reset).
    """
    parts = urllib.parse.urlsplit(url)
    assert parts.hostname and parts.port
    sock = socket.create_connection((parts.hostname, parts.port), timeout=30)
    fields = {
        "Host": f"{parts.hostname}:{parts.port}",
        "Content-Type": "application/json",
        "Transfer-Encoding": "chunked",
        "Connection": "close",
        **(headers or {}),
    }
    head = f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())

    def send() -> None:
        try:
            sock.sendall(head.encode() + b"\r\n")
            for chunk in chunks:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed before the whole body was sent

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    received = bytearray()
    try:
        while data := sock.recv(65536):
            received += data
    except OSError:
        if b"\r\n\r\n" not in received:
            raise
    finally:
        sender.join(30)
        sock.close()
    status_line, _, rest = bytes(received).partition(b"\r\n")
    _, _, body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), body
