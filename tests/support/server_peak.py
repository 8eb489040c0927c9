"""Run ``pagelens serve``'s app (FakeEmbedder, default limits) in this process on a free
loopback port; print its port, wait for a line on stdin, then print the peak RSS.

Used by tests/test_server_hostile.py to measure the server's peak memory under the worst
request the limits allow, in a process of its own (so nothing else the test suite did
counts; see tests/support/peak_rss.py).
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def main() -> None:
    import uvicorn

    from app.server import create_app
    from indexer.model import FakeEmbedder
    from tests.support.peak_rss import own_peak_mb

    app = create_app(FakeEmbedder(), max_wait_ms=1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    while not server.started:
        time.sleep(0.01)
    rss = own_peak_mb()
    print(json.dumps({"port": sock.getsockname()[1], "idle_mb": rss}), flush=True)
    sys.stdin.readline()
    peak = own_peak_mb()
    print(json.dumps({"peak_mb": peak}), flush=True)
    server.should_exit = True


if __name__ == "__main__":
    main()
