"""The benchmark in a tiny configuration (report keys and shape, no timing assertions), the
query prompt-prefix KV cache (same vectors as the plain path) and the opt-in int8 path."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexer.embedder import QUERY_INSTRUCTION

QUERIES = [
    "what is camlidl",
    "  leading spaces",
    "\nnewline first",
    "a much longer query about interface definitions and COM components in OCaml " * 3,
    "x",
]


@pytest.mark.parametrize("instruction", [None, QUERY_INSTRUCTION])
def test_prefix_cache_gives_the_plain_vectors(tiny_embedder, instruction):
    tiny_embedder.prefix_cache = False
    plain = tiny_embedder.embed_texts(QUERIES, instruction=instruction)
    tiny_embedder.prefix_cache = True
    try:
        batched = tiny_embedder.embed_texts(QUERIES, instruction=instruction)
        single = np.stack(
            [tiny_embedder.embed_texts([q], instruction=instruction)[0] for q in QUERIES]
        )
    finally:
        tiny_embedder.prefix_cache = True
    assert np.sum(plain * batched, axis=1).min() >= 0.9999
    assert np.sum(plain * single, axis=1).min() >= 0.9999
    key = instruction or "You are a helpful assistant."
    assert key in tiny_embedder.cached_prefixes


def test_int8_quantize_agrees_roughly(tiny_model_dir, make_pdf):
    from indexer import load_embedder

    exact = load_embedder(tiny_model_dir, device="cpu", dtype="float32")
    fast = load_embedder(tiny_model_dir, device="cpu", quantize="int8")
    assert fast.dtype == "int8"
    a = exact.embed_texts(QUERIES[:3])
    b = fast.embed_texts(QUERIES[:3])
    assert b.shape == a.shape
    assert np.allclose(np.linalg.norm(b, axis=1), 1, atol=1e-4)
    assert np.sum(a * b, axis=1).min() > 0.5
    with pytest.raises(ValueError):
        load_embedder(tiny_model_dir, device="cpu", quantize="int4")


def test_bench_tiny_report(tmp_path):
    from bench.bench import main

    out = tmp_path / "report.json"
    code = main(
        [
            "--size",
            "tiny",
            "--pages",
            "2",
            "--baseline-pages",
            "1",
            "--budgets",
            "128,64",
            "--vectors",
            "3000",
            "--queries",
            "3",
            "--corpus",
            "4",
            "--query-collection",
            "200",
            "--peak-n",
            "256",
            "--rss-pages",
            "6",
            "--ray-actors",
            "",  # the Ray phase has its own test (tests/test_ray.py)
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    for key in (
        "machine",
        "matmul_peak",
        "rendering",
        "model",
        "vectors",
        "index_rss",
        "targets",
        "config",
    ):
        assert key in report, key
    assert {"cpu_model", "cpu_flags", "torch", "transformers", "faiss", "torch_threads"} <= set(
        report["machine"]
    )
    assert set(report["matmul_peak"]) >= {"float32"}
    phases = report["model"]["phases"]
    assert set(phases) == {"baseline_float32", "int8", "exact"}
    for phase in phases.values():
        assert set(phase["budgets"]) == {"128", "64"}
        for stats in phase["budgets"].values():
            for key in (
                "pages_per_s",
                "gflop_per_page",
                "achieved_gflops",
                "rss_peak_mib",
                "vision_s",
                "decoder_s",
            ):
                assert key in stats
        assert phase["query"]["p50_s"] > 0
    assert set(phases["exact"]["speedup_vs_baseline"]) == {"128", "64"}
    assert phases["exact"]["prefix_cache_agreement"]["cosine_min"] >= 0.9999
    assert "top10_overlap_vs_float32" in phases["int8"]
    row = report["vectors"]["sizes"]["3000"]
    assert set(row) == {"flat", "hnsw", "ivf", "store"}
    assert row["flat"]["recall_at_10"] == 1.0
    # the store's index re-ranks candidates exactly: at least as good as plain IVF-SQ8
    assert row["store"]["recall_at_10"] >= row["ivf"]["recall_at_10"]
    for entry in row.values():
        assert 0 <= entry["recall_at_10"] <= 1 and entry["p50_ms"] > 0
    assert report["index_rss"]["pages"] == 6


def test_flops_count_full_model_is_plausible():
    from bench.bench import flops_per_input
    from indexer.random_model import make_config

    # A 1024-visual-token page: 64x64 patches, ~1050-token sequence.
    f = flops_per_input(make_config("full"), grid_hw=(64, 64), seq_len=1050)
    assert 5e12 < f["vision"] < 1.2e13
    assert 2.5e12 < f["decoder"] < 4.5e12


def test_remote_overhead_section(tiny_model_dir):
    """Phase F runs a real server (model-free, then pagelens serve) and reports per-page
    overhead; vectors through the server equal in-process ones."""
    from bench.bench import BenchConfig, run_remote_section

    report: dict = {}
    cfg = BenchConfig(model=str(tiny_model_dir), remote_pages=2, remote_tokens=16)
    run_remote_section(cfg, report)
    r = report["remote"]
    assert r["pages"] == 2 and r["render_tokens"] == 16
    assert r["transport"]["cosine_min"] >= 0.9999
    assert r["tiny_gme"]["cosine_min"] >= 0.9999
    assert r["overhead_ms_per_page"] == r["transport"]["overhead_ms_per_page"]
    assert r["png_kib_per_page"] > 0 and r["transport"]["remote_ms_per_page"] > 0
    json.dumps(report)  # the report is JSON as written
