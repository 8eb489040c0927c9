"""A stub OpenAI-compatible Chat Completions server on a free loopback port, for tests.

It records every request (path, headers, JSON body) and answers a canned text, streamed
(server-sent events, as OpenAI sends them) when the request asks for ``"stream": true``
and whole otherwise. ``fail_next(status, times)`` makes the next requests fail first, to
prove retries and error messages.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def user_parts(self) -> list[dict]:
        return self.body["messages"][-1]["content"]

    @property
    def texts(self) -> list[str]:
        return [p["text"] for p in self.user_parts if p["type"] == "text"]

    @property
    def images(self) -> list[str]:
        return [p["image_url"]["url"] for p in self.user_parts if p["type"] == "image_url"]


@dataclass
class StubLLM:
    answer: str = "The answer [a.pdf, p. 1]."
    requests: list[Recorded] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    chunk_chars: int = 7
    url: str = ""
    _server: ThreadingHTTPServer | None = None

    def fail_next(self, status: int, times: int = 1, headers: dict[str, str] | None = None):
        self.failures += [(status, headers or {})] * times

    @property
    def last(self) -> Recorded:
        return self.requests[-1]

    def start(self) -> StubLLM:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                body = json.loads(raw or b"{}")
                stub.requests.append(
                    Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                )
                if not self.path.endswith("/chat/completions"):
                    return self._json(404, {"error": {"message": f"no route {self.path}"}})
                if stub.failures:
                    status, headers = stub.failures.pop(0)
                    return self._json(
                        status,
                        {"error": {"message": f"stub says {status}", "type": "stub"}},
                        headers,
                    )
                if body.get("stream"):
                    return self._stream(body)
                return self._json(
                    200,
                    {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": stub.answer},
                                "finish_reason": "stop",
                            }
                        ],
                    },
                )

            def _json(self, status: int, data: dict, headers: dict[str, str] | None = None):
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, body: dict) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                text, n = stub.answer, stub.chunk_chars
                pieces = [text[i : i + n] for i in range(0, len(text), n)]
                for piece in pieces:
                    chunk = {
                        "id": "chatcmpl-stub",
                        "object": "chat.completion.chunk",
                        "model": body.get("model"),
                        "choices": [{"index": 0, "delta": {"content": piece}}],
                    }
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{port}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
