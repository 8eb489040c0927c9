"""What embedding through ``pagelens serve`` costs per page over embedding in-process.

The remote path adds, per page: PNG encoding (lossless, so vectors stay equal), base64, the
HTTP round trip, the server's decoding and batching. That cost does not depend on the model,
so it is measured with the tiny random-weight GME (or the weights given with ``--model``) on
this machine: the same pages are embedded (a) by the model in this process and (b) by a
``pagelens serve`` subprocess of the same weights on a loopback port, through
:class:`~indexer.remote.RemoteEmbedder` with its default batching and concurrency. The
difference per page is the overhead; on a GPU server it is what remains of the page cost
once the model itself is fast.
"""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(model_dir: str, tokens: int, port: int, threads: int | None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PAGELENS_API_KEY", None)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    argv = [sys.executable, "-c", "from app.cli import main; main()", "--model", model_dir]
    argv += ["--device", "cpu", "--dtype", "float32", "--image-tokens", str(tokens)]
    argv += ["serve", "--port", str(port)]
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(proc: subprocess.Popen, url: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("pagelens serve exited during the benchmark")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("pagelens serve did not start")


def _median_time(fn: Any, reps: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def _time_in_process(model_dir: str, tokens: int, images: list, reps: int) -> tuple:
    """In-process seconds and vectors; the model is freed on return, before the server's."""
    from indexer.gme import load_embedder

    local = load_embedder(model_dir, device="cpu", dtype="float32", max_image_tokens=tokens)
    local.embed_documents(images[:1])  # warm-up
    return _median_time(lambda: local.embed_documents(images), reps)


def run_remote(
    images: list,
    *,
    model_dir: str,
    tokens: int,
    reps: int = 3,
    threads: int | None = None,
) -> dict[str, Any]:
    """Time ``images`` in-process and through a ``pagelens serve`` subprocess; the report."""
    from indexer.remote import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_CONCURRENCY,
        encode_png,
        load_remote_embedder,
    )

    n = len(images)
    local_s, local_vecs = _time_in_process(model_dir, tokens, images, reps)

    t = time.perf_counter()
    encoded = [encode_png(im) for im in images]
    png_s = time.perf_counter() - t

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(model_dir, tokens, port, threads)
    try:
        _wait(proc, url)
        remote = load_remote_embedder(url)
        remote.embed_documents(images[:1])  # warm-up (connection, server's first batch)
        remote_s, remote_vecs = _median_time(lambda: remote.embed_documents(images), reps)
        requests = remote.stats["requests"]
        remote.close()
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    a = np.asarray(local_vecs, np.float64)
    b = np.asarray(remote_vecs, np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    overhead = (remote_s - local_s) / n
    return {
        "what": "the same pages embedded in-process and through a pagelens serve subprocess "
        "(same weights, same machine, loopback) with RemoteEmbedder's defaults",
        "model": os.path.basename(model_dir.rstrip("/")),
        "render_tokens": tokens,
        "pages": n,
        "page_sizes": sorted({f"{im.width}x{im.height}" for im in images}),
        "batch_size": DEFAULT_BATCH_SIZE,
        "concurrency": DEFAULT_CONCURRENCY,
        "in_process_s_per_page": round(local_s / n, 5),
        "remote_s_per_page": round(remote_s / n, 5),
        "overhead_s_per_page": round(overhead, 5),
        "png_encode_ms_per_page": round(1000 * png_s / n, 2),
        "png_kb_per_page": round(sum(len(e) for e in encoded) / n / 1024, 1),
        "requests_incl_warmup": requests,
        "cosine_min": round(float(cos.min()), 6),
    }
