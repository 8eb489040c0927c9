"""A bounded load test of the live server: 8 concurrent clients x 50 requests.

Every request must get the right vectors or a 503; batching must happen (batches of more
than one input); requests/s are printed for dynamic batching and for ``max_batch=1``, and
batching must beat one-input-per-call by a (deliberately low) floor. The model is
FakeEmbedder plus a fixed cost per call, which is what makes batching pay on a real
accelerator (per-call overhead dominates small batches; ~15 ms per call is GME-2B on a GPU
for a short text); the tiny GME variant runs the same comparison on the real code path (on
CPU, where compute grows with the batch, batching gains less). Clients and server share one
process (and its GIL) here, so the HTTP overhead (~3 ms per request on 2 cores) caps what
the numbers can show.
"""

from __future__ import annotations

import threading
import time

import httpx
import numpy as np
import pytest

from app.server import create_app
from indexer.model import FakeEmbedder
from tests.test_server import live_server

CLIENTS = 8
REQUESTS = 50
TIME_CAP_S = 60.0


class SlowFakeEmbedder(FakeEmbedder):
    """FakeEmbedder with a fixed cost per model call plus a small cost per input."""

    def __init__(self, per_call_s: float = 0.015, per_item_s: float = 0.0005) -> None:
        super().__init__()
        self.per_call_s = per_call_s
        self.per_item_s = per_item_s

    def embed_texts(self, texts, *, instruction=None):
        time.sleep(self.per_call_s + self.per_item_s * len(texts))
        return super().embed_texts(texts, instruction=instruction)


def run_load(
    embedder,
    *,
    max_batch: int,
    clients: int = CLIENTS,
    requests: int = REQUESTS,
    max_queue: int = 1024,
    texts_per_request=lambda c, i: 1 + (c + i) % 2,
) -> dict:
    """Hammer a live server; returns counts, throughput and the server's batch stats."""
    reference = FakeEmbedder(dim=embedder.dim)
    app = create_app(embedder, max_batch=max_batch, max_wait_ms=5, max_queue=max_queue)
    ok, busy, wrong, errors = [], [], [], []
    with live_server(app) as url:
        deadline = time.monotonic() + TIME_CAP_S

        def client(c: int) -> None:
            with httpx.Client(base_url=url, timeout=30) as http:
                for i in range(requests):
                    if time.monotonic() > deadline:
                        errors.append("time cap reached")
                        return
                    texts = [
                        f"client {c} request {i} item {j} words"
                        for j in range(texts_per_request(c, i))
                    ]
                    try:
                        r = http.post("/v1/embeddings", json={"model": "pagelens", "input": texts})
                    except httpx.HTTPError as exc:
                        errors.append(repr(exc))
                        continue
                    if r.status_code == 503:
                        assert r.headers.get("retry-after")
                        busy.append(1)
                        continue
                    if r.status_code != 200:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
                    if np.array_equal(got, reference.embed_texts(texts)):
                        ok.append(1)
                    else:
                        wrong.append(texts)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIME_CAP_S + 30)
        seconds = time.perf_counter() - started
        stats = httpx.get(url + "/health").json()
    return {
        "ok": len(ok),
        "busy": len(busy),
        "wrong": len(wrong),
        "errors": errors,
        "seconds": seconds,
        "rps": (len(ok) + len(busy)) / seconds,
        "stats": stats,
    }


def report(label: str, result: dict) -> None:
    s = result["stats"]
    print(
        f"\n{label}: {result['ok']} ok, {result['busy']} x 503 in {result['seconds']:.2f}s "
        f"= {result['rps']:.1f} requests/s; {s['batches']} batches, mean "
        f"{s['mean_batch']} inputs, max {s['max_batch_seen']}"
    )


def test_concurrent_clients_are_batched_and_answered():
    one_text = lambda c, i: 1  # noqa: E731
    batched = run_load(SlowFakeEmbedder(), max_batch=16, texts_per_request=one_text)
    single = run_load(SlowFakeEmbedder(), max_batch=1, texts_per_request=one_text)
    report("dynamic batching (max_batch=16)", batched)
    report("one input per model call (max_batch=1)", single)
    print(f"speed-up: {batched['rps'] / single['rps']:.1f}x")
    for result in (batched, single):
        assert not result["errors"] and not result["wrong"]
        assert result["ok"] + result["busy"] == CLIENTS * REQUESTS
    assert batched["stats"]["max_batch_seen"] > 1 and batched["stats"]["mean_batch"] > 1.5
    assert single["stats"]["max_batch_seen"] == 1
    assert batched["stats"]["batches"] * 2 <= single["stats"]["batches"]  # the mechanism
    # The floor is far below what batching gives the model (~6x fewer calls here) because
    # clients, server and other jobs share 2 cores: measured 1.6x on a loaded machine.
    assert batched["rps"] >= 1.3 * single["rps"], "dynamic batching gave no real speed-up"


def test_small_queue_sheds_load_with_503_and_stays_correct():
    result = run_load(
        SlowFakeEmbedder(per_call_s=0.02),
        max_batch=2,
        max_queue=3,
        requests=15,
        texts_per_request=lambda c, i: 2,
    )
    report("max_queue=3", result)
    assert not result["errors"] and not result["wrong"]
    assert result["ok"] + result["busy"] == CLIENTS * 15
    assert result["busy"] > 0 and result["ok"] > 0


@pytest.mark.slow
def test_tiny_gme_throughput(tiny_embedder):
    """The same comparison on the tiny real model (CPU): fewer requests, numbers printed."""
    results = {}
    for max_batch in (16, 1):
        app = create_app(tiny_embedder, max_batch=max_batch, max_wait_ms=5)
        with live_server(app) as url:

            def client(c, out):
                with httpx.Client(base_url=url, timeout=60) as http:
                    for i in range(6):
                        r = http.post(
                            "/v1/embeddings",
                            json={"model": "pagelens", "input": [f"client {c} question {i}"]},
                        )
                        out.append(r.status_code)

            codes: list[int] = []
            threads = [threading.Thread(target=client, args=(c, codes)) for c in range(CLIENTS)]
            started = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            seconds = time.perf_counter() - started
            stats = httpx.get(url + "/health").json()
        assert codes.count(200) == CLIENTS * 6, codes
        results[max_batch] = len(codes) / seconds
        print(
            f"\ntiny GME, max_batch={max_batch}: {results[max_batch]:.1f} requests/s, "
            f"mean batch {stats['mean_batch']}, max {stats['max_batch_seen']}"
        )
    print(f"tiny GME speed-up: {results[16] / results[1]:.1f}x")
    # On CPU compute grows with the batch, so the gain is per-call overhead only (measured
    # 1.5x on a loaded 2-core machine); the floor says batching at least pays for itself.
    assert results[16] >= 1.1 * results[1], "batching made the tiny model slower"
