"""What embedding through ``pagelens serve`` costs per page over embedding in-process.

The remote path adds, per page: PNG encoding (lossless, so vectors stay equal), base64, the
HTTP round trip, the server's decoding and batching. Two measurements, same pages, same
machine, loopback, :class:`~indexer.model.remote.RemoteEmbedder` with its default batching and
concurrency:

* ``transport``: a model-free server (``create_app`` around the fake embedder, in its own
  process) against the same fake embedder in-process. The model costs ~nothing on either
  side, so the difference is the overhead itself, measured precisely.
* ``tiny_gme``: ``pagelens serve`` of the tiny random-weight GME (or ``--model``) against
  the same weights in-process, runs interleaved. Here the model's own time dominates and
  varies with the machine's load, so the difference is noisy; its use is the cosine
  (remote vectors equal local ones) and a sanity check of the transport number.

On a GPU server the transport overhead is what remains of the page cost once the model
itself is fast.
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


_FAKE_SERVER = """
import sys, uvicorn
from app.server import create_app
from indexer.model import FakeEmbedder
uvicorn.run(create_app(FakeEmbedder(dim=1536, model_id="overhead-probe")), host="127.0.0.1",
            port=int(sys.argv[1]), log_level="warning")
"""


def _serve_fake(port: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [sys.executable, "-c", _FAKE_SERVER, str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _cosine_min(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return round(float(cos.min()), 6)


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


def _interleaved(local: Any, remote: Any, images: list, reps: int) -> tuple:
    """Median seconds of ``local`` and ``remote`` over ``images``, runs alternated so that
    a change in the machine's load hits both alike; returns (local_s, remote_s, vecs, vecs)."""
    local.embed_documents(images[:1])  # warm-ups: first batch, connections
    remote.embed_documents(images[:1])
    lt, rt, lv, rv = [], [], None, None
    for _ in range(reps):
        t = time.perf_counter()
        lv = local.embed_documents(images)
        lt.append(time.perf_counter() - t)
        t = time.perf_counter()
        rv = remote.embed_documents(images)
        rt.append(time.perf_counter() - t)
    return statistics.median(lt), statistics.median(rt), lv, rv


def run_remote(
    images: list,
    *,
    model_dir: str,
    tokens: int,
    reps: int = 5,
    threads: int | None = None,
) -> dict[str, Any]:
    """Both measurements (see the module docstring) for ``images``; the report section."""
    from indexer.model import FakeEmbedder
    from indexer.model.gme.loading import load_embedder
    from indexer.model.remote import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_CONCURRENCY,
        load_remote_embedder,
        png_exact,
    )

    n = len(images)
    t = time.perf_counter()
    encoded = [png_exact(im) for im in images]
    png_s = time.perf_counter() - t
    report: dict[str, Any] = {
        "what": "per-page overhead of embedding through a server (RemoteEmbedder, loopback, "
        "same machine) over in-process; see bench/remote_overhead.py",
        "render_tokens": tokens,
        "pages": n,
        "page_sizes": sorted({f"{im.width}x{im.height}" for im in images}),
        "batch_size": DEFAULT_BATCH_SIZE,
        "concurrency": DEFAULT_CONCURRENCY,
        "png_encode_ms_per_page": round(1000 * png_s / n, 2),
        "png_kib_per_page": round(sum(len(e) for e in encoded) / n / 1024, 1),
    }

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve_fake(port)
    try:
        _wait(proc, url)
        remote = load_remote_embedder(url)
        local_s, remote_s, lv, rv = _interleaved(
            FakeEmbedder(dim=1536, model_id="overhead-probe"), remote, images, reps
        )
        remote.close()
    finally:
        _stop(proc)
    report["transport"] = {
        "server": "create_app(FakeEmbedder(dim=1536)) on uvicorn, separate process",
        "in_process_ms_per_page": round(1000 * local_s / n, 2),
        "remote_ms_per_page": round(1000 * remote_s / n, 2),
        "overhead_ms_per_page": round(1000 * (remote_s - local_s) / n, 2),
        "cosine_min": _cosine_min(lv, rv),
    }

    local = load_embedder(model_dir, device="cpu", dtype="float32", max_image_tokens=tokens)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = _serve(model_dir, tokens, port, threads)
    try:
        _wait(proc, url)
        remote = load_remote_embedder(url)
        local_s, remote_s, lv, rv = _interleaved(local, remote, images, max(2, reps // 2))
        remote.close()
    finally:
        _stop(proc)
    report["tiny_gme"] = {
        "server": "pagelens serve (subprocess), same weights",
        "model": os.path.basename(model_dir.rstrip("/")),
        "in_process_s_per_page": round(local_s / n, 4),
        "remote_s_per_page": round(remote_s / n, 4),
        "difference_s_per_page": round((remote_s - local_s) / n, 4),
        "cosine_min": _cosine_min(lv, rv),
    }
    report["overhead_ms_per_page"] = report["transport"]["overhead_ms_per_page"]
    return report
