"""``pagelens serve --reranker`` as a real process: a RemoteReranker against it gives the same
order and scores as the same Qwen3-VL reranker in this process (issue 25's acceptance).

The server is the CLI in a subprocess on a free loopback port, serving the tiny random GME
checkpoint (its embedder) and the tiny random Qwen3-VL reranker checkpoint, both on the CPU
in float32; the in-process reranker loads the same folder through ``load_reranker``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from indexer.model.rerank import RerankPage, RerankQuery, load_reranker
from indexer.model.rerank.remote import RemoteReranker

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _image(width: int, height: int, seed: int) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


PAGES = [  # different lengths, so the server's batches are padded
    RerankPage(_image(120, 90, 1), "Revenue grew 12% in the third quarter."),
    RerankPage(_image(64, 200, 2), ""),
    RerankPage(None, "A page known only by its text layer, which runs a little longer."),
    RerankPage(_image(200, 150, 3), "Figure 3: the pipeline."),
    RerankPage(_image(96, 96, 4), "March invoice, total due"),
]
QUERIES = {
    "text": RerankQuery(text="What was the revenue growth?"),
    "image": RerankQuery(image=_image(150, 100, 5)),
    "text+image": RerankQuery(text="Which page shows this chart?", image=_image(80, 60, 6)),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(proc: subprocess.Popen, url: str, log: Path, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"pagelens serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    pytest.fail(f"pagelens serve did not start in {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(model: Path, reranker: Path, home: Path) -> Iterator[str]:
    """``pagelens --model M --device cpu --dtype float32 serve --reranker R`` on loopback."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAGELENS_")}
    env.update(PYTHONPATH=str(ROOT), PAGELENS_HOME=str(home), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-c", "from app.cli import main; main()", "--model", str(model)]
    argv += ["--device", "cpu", "--dtype", "float32", "serve", "--port", str(port)]
    argv += ["--reranker", str(reranker)]
    log = home / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(proc, url, log)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="module")
def tiny_reranker_dir(tmp_path_factory):
    from indexer.model.rerank.random import build_random_reranker

    return build_random_reranker(tmp_path_factory.mktemp("tiny-reranker") / "model")


@pytest.fixture(scope="module")
def served(tiny_model_dir, tiny_reranker_dir, tmp_path_factory) -> Iterator[str]:
    with serve(tiny_model_dir, tiny_reranker_dir, tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def in_process(tiny_reranker_dir):
    return load_reranker(tiny_reranker_dir, device="cpu", dtype="float32")


@pytest.mark.parametrize("kind", list(QUERIES))
def test_serve_reranker_gives_the_in_process_order_and_scores(kind, served, in_process):
    query = QUERIES[kind]
    remote = RemoteReranker(served, batch_size=3).connect()  # two requests: 3 + 2 pages
    try:
        got = remote.score(query, PAGES)
        assert remote.model_id and str(in_process.model_id).endswith(remote.model_id)
    finally:
        remote.close()
    want = in_process.score(query, PAGES)
    assert got.dtype == np.float32 and got.shape == (len(PAGES),)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-want, kind="stable"))
    assert len(set(np.round(want, 4))) == len(PAGES)  # distinct: the order is a real check
