"""Batch size from free memory: the estimate, the choice with injected memory figures, the
indexer's use of it (-v says what it chose), and the halving fallback on allocation failure."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from indexer.model import FakeEmbedder
from indexer.model.runtime import memory

GIB = 2**30


class _Shaped(FakeEmbedder):
    """A fake embedder that carries GME-2B's real config (for the estimate) and a batch."""

    def __init__(self, dtype="float32", tokens=1280):
        super().__init__(dim=16)
        from indexer.model.gme.random import make_config

        self.model = torch.nn.Module()
        self.model.config = make_config("full")
        self.dtype = dtype
        self.max_image_tokens = tokens
        self.batch_size = 8
        self.image_calls: list[int] = []

    def embed_images(self, images, *, instruction=None):
        self.image_calls.append(len(images))
        return super().embed_images(images, instruction=instruction)


def test_page_estimate_scales_with_budget_and_dtype():
    from indexer.model.gme.random import make_config

    cfg = make_config("full")
    full = memory.page_bytes(cfg, 1280, 4)
    assert 200 * 2**20 < full < 2 * GIB  # hundreds of MiB per 1280-token fp32 page
    assert memory.page_bytes(cfg, 256, 4) < full / 3
    assert memory.page_bytes(cfg, 1280, 2) < full


@pytest.mark.parametrize(
    ("available", "expect"),
    [(64 * GIB, memory.MAX_AUTO_BATCH), (4 * GIB, None), (100 * 2**20, 1)],
)
def test_auto_batch_size_from_injected_memory(available, expect):
    emb = _Shaped()
    choice = memory.auto_batch_size(emb, available=available)
    per_page = memory.page_bytes(emb.model.config, 1280, 4)
    if expect is None:  # in between: exactly what fits the usable share
        expect = int(available * memory.USABLE_FRACTION) // per_page
        assert 1 < expect < memory.MAX_AUTO_BATCH
    assert choice.size == expect
    assert choice.size * per_page <= max(per_page, available * memory.USABLE_FRACTION)
    assert "batch size" in choice.describe()
    # bf16 pages are smaller: at least as many fit
    assert memory.auto_batch_size(_Shaped("bfloat16"), available=available).size >= choice.size


def test_available_bytes_reads_the_machine(monkeypatch):
    assert memory.available_bytes("cpu") > 0
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 8 * GIB)
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: 3 * GIB)
    assert memory.available_bytes("cpu") == 3 * GIB  # a container limit wins
    monkeypatch.setattr(memory, "_cgroup_headroom", lambda: None)
    assert memory.available_bytes("cpu") == 8 * GIB
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda dev=None: (5 * GIB, 80 * GIB))
    assert memory.available_bytes("cuda") == 5 * GIB


def test_meminfo_and_cgroup_parsing(tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:  1000 kB\nMemFree:  10 kB\nMemAvailable:  2048 kB\n")
    assert memory._meminfo_available(str(info)) == 2048 * 1024
    assert memory._meminfo_available(str(tmp_path / "missing")) is None
    (tmp_path / "memory.max").write_text("max\n")
    assert memory._cgroup_headroom(str(tmp_path)) is None
    (tmp_path / "memory.max").write_text("1000\n")
    (tmp_path / "memory.current").write_text("400\n")
    assert memory._cgroup_headroom(str(tmp_path)) == 600


def _collection(tmp_path, make_pdf, pages):
    from indexer.pipeline import Indexer
    from indexer.store import Collection

    pdf = make_pdf("doc.pdf", [f"page {i} text" for i in range(pages)])
    store = Collection(tmp_path / "col")
    return store, pdf, Indexer


def test_indexer_picks_batch_from_memory_and_says_so(tmp_path, make_pdf, monkeypatch, caplog):
    store, pdf, Indexer = _collection(tmp_path, make_pdf, 7)
    emb = _Shaped()
    per_page = memory.page_bytes(emb.model.config, 1280, 4)
    # memory for exactly 3 pages in the usable share
    monkeypatch.setattr(memory, "available_bytes", lambda device="cpu": int(3.5 * per_page / 0.6))
    with store, caplog.at_level(logging.INFO, logger="indexer.pipeline"):
        indexer = Indexer(store, emb)
        report = indexer.add([pdf])
    assert report.pages_embedded == 7
    assert indexer.batch_choice.size == 3 and emb.batch_size == 3
    assert max(emb.image_calls) == 3
    assert "batch size 3" in caplog.text
    # a fixed --batch-size is honoured as before
    store2, pdf2, _ = _collection(tmp_path / "b", make_pdf, 5)
    emb2 = _Shaped()
    with store2:
        fixed = Indexer(store2, emb2, batch_size=2)
        fixed.add([pdf2])
    assert fixed.batch_choice is None and max(emb2.image_calls) == 2


def test_allocation_failure_halves_the_batch(tmp_path, make_pdf, caplog):
    store, pdf, Indexer = _collection(tmp_path, make_pdf, 6)

    class Tight(_Shaped):
        def embed_images(self, images, *, instruction=None):
            if len(images) > 2:
                self.image_calls.append(-len(images))
                raise RuntimeError(
                    "[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: "
                    "can't allocate memory: you tried to allocate 9999 bytes"
                )
            return super().embed_images(images, instruction=instruction)

    emb = Tight()
    with store, caplog.at_level(logging.WARNING, logger="indexer.pipeline"):
        report = Indexer(store, emb, batch_size=6).add([pdf])
        assert store.pending_pages() == []
    assert report.pages_embedded == 6
    assert -6 in emb.image_calls and max(emb.image_calls) <= 2
    assert "out of memory" in caplog.text
    # other errors are not swallowed
    assert not memory.is_out_of_memory(RuntimeError("shape mismatch"))
    assert memory.is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory"))


def test_fake_embedder_without_shape_gets_a_capped_batch():
    choice = memory.auto_batch_size(FakeEmbedder(), available=GIB)
    assert choice.size == memory.MAX_AUTO_BATCH and choice.page_bytes == 0
    assert np.isfinite(choice.available_bytes)


def test_cli_says_the_batch_it_chose_at_verbose(tiny_model_dir, make_pdf, tmp_path):
    """``pagelens -v index`` names the batch size it picked and the figures behind it."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    pdf = make_pdf("doc.pdf", ["page one", "page two"])
    env = {
        **os.environ,
        "PAGELENS_MODEL": str(tiny_model_dir),
        "PAGELENS_IMAGE_TOKENS": "16",
        "PAGELENS_COLLECTION": str(tmp_path / "col"),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "app.cli", "-v", "index", str(pdf)],
        capture_output=True,
        text=True,
        cwd=root,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    said = [line for line in proc.stderr.splitlines() if "indexing with batch size" in line]
    assert said, proc.stderr[-2000:]
    assert re.search(r"batch size \d+: ~\d+ MiB per page, \d+ MiB available", said[0]), said
